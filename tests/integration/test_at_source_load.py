"""Pseudonymisation at source changes nothing in the warehouse.

A generated world is loaded twice into two real embedded warehouses: once as the sources write it
(identifiable), and once with its register, hospital and social care files pseudonymised at source by
`pophealth pseudonymise` (the reference data and the opt-out list copied as they are). The people in
`marts.person`, every raw table and the load audit's counts are the same, row for row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pophealth.landing import identify

from .conftest import REPO, TEST_KEY, marts_built_from

pytestmark = pytest.mark.integration

POPULATION = 300
SEED = 7
TIMEOUT = 1200
NOT_COMPARED = ("load_id", "loaded_at", "source_row")  # when and in which load, not what
TABLES = ("marts.person", "raw.gp_register", "raw.apc_episode", "raw.cld_event", "restricted.optout")


def _pophealth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pophealth.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"pophealth {args[0]}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def landings(tmp_path_factory) -> tuple[Path, Path, Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("at_source")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POPHEALTH_", "AIRFLOW"))}
    env.update(POPHEALTH_HOME=str(home / "cli"), POPHEALTH_LINKAGE_KEY=TEST_KEY, PYTHONPATH=str(REPO))
    identifiable, pseudonymised = home / "identifiable", home / "pseudonymised"
    _pophealth(env, "synth", "--population", str(POPULATION), "--seed", str(SEED), "--out", str(identifiable))
    pseudonymised.mkdir()
    summaries = {}
    for path in sorted(identifiable.glob("*.csv")):
        if identify(path).feed in ("gp_register", "apc", "cld"):
            summaries[path.name] = _pophealth(env, "pseudonymise", str(path), str(pseudonymised),
                                              "--lookup", str(identifiable / "ref_postcode_lookup.csv")).stdout
        else:
            shutil.copy2(path, pseudonymised)
    return home, identifiable, pseudonymised, summaries


def _contents(url: str) -> dict[str, list[tuple]]:
    contents = {}
    with psycopg.connect(url) as conn:
        for table in TABLES:
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [d.name for d in cursor.description]
            kept = [i for i, name in enumerate(names) if name not in NOT_COMPARED]
            contents[table] = [tuple(names[i] for i in kept)] + sorted(
                (tuple(row[i] for i in kept) for row in cursor), key=repr)
        contents["audit.load"] = conn.execute(
            """SELECT file_name, feed, provider, period_end, status, key_version, rows_read, rows_loaded,
                      rows_quarantined, rows_opted_out, rows_test_range, rows_unlinked, extra_columns
               FROM audit.load ORDER BY file_name, load_id""").fetchall()
        contents["audit.quarantine"] = conn.execute(
            """SELECT l.file_name, q.source_row, q.column_name, q.reason FROM audit.quarantine q
               JOIN audit.load l USING (load_id) ORDER BY 1, 2""").fetchall()
    return contents


def test_the_pseudonymised_files_hold_no_nhs_number_date_of_birth_or_postcode(landings):
    _home, identifiable, pseudonymised, summaries = landings
    assert len(summaries) == len(list(identifiable.glob("gp_register_*.csv"))) + len(
        list(identifiable.glob("apc_*.csv"))) + len(list(identifiable.glob("cld_*.csv")))
    for name in summaries:
        header = (pseudonymised / name).read_text().split("\n", 1)[0].lower().split(",")
        assert "person_id" in header and not {"nhs_number", "date_of_birth", "postcode"} & set(header)
    assert all("linkage key version" in text and TEST_KEY not in text for text in summaries.values())


def test_both_roads_load_the_same_warehouse(landings):
    home, identifiable, pseudonymised, _summaries = landings
    with marts_built_from(identifiable, home / "warehouse_identifiable", TEST_KEY, TIMEOUT) as url:
        expected = _contents(url)
    with marts_built_from(pseudonymised, home / "warehouse_pseudonymised", TEST_KEY, TIMEOUT) as url:
        actual = _contents(url)
    assert len(expected["marts.person"]) > POPULATION  # the world's registered people and more
    assert len(expected["raw.apc_episode"]) > 1 and len(expected["raw.cld_event"]) > 1
    assert expected["audit.quarantine"], "the world plants rows to quarantine: the comparison should include them"
    for table in expected:
        assert actual[table] == expected[table], table
