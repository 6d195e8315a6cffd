"""The data sharing register, enforced: at the load (no agreement in force, no load) and at the build (a mart may
serve only the purposes its sources' agreements allow).

A small generated world is loaded and its marts built with the repository's register (which must pass); then
files from sources the register does not cover, or no longer covers, are offered to the real loader, and the
real `dbt build` runs on a copy of the project whose register takes a purpose away.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import yaml

from pophealth.contract import agreements

from .conftest import REPO, TEST_KEY, isolated_env, marts_built_from, synth_world

pytestmark = pytest.mark.integration

STAGE = textwrap.dedent(
    """
    import sys
    from pophealth.ingest.load import LoadRefused, stage_extract
    try:
        outcome = stage_extract(sys.argv[1])
    except LoadRefused as exc:
        print("REFUSED", exc)
    else:
        print("STAGED", outcome.status, outcome.load_id)
    """
)

DBT_BUILD = textwrap.dedent(
    """
    import os, subprocess, sys
    from pophealth.warehouse import db
    from pophealth.marts.build import dbt_executable
    project, target = sys.argv[1], sys.argv[2]
    proc = subprocess.run([dbt_executable(), "build", "--project-dir", project, "--profiles-dir", project,
                           "--target-path", target, "--log-path", target],
                          env={**os.environ, **db.dbt_env()}, capture_output=True, text=True)
    print(proc.stdout[-6000:])
    sys.exit(proc.returncode)
    """
)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    home = tmp_path_factory.mktemp("agreements")
    landing = synth_world(home, population=300, seed=5)
    with marts_built_from(landing, home, TEST_KEY, timeout=900) as url:
        yield home, landing, url


def register_without(tmp: Path, change) -> Path:
    """A copy of the repository's register with `change(agreements)` applied to its list of agreements."""
    data = yaml.safe_load(agreements.REGISTER_FILE.read_text())
    change(data["agreements"])
    data["register_version"] += 1
    path = tmp / "register.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def offer(home: Path, landing: Path, template: str, name: str, register: Path) -> str:
    """Offer the loader a new file (a copy of one of the world's, under a new name) under `register`."""
    source = next(p for p in sorted(landing.iterdir()) if p.name.startswith(template))
    shutil.copy(source, landing / name)
    env = {**isolated_env(home), agreements.ENV_REGISTER: str(register)}
    proc = subprocess.run(
        [sys.executable, "-c", STAGE, str(landing / name)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def audit_of(url: str, name: str) -> tuple:
    with psycopg.connect(url) as conn:
        load_id, status, message, rows_loaded = conn.execute(
            "SELECT load_id, status, message, rows_loaded FROM audit.load WHERE file_name = %s", (name,)
        ).fetchone()
        stored = conn.execute("SELECT count(*) FROM raw.apc_episode WHERE load_id = %s", (load_id,)).fetchone()[0]
        stored += conn.execute("SELECT count(*) FROM raw.cld_event WHERE load_id = %s", (load_id,)).fetchone()[0]
        stored += conn.execute("SELECT count(*) FROM vault.identity WHERE load_id = %s", (load_id,)).fetchone()[0]
    return status, message, rows_loaded, stored


def test_the_repository_register_covers_every_source_of_the_world_and_its_build_passes(warehouse):
    home, landing, url = warehouse
    with psycopg.connect(url) as conn:
        refused = conn.execute("SELECT file_name, message FROM audit.load WHERE status = 'rejected'").fetchall()
        register = conn.execute("SELECT count(*) FROM reference.data_sharing_register").fetchone()[0]
    assert refused == []
    assert register == len(agreements.load_register(agreements.REGISTER_FILE).agreements)


def test_a_file_from_a_trust_with_no_agreement_is_refused_before_anything_is_stored(warehouse, tmp_path):
    home, landing, url = warehouse
    register = register_without(
        tmp_path, lambda entries: entries.remove(next(e for e in entries if e.get("provider") == "RDE"))
    )
    said = offer(home, landing, "apc_RDE_", "apc_RDE_20251031.csv", register)
    assert said.startswith(
        "REFUSED apc_RDE_20251031.csv: no data sharing agreement for apc from RDE in the data sharing register"
    ), said
    status, message, rows_loaded, stored = audit_of(url, "apc_RDE_20251031.csv")
    assert (status, rows_loaded, stored) == ("rejected", 0, 0)
    assert "no data sharing agreement for apc from RDE" in message


def test_a_file_from_a_council_the_register_does_not_know_is_refused(warehouse, tmp_path):
    home, landing, url = warehouse
    said = offer(home, landing, "cld_E10000012_", "cld_E10000099_20251231.csv", agreements.REGISTER_FILE)
    assert "no data sharing agreement for cld from E10000099" in said, said
    assert audit_of(url, "cld_E10000099_20251231.csv")[0] == "rejected"


def test_a_file_from_a_trust_whose_agreement_has_expired_is_refused(warehouse, tmp_path):
    home, landing, url = warehouse

    def expire_raj(entries):
        raj = next(e for e in entries if e.get("provider") == "RAJ")
        raj["end_date"] = "2025-03-31"

    said = offer(home, landing, "apc_RAJ_", "apc_RAJ_20251031.csv", register_without(tmp_path, expire_raj))
    assert "no data sharing agreement for apc from RAJ is in force on the load date" in said, said
    assert "DSA-ESX-2024-001 v1 2024-04-01 to 2025-03-31" in said
    status, message, rows_loaded, stored = audit_of(url, "apc_RAJ_20251031.csv")
    assert (status, stored) == ("rejected", 0)


def test_a_mart_serving_a_purpose_a_source_agreement_does_not_allow_fails_the_build(warehouse, tmp_path):
    home, landing, url = warehouse

    def no_bcf_reporting_for_rqw(entries):
        rqw = next(e for e in entries if e.get("provider") == "RQW")
        rqw["purposes"] = ["population_health_management", "commissioning_and_planning"]

    project = tmp_path / "dbt_project"
    shutil.copytree(REPO / "dbt_project", project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    register = agreements.load_register(register_without(tmp_path, no_bcf_reporting_for_rqw))
    (project / "seeds" / "data_sharing_register.csv").write_text(agreements.seed_text(register))
    proc = subprocess.run(
        [sys.executable, "-c", DBT_BUILD, str(project), str(tmp_path / "target")],
        env=isolated_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "PURPOSE NOT ALLOWED BY THE DATA SHARING REGISTER" in proc.stdout, proc.stdout[-3000:]
    assert (
        "bcf_metrics serves bcf_reporting but uses apc from RQW, whose agreement DSA-ESX-2024-003 v1 allows "
        "only population_health_management, commissioning_and_planning"
    ) in proc.stdout
    # only what RQW's data feeds and that serves bcf_reporting is named; the person spine serves no such purpose
    assert "person serves bcf_reporting" not in proc.stdout
