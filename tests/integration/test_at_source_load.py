"""Pseudonymisation at source changes nothing in the warehouse.

A generated world is loaded twice into two real embedded warehouses: once as the sources write it
(identifiable), and once with its register, hospital and social care files pseudonymised at source by
`pophealth pseudonymise` (the reference data and the opt-out list copied as they are). The people in
`marts.person`, every raw table and the load audit's counts are the same, row for row.

A file pseudonymised at source says which linkage key made it (`linkage_key_version`): one made under
another key, or that does not say, is refused whole by the loader of a real warehouse, naming the versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pophealth.identity.keys import LinkageKey
from pophealth.ingest.landing import identify

from .conftest import REPO, TEST_KEY, WITHOUT_DATA_TESTS, isolated_env, marts_built_from

pytestmark = pytest.mark.integration

POPULATION = 300
SEED = 7
TIMEOUT = 1200
NOT_COMPARED = ("load_id", "loaded_at", "source_row")  # when and in which load, not what
TABLES = ("marts.person", "raw.gp_register", "raw.apc_episode", "raw.cld_event", "restricted.optout")


def _pophealth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pophealth.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
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
            summaries[path.name] = _pophealth(
                env,
                "pseudonymise",
                str(path),
                str(pseudonymised),
                "--lookup",
                str(identifiable / "ref_postcode_lookup.csv"),
            ).stdout
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
                (tuple(row[i] for i in kept) for row in cursor), key=repr
            )
        contents["audit.load"] = conn.execute(
            """SELECT file_name, feed, provider, period_end, status, key_version, rows_read, rows_loaded,
                      rows_quarantined, rows_opted_out, rows_test_range, rows_unlinked, extra_columns
               FROM audit.load ORDER BY file_name, load_id"""
        ).fetchall()
        contents["audit.quarantine"] = conn.execute(
            """SELECT l.file_name, q.source_row, q.column_name, q.reason FROM audit.quarantine q
               JOIN audit.load l USING (load_id) ORDER BY 1, 2"""
        ).fetchall()
    return contents


def test_the_pseudonymised_files_hold_no_nhs_number_date_of_birth_or_postcode(landings):
    _home, identifiable, pseudonymised, summaries = landings
    assert len(summaries) == len(list(identifiable.glob("gp_register_*.csv"))) + len(
        list(identifiable.glob("apc_*.csv"))
    ) + len(list(identifiable.glob("cld_*.csv")))
    for name in summaries:
        header = (pseudonymised / name).read_text().split("\n", 1)[0].lower().split(",")
        assert "person_id" in header and not {"nhs_number", "date_of_birth", "postcode"} & set(header)
    assert all("linkage key version" in text and TEST_KEY not in text for text in summaries.values())


def test_both_roads_load_the_same_warehouse(landings):
    home, identifiable, pseudonymised, _summaries = landings
    with marts_built_from(identifiable, home / "warehouse_identifiable", TEST_KEY, TIMEOUT, WITHOUT_DATA_TESTS) as url:
        expected = _contents(url)
    with marts_built_from(
        pseudonymised, home / "warehouse_pseudonymised", TEST_KEY, TIMEOUT, WITHOUT_DATA_TESTS
    ) as url:
        actual = _contents(url)
    assert len(expected["marts.person"]) > POPULATION  # the world's registered people and more
    assert len(expected["raw.apc_episode"]) > 1 and len(expected["raw.cld_event"]) > 1
    assert expected["audit.quarantine"], "the world plants rows to quarantine: the comparison should include them"
    for table in expected:
        assert actual[table] == expected[table], table


# ----------------------------------------------------------------------------------------------------------
# The key a file was made under


OTHER_KEY = "a1" * 32


@pytest.fixture(scope="module")
def keyed_warehouse(landings):
    """A warehouse whose postcode lookup and opt-out list are published; yields (landing, home, stage, query)."""
    from pophealth.ingest.load import publish_load, stage_extract
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    home, _identifiable, pseudonymised, _summaries = landings
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("POPHEALTH_")]:
            patch.delenv(name)
        for name, value in isolated_env(home / "keyed").items():
            if name.startswith("POPHEALTH_"):
                patch.setenv(name, value)
        patch.setattr(db, "_cached", None)
        try:
            prepare_warehouse()
            for path in (pseudonymised / "ref_postcode_lookup.csv", next(pseudonymised.glob("optouts_*.csv"))):
                publish_load(stage_extract(path).load_id)

            def query(text: str, params: tuple = ()) -> list[tuple]:
                with db.connect() as conn:
                    return conn.execute(text, params).fetchall()

            yield pseudonymised, home, stage_extract, publish_load, query
        finally:
            db.stop_embedded()


def _register_file(landing: Path) -> Path:
    return sorted(landing.glob("gp_register_*.csv"))[-1]


def _folder(tmp_path: Path, name: str, landing: Path) -> Path:
    """A landing folder of its own, with the postcode lookup the loader needs beside a personal file."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy2(landing / "ref_postcode_lookup.csv", folder)
    return folder


