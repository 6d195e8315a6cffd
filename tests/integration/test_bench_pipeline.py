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
from benchmarks.scale import copy_baseline
run = run_pipeline(Path(sys.argv[1]), run_id="bench-test")
copy = copy_baseline(run, Path(sys.argv[2]))
with db.connect() as conn:
    counts = {
        "copy": copy,
        "vault_entries": conn.execute("SELECT count(*) FROM vault.identity").fetchone()[0],
        "leftover": conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'bench_copy'").fetchone()[0],
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
            [sys.executable, "-c", RUN, str(landing), str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
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
    # `bench --scale`'s baselines on the same warehouse: the bare COPY of the rows every personal load published,
    # and the database's own work replayed beside it, every vault entry of theirs included; nothing left behind
    copy = said["copy"]
    assert all(copy[f]["rows"] == copy[f]["staging_rows_loaded"] > 0 for f in ("gp_register", "apc", "cld"))
    assert copy["all"]["vault_entries"] == said["vault_entries"] > 0
    for figures in copy.values():
        parts = ("copy_s", "raw_insert_s", "vault_copy_s", "vault_insert_s")
        if "raw_insert_s" in figures:
            assert all(figures[p] > 0 for p in parts)
            assert figures["database_s"] == sum(figures[p] for p in parts)
        assert figures["database_ratio"] == figures["database_s"] / figures["copy_s"] > 1
    assert said["leftover"] == 0
