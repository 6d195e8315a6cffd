"""The whole pipeline, through the real DAGs, against the generator's answer key.

The generator knows who everyone is; the platform only sees pseudonymised extracts. If the platform
links, removes and counts exactly what the answer key says, the foundation holds.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil

import pytest

from pophealth.keys import LinkageKey
from pophealth.pseudonymise import Pseudonymiser

from .conftest import TEST_KEY, make_world

pytestmark = pytest.mark.integration

PERSON_COLUMNS = ("person_id", "birth_year", "age_band", "sex", "lsoa_code", "locality_code", "gp_practice_code",
                  "is_registered", "date_of_death", "in_hospital_data", "in_social_care_data", "is_linked",
                  "link_method")


def expected_person_id(identity: str) -> str:
    """The pseudonym the platform must give each identity of the answer key, worked out independently."""
    kind, _, value = identity.partition(":")
    if kind == "nhs":
        return hmac.new(bytes.fromhex(TEST_KEY), value.encode("ascii"), hashlib.sha256).hexdigest()
    pseudonymiser = Pseudonymiser(LinkageKey.from_hex(TEST_KEY, "test"))
    source, _, local_id = value.partition("|")
    if kind == "la":
        return pseudonymiser.local(source, "person|" + local_id).value
    if kind == "spell":
        return pseudonymiser.local(source, "spell|" + local_id).value
    raise AssertionError(f"unknown identity kind {kind}")


def _normal(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_the_first_run_succeeds_and_says_where_the_results_are(world):
    out = world.first_run.stdout
    assert world.first_run.returncode == 0, out[-5000:] + world.first_run.stderr[-3000:]
    assert "marts.person" in out and "linked" in out and "Quality gates" in out


def test_every_dag_ran_through_airflow(world):
    # Airflow's own metadata database records a successful run of every DAG, and the tasks it mapped.
    first_runs = dict(world.query(
        "SELECT dag_id, state FROM dag_run WHERE id IN (SELECT min(id) FROM dag_run GROUP BY dag_id)",
        database="airflow"))
    assert first_runs == dict.fromkeys(
        ("ingest_ref_postcode_lookup", "ingest_ref_population", "ingest_optouts", "ingest_gp_register",
         "ingest_apc", "ingest_cld", "build_marts"), "success")
    staged = world.query(
        "SELECT count(*) FROM task_instance WHERE dag_id = 'ingest_apc' AND task_id = 'ingest_file.stage'",
        database="airflow")[0][0]
    assert staged == len(list(world.landing.glob("apc_*.csv")))


def test_marts_person_equals_the_answer_key(world):
    expected = {}
    for row in world.answers("people.csv"):
        person_id = expected_person_id(row["identity"])
        expected[person_id] = tuple([person_id] + [row[c] for c in PERSON_COLUMNS[1:]])
    actual = {
        row[0]: tuple(_normal(v) for v in row)
        for row in world.query(f"SELECT {', '.join(PERSON_COLUMNS)} FROM marts.person")
    }
    assert len(actual) == len(expected)
    missing = set(expected) - set(actual)
    extra = set(actual) - set(expected)
    assert not missing and not extra, f"{len(missing)} people missing, {len(extra)} unexpected"
    wrong = [(expected[p], actual[p]) for p in expected if expected[p] != actual[p]]
    assert not wrong, f"{len(wrong)} people differ, e.g. expected {wrong[0][0]} got {wrong[0][1]}"


def test_headline_counts_match_the_world(world):
    headline = world.world()
    (people, linked), = world.query("SELECT count(*), count(*) FILTER (WHERE is_linked) FROM marts.person")
    assert people == headline["people"]
    assert linked == headline["linked"]


def test_every_input_row_is_accounted_for_in_the_load_audit(world):
    audit = {
        row[0]: row[1:]
        for row in world.query(
            """SELECT file_name, rows_read, rows_loaded, rows_quarantined, rows_opted_out FROM audit.load
               WHERE status = 'published'"""
        )
    }
    files = world.answers("files.csv")
    assert {f["file_name"] for f in files} <= set(audit)
    for f in files:
        read, loaded, quarantined, opted_out = audit[f["file_name"]]
        assert read == loaded + quarantined + opted_out, f["file_name"]
        assert (read, loaded, quarantined, opted_out) == (
            int(f["rows_read"]), int(f["rows_loaded"]), int(f["rows_quarantined"]), int(f["rows_opted_out"])
        ), f["file_name"]


def test_nothing_identifiable_reached_the_warehouse(world):
    # No column anywhere in the warehouse holds one of the world's NHS numbers, in any spelling.
    numbers = [r["identity"].split(":")[1] for r in world.answers("people.csv") if r["identity"].startswith("nhs:")]
    assert numbers
    sample = numbers[:: max(1, len(numbers) // 50)]
    tables = world.query(
        """SELECT table_schema, table_name FROM information_schema.tables
           WHERE table_schema IN ('raw', 'staging', 'intermediate', 'marts', 'audit', 'restricted')
             AND table_type = 'BASE TABLE'"""
    )
    for schema, table in tables:
        for number in sample:
            hits = world.query(
                f'SELECT count(*) FROM "{schema}"."{table}" t WHERE position(%s in t::text) > 0', (number,)
            )[0][0]
            assert hits == 0, f"{schema}.{table} holds an NHS number in clear"


def test_a_second_run_is_safe_and_changes_nothing(world):
    before = world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p")
    counts_before = world.query("SELECT (SELECT count(*) FROM raw.apc_episode), (SELECT count(*) FROM raw.cld_event)")
    (last_load,), = world.query("SELECT max(load_id) FROM audit.load")
    second = world.pophealth("run", "--landing", str(world.landing))
    assert second.returncode == 0, second.stdout[-4000:]
    # Every file was recognised as already published: nothing new was staged, or only as a duplicate.
    statuses = world.query("SELECT DISTINCT status FROM audit.load WHERE load_id > %s", (last_load,))
    assert statuses in ([], [("duplicate",)])
    assert "no new or changed files" in second.stdout
    assert world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p") == before
    assert world.query("SELECT (SELECT count(*) FROM raw.apc_episode), (SELECT count(*) FROM raw.cld_event)") \
        == counts_before


def test_a_failed_gate_stops_the_marts_and_they_keep_their_last_good_state(world, tmp_path):
    before = world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p")
    builds_before = world.query("SELECT count(*) FROM audit.dbt_result")
    # A resubmission of one hospital file in which one episode starts before its admission.
    landing = tmp_path / "landing"
    shutil.copytree(world.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    apc = sorted(landing.glob("apc_*.csv"))[-1]
    lines = apc.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")
    cells = lines[1].rstrip("\r\n").split(",")
    cells[header.index("epistart")] = "2000-01-01"
    lines[1] = ",".join(cells) + "\n"
    apc.write_text("".join(lines))

    failed = world.pophealth("dag", "ingest_apc", "--landing", str(landing))
    assert failed.returncode != 0
    (status, message), = world.query(
        "SELECT status, message FROM audit.load WHERE file_name = %s ORDER BY load_id DESC LIMIT 1", (apc.name,))
    assert status == "gate_failed"
    assert "QUALITY GATE FAILED" in message and apc.name in message
    # The refused file's rows were never published.
    assert world.query("SELECT count(*) FROM raw.apc_episode WHERE epistart = '2000-01-01'") == [(0,)]

    marts = world.pophealth("dag", "build_marts", "--landing", str(landing))
    assert marts.returncode != 0
    assert "check_loads" in marts.stdout
    assert world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p") == before
    assert world.query("SELECT count(*) FROM audit.dbt_result") == builds_before

    # Delivering the good file again resolves it: the marts build again.
    shutil.copy(world.landing / apc.name, apc)
    assert world.pophealth("dag", "ingest_apc", "--landing", str(landing)).returncode == 0
    assert world.pophealth("dag", "build_marts", "--landing", str(landing)).returncode == 0