def _refused(keyed_warehouse, path: Path) -> str:
    """Stage `path`; it must be refused with nothing stored. Returns the refusal's message."""
    from pophealth.ingest.load import LoadRefused

    _landing, _home, stage, _publish, query = keyed_warehouse
    before = query("SELECT count(*) FROM raw.gp_register")
    with pytest.raises(LoadRefused) as refused:
        stage(path)
    status, message = query(
        "SELECT status, message FROM audit.load WHERE file_name = %s ORDER BY load_id DESC", (path.name,)
    )[0]
    assert status == "rejected" and message in str(refused.value)
    assert query("SELECT count(*) FROM raw.gp_register") == before
    assert query("SELECT count(*) FROM pg_tables WHERE schemaname = 'load_batch'") == [(0,)]
    text = path.read_text()
    person_ids = {line.split(",", 1)[0] for line in text.splitlines()[1:]} - {""}
    assert person_ids and not any(p in message for p in person_ids)
    assert TEST_KEY not in message and OTHER_KEY not in message
    return message


def test_a_file_pseudonymised_at_source_under_another_key_is_refused_whole_naming_both_versions(
    keyed_warehouse, tmp_path
):
    from pophealth.identity.pseudonymise import Pseudonymiser
    from pophealth.ingest.at_source import pseudonymise_extract

    landing, home, *_ = keyed_warehouse
    identifiable = home / "identifiable"
    other = Pseudonymiser(LinkageKey.from_hex(OTHER_KEY, "test"))
    folder = _folder(tmp_path, "other", landing)
    pseudonymise_extract(
        _register_file(identifiable), folder, identifiable / "ref_postcode_lookup.csv", pseudonymiser=other
    )
    message = _refused(keyed_warehouse, folder / _register_file(identifiable).name)
    loading = LinkageKey.from_hex(TEST_KEY, "test").version
    assert f"made under linkage key version {other.key_version}" in message
    assert f"the loading key is version {loading}" in message


def test_a_file_pseudonymised_at_source_that_does_not_say_its_key_is_refused(keyed_warehouse, tmp_path):
    landing, *_ = keyed_warehouse
    lines = _register_file(landing).read_text().splitlines()
    header = lines[0].split(",")
    assert header[-1] == "linkage_key_version"
    without = _folder(tmp_path, "without", landing) / _register_file(landing).name
    without.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert "has no linkage_key_version column" in _refused(keyed_warehouse, without)
    empty = _folder(tmp_path, "empty", landing) / _register_file(landing).name
    empty.write_text("\n".join(lines[:-1] + [lines[-1].rsplit(",", 1)[0] + ","]) + "\n")
    assert "has a row with an empty linkage_key_version" in _refused(keyed_warehouse, empty)


def test_a_file_pseudonymised_at_source_under_the_loading_key_is_loaded(keyed_warehouse):
    landing, _home, stage, publish, query = keyed_warehouse
    path = _register_file(landing)
    staged = stage(path)
    assert staged.status == "validated" and staged.rows_loaded > 0
    publish(staged.load_id)
    loading = LinkageKey.from_hex(TEST_KEY, "test").version
    assert query("SELECT count(*), min(key_version), max(key_version) FROM raw.gp_register") == [
        (staged.rows_loaded, loading, loading)
    ]
