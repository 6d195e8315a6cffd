"""The benchmarks' bare pipeline (benchmarks/pipeline.py) does the product work the DAGs do, so that the
orchestration overhead `bench --scale` reports (DAGs over bare) is Airflow's alone: besides staging, gating,
building and publishing, each published load's OpenLineage event, dbt's results in audit.dbt_result, and the
published marts' column lineage and their models' OpenLineage events."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import isolated_env, synth_world

pytestmark = pytest.mark.integration

RUN = """
import json, sys
from pathlib import Path
from benchmarks.pipeline import run_pipeline
from pophealth import config
from pophealth.warehouse import db
run = run_pipeline(Path(sys.argv[1]), run_id="bench-test")
with db.connect() as conn:
    counts = {
        "published_loads": conn.execute("SELECT count(*) FROM audit.load WHERE status = 'published'").fetchone()[0],
        "dbt_results": conn.execute("SELECT count(*) FROM audit.dbt_result WHERE run_id = 'bench-test'").fetchone()[0],
        "lineage": conn.execute("SELECT count(*) FROM audit.column_lineage").fetchone()[0],
    }
events = config.paths().home / "openlineage" / "events.jsonl"
lines = events.read_text().splitlines() if events.exists() else []
jobs = [json.loads(line)["job"]["name"] for line in lines if line.strip()]
print(json.dumps({**counts, "gate_passed": run.marts_gate_passed, "jobs": jobs}))
"""


def test_the_bare_pipeline_records_the_lineage_and_dbt_results_the_dags_record(tmp_path):
    # The smallest world of its seed in which the marts gate's rules hold (conftest.every_month_world).
    landing = synth_world(tmp_path, 1200, 11)
    env = isolated_env(tmp_path)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RUN, str(landing)], env=env, capture_output=True, text=True, timeout=1800
        )
    finally:
        stop = "from pophealth.warehouse import db; db.stop_embedded()"
        subprocess.run([sys.executable, "-c", stop], env=env, check=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["gate_passed"] is True
    # one OpenLineage event per published load, as the load task emits after publishing
    assert said["published_loads"] > 0
    assert sum(job.startswith("load.") for job in said["jobs"]) == said["published_loads"]
    # every node's result of the build, as Cosmos's callback keeps it
    assert said["dbt_results"] > 100
    # after the publish swap, as publish_marts does: the column lineage and each published model's event
    assert said["lineage"] > 0
    assert "dbt.model.person" in said["jobs"]
