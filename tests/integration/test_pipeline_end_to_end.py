"""The whole pipeline, through the real DAGs, against the generator's answer key.

The generator knows who everyone is; the platform only sees pseudonymised extracts. If the platform
links, removes and counts exactly what the answer key says, the foundation holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil

import pytest

from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import Pseudonymiser

from .conftest import (
    POPULATION,
    PURPOSE_KEYS_ENV,
    TEST_KEY,
    TEST_VAULT_PRIVATE_KEY,
    break_one_hospital_file,
    published_id,
)
from .identifiable import files_at_rest, identifiable_values
from .listeners import RECIPIENT, listening

# The end-to-end run's world (the session's) takes minutes: its group is handed out first (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.long_world]

PERSON_COLUMNS = (
    "person_id",
    "birth_year",
    "age_band",
    "sex",
    "lsoa_code",
    "locality_code",
    "gp_practice_code",
    "is_registered",
    "date_of_death",
    "in_hospital_data",
    "in_social_care_data",
    "is_linked",
    "link_method",
)


def expected_person_id(identity: str) -> str:
    """The published (secondary-use) id the platform must give each identity of the answer key, worked out
    independently: the transit pseudonym, keyed again under the test secondary-use key."""
    return published_id("secondary_use", expected_transit_pseudonym(identity))


def expected_transit_pseudonym(identity: str) -> str:
    """The transit pseudonym of an identity of the answer key (what raw holds)."""
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


def expected_person_row(row: dict[str, str]) -> tuple:
    """A person of the answer key as marts.person must publish them: the secondary-use id, and the date of death
    as its month (its first day)."""
    row = {**row, "date_of_death": row["date_of_death"][:8] + "01" if row["date_of_death"] else ""}
    return tuple([expected_person_id(row["identity"])] + [row[c] for c in PERSON_COLUMNS[1:]])


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
    # What each source covers, from the rows; every period of the window is covered, so none is said missing.
    assert "What the data covers (from the rows of the published files):" in out
    assert "  apc RAJ                  2024-04-01 to 2025-09-30 (18 files)" in out.splitlines()
    assert "Periods NOT computed" not in out and "GAP" not in out


def test_every_dag_ran_through_airflow(world):
    # Airflow's own metadata database records a successful run of every DAG, and the tasks it mapped.
    first_runs = dict(
        world.query(
            "SELECT dag_id, state FROM dag_run WHERE id IN (SELECT min(id) FROM dag_run GROUP BY dag_id)",
            database="airflow",
        )
    )
    assert first_runs == dict.fromkeys(
        (
            "ingest_ref_postcode_lookup",
            "ingest_ref_population",
            "ingest_optouts",
            "ingest_gp_register",
            "ingest_apc",
            "ingest_cld",
            "build_marts",
        ),
        "success",
    )
    # The marts were built by one dbt build, shown as a task per layer of the dbt project (the default grain).
    first_build = world.query(
        """SELECT task_id, state FROM task_instance WHERE dag_id = 'build_marts' AND task_id LIKE 'dbt.%%'
           AND run_id = (SELECT run_id FROM dag_run WHERE dag_id = 'build_marts' ORDER BY id LIMIT 1)""",
        database="airflow",
    )
    assert dict(first_build) == dict.fromkeys(
        ["dbt.build"]
        + [f"dbt.{layer}" for layer in ("seeds", "staging", "intermediate", "marts", "direct_care", "reporting")],
        "success",
    )
    # The hospital files were loaded in groups of at most a dozen, one mapped `load` task each, and every file
    # was published by the run that loaded it.
    files = sorted(world.landing.glob("apc_*.csv"))
    loads = world.query(
        "SELECT count(*) FROM task_instance WHERE dag_id = 'ingest_apc' AND task_id = 'load' AND state = 'success'",
        database="airflow",
    )[0][0]
    assert loads == -(-len(files) // 12)
    apc_run = world.query(
        "SELECT run_id FROM dag_run WHERE dag_id = 'ingest_apc' ORDER BY id LIMIT 1", database="airflow"
    )[0][0]
    published = world.query("SELECT file_name FROM audit.load WHERE run_id = %s AND status = 'published'", (apc_run,))
    assert sorted(name for (name,) in published) == [f.name for f in files]


def test_marts_person_equals_the_answer_key(world):
    expected = {}
    for row in world.answers("people.csv"):
        person_id = expected_person_id(row["identity"])
        expected[person_id] = expected_person_row(row)
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
    ((people, linked),) = world.query("SELECT count(*), count(*) FILTER (WHERE is_linked) FROM marts.person")
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
        # Opted-out people's rows are loaded (for their direct care only) and counted apart among them.
        assert read == loaded + quarantined and opted_out <= loaded, f["file_name"]
        assert (read, loaded, quarantined, opted_out) == (
            int(f["rows_read"]),
            int(f["rows_loaded"]),
            int(f["rows_quarantined"]),
            int(f["rows_opted_out"]),
        ), f["file_name"]


def test_nothing_identifiable_is_in_any_table_log_or_file_the_run_wrote(world):
    # Every table of the warehouse and of Airflow's metadata database, dumped as text; then every file the
    # platform wrote (the database's own files and WAL, Airflow's task logs, the DAG run logs, the gates'
    # Data Docs, the board report): no NHS number, postcode or date of birth from the input, and no key.
    identifiable = identifiable_values(world.landing)
    assert len(identifiable.nhs_numbers) > POPULATION and identifiable.postcodes
    assert len(identifiable.dates_of_birth) > POPULATION / 2
    import psycopg

    for database in ("pophealth", "airflow"):
        url = world.url().replace("/pophealth?", f"/{database}?")
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                """SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'
                   AND table_schema NOT IN ('pg_catalog', 'information_schema')"""
            ).fetchall()
            assert len(tables) > 20
            for schema, table in tables:
                dump = bytearray()
                with conn.cursor().copy(f'COPY "{schema}"."{table}" TO STDOUT') as copy:
                    for block in copy:
                        dump += block
                found = identifiable.found_in(bytes(dump))
                assert not found, f"{database}: {schema}.{table} holds {', '.join(found)} in clear"
    keys = (TEST_KEY.encode(), TEST_VAULT_PRIVATE_KEY.encode(), *(k.encode() for k in PURPOSE_KEYS_ENV.values()))
    files = files_at_rest(world.home / "state")
    # The DAG runs' logs hold every task's log lines (dag.test runs the tasks and prints their logs).
    task_logs = [data for p, data in files if "runs" in p.parts and p.suffix == ".log"]
    assert any(b"staged" in data for data in task_logs), "no task log of a load was found to scan"
    for path, data in files:
        found = identifiable.found_in(data) + ["a key" for key in keys if key in data]
        assert not found, f"{path.relative_to(world.home)} holds {', '.join(found)} in clear"


def test_a_good_run_passes_every_gate_and_keeps_every_result(world):
    from pophealth.quality import gates
    from pophealth.quality.rules import marts_rules

    # Every published load was gated by every rule of its feed, and no error rule failed.
    rows = world.query(
        """SELECT l.feed, l.load_id, r.check_id, r.severity, r.status FROM audit.load l
           JOIN audit.gate_result r USING (load_id) WHERE l.status = 'published'"""
    )
    published = world.query("SELECT feed, load_id FROM audit.load WHERE status = 'published'")
    for feed, load_id in published:
        checked = {r[2] for r in rows if r[1] == load_id}
        assert checked == {rule.id for rule in gates.checks_for(feed)}, f"load {load_id} ({feed})"
    assert not [r for r in rows if r[3] == "error" and r[4] == "failed"]
    # The marts gate ran on the candidates before they were published, every rule recorded, no error failed.
    marts = world.query("SELECT check_id, severity, status FROM audit.gate_result WHERE feed = 'marts'")
    assert {r[0] for r in marts} >= {rule.id for rule in marts_rules().rules}
    assert not [r for r in marts if r[1] == "error" and r[2] == "failed"]
    assert world.query("""SELECT count(*) FROM information_schema.schemata
                          WHERE schema_name LIKE '%%__candidate' OR schema_name LIKE '%%__previous'""") == [(0,)]
    # And every validation is a page of Great Expectations' Data Docs.
    index = world.home / "state" / "data_docs" / "index.html"
    assert index.is_file() and len(list(index.parent.glob("validations/**/*.html"))) >= len(published)
    # The index is built once after the marts gate's last validation (not after each): it links every one of them.
    linked = index.read_text()
    pages = [p.relative_to(index.parent) for p in index.parent.glob("validations/marts_publish*/**/*.html")]
    assert pages and all(str(p).replace(":", "%3A") in linked for p in pages)


def test_a_second_run_is_safe_and_changes_nothing(world):
    before = world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p")
    counts_before = world.query("SELECT (SELECT count(*) FROM raw.apc_episode), (SELECT count(*) FROM raw.cld_event)")
    ((last_load,),) = world.query("SELECT max(load_id) FROM audit.load")
    second = world.pophealth("run", "--landing", str(world.landing))
    assert second.returncode == 0, second.stdout[-4000:]
    # Every file was recognised as already published: nothing new was staged, or only as a duplicate.
    statuses = world.query("SELECT DISTINCT status FROM audit.load WHERE load_id > %s", (last_load,))
    assert statuses in ([], [("duplicate",)])
    assert "no new or changed files" in second.stdout
    assert world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p") == before
    assert (
        world.query("SELECT (SELECT count(*) FROM raw.apc_episode), (SELECT count(*) FROM raw.cld_event)")
        == counts_before
    )


def test_a_failed_gate_reaches_people_stops_the_marts_and_they_keep_their_last_good_state(world, tmp_path):
    before = world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p")
    builds_before = world.query("SELECT count(*) FROM audit.dbt_result")
    landing = tmp_path / "landing"
    shutil.copytree(world.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    apc = break_one_hospital_file(landing)

    # The failed run is sent to a real webhook and SMTP server on 127.0.0.1 (the notifications' own test: one
    # failed DAG run shows both what the gate stops and who is told).
    with listening() as inbox:
        failed = world.pophealth("dag", "ingest_apc", "--landing", str(landing), env=inbox.env(), timeout=600)
        assert failed.returncode != 0
        inbox.wait(30)
    # One failed task, the load of the broken file (its map index is its group's place among the new files).
    assert len(inbox.posts) == 1
    post = inbox.posts[0]
    assert post["dag"] == "ingest_apc" and re.fullmatch(r"load\[\d+\]", post["task"])
    assert re.fullmatch(rf"QUALITY GATE FAILED for {re.escape(apc.name)} \(load \d+\)", post["what"])
    assert post["run"].startswith("manual__") and "Airflow UI" in post["where"]
    assert len(inbox.emails) == 1
    assert f"Subject: pophealth: ingest_apc.{post['task']} failed" in inbox.emails[0]
    assert f"To: {RECIPIENT}" in inbox.emails[0] and "QUALITY GATE FAILED" in inbox.emails[0]
    assert not re.search(r"(?<!\d)\d{10}(?!\d)", json.dumps(inbox.posts) + inbox.emails[0])

    ((status, message),) = world.query(
        "SELECT status, message FROM audit.load WHERE file_name = %s ORDER BY load_id DESC LIMIT 1", (apc.name,)
    )
    assert status == "gate_failed"
    assert "QUALITY GATE FAILED" in message and apc.name in message
    # The refused file's rows were never published.
    assert world.query("SELECT count(*) FROM raw.apc_episode WHERE epistart = '2000-01-01'") == [(0,)]

    marts = world.pophealth("dag", "build_marts", "--landing", str(landing))
    assert marts.returncode != 0
    assert "check_loads" in marts.stdout
    assert world.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p") == before
    assert world.query("SELECT count(*) FROM audit.dbt_result") == builds_before

    # Delivering the good file again resolves it: the marts build again. This build shows each seed and model as a
    # task of its own, with its tests' task after it (POPHEALTH_DBT_TASKS=node: Cosmos), the other grain a
    # deployment may choose; every one of them took its result from the one build and passed.
    shutil.copy(world.landing / apc.name, apc)
    assert world.pophealth("dag", "ingest_apc", "--landing", str(landing)).returncode == 0
    rebuilt = world.pophealth("dag", "build_marts", "--landing", str(landing), env={"POPHEALTH_DBT_TASKS": "node"})
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:]
    per_node = dict(
        world.query(
            """SELECT task_id, state FROM task_instance WHERE dag_id = 'build_marts' AND task_id LIKE 'dbt.%%'
               AND run_id = (SELECT run_id FROM dag_run WHERE dag_id = 'build_marts' ORDER BY id DESC LIMIT 1)""",
            database="airflow",
        )
    )
    assert per_node["dbt.dbt_producer_watcher"] == "success"
    assert per_node["dbt.person.run"] == per_node["dbt.person.test"] == per_node["dbt.bcf_metric.seed"] == "success"
    assert len(per_node) > 100 and set(per_node.values()) == {"success"}


# ---------------------------------------------------------------------------------------------------------
# The marts, number by number against the generator's answer key (pophealth/synth/answer_metrics.py)


def _number(value) -> str:
    if value is None or value == "":
        return ""
    return f"{float(value):.4f}"


def test_every_bcf_metric_equals_the_answer_key(world):
    """Every metric, period and geography (the area, each of the three councils, each locality), with whether
    the period is final and from when, as the generator works them out."""
    expected = {
        (r["metric_code"], r["period_start"], r["period_end"], r["geography_level"], r["geography_code"]): (
            _number(r["numerator"]),
            _number(r["denominator"]),
            _number(r["value"]),
            r["is_final"],
            r["final_on"],
        )
        for r in world.answers("metrics.csv")
    }
    actual = {
        (code, start, end, level, geography): (
            _number(numerator),
            _number(denominator),
            _number(value),
            _normal(is_final),
            final_on,
        )
        for code, start, end, level, geography, numerator, denominator, value, is_final, final_on in world.query(
            """SELECT metric_code, period_start::text, period_end::text, geography_level, geography_code, numerator,
                      denominator, value, is_final, final_on::text FROM marts.bcf_metrics"""
        )
    }
    assert set(actual) == set(expected)
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, f"{len(wrong)} of {len(expected)} differ, e.g. {next(iter(wrong.items()))}"
    # The small world is not empty where it matters: every metric has a non-zero numerator somewhere.
    assert {k[0] for k, v in expected.items() if v[0] not in ("", "0.0000")} == {
        "emergency_admissions",
        "care_home_admissions_65",
        "reablement_91_days_65",
        "delayed_discharge_days",
        "falls_admissions_65",
        "emergency_readmissions_30d",
    }
    # Each council has every metric, and its own localities (Thurrock's are its integrated locality areas).
    councils = {k[4] for k in expected if k[3] == "local_authority"}
    assert councils == {"E10000012", "E06000033", "E06000034"}
    assert {k[4] for k in expected if k[3] == "locality"} >= {"GRAYS", "TILBURY", "STANFORD-LE-HOPE", "AVELEY_OCKENDON"}
    # The councils' denominators add up to the area's (every LSOA is in one council).
    area, by_council = {}, {}
    for (code, start, _end, level, _geo), (_n, denominator, *_rest) in expected.items():
        if code == "emergency_admissions" and level in ("area", "local_authority"):
            target = area if level == "area" else by_council
            target[start] = target.get(start, 0) + float(denominator)
    assert area == by_council
    # The as-of month's readmissions and the last three months' reablement are provisional.
    assert expected[("emergency_readmissions_30d", "2025-09-01", "2025-09-30", "area", "area")][3:] == (
        "false",
        "2025-10-29",
    )
    assert expected[("reablement_91_days_65", "2025-06-01", "2025-06-30", "area", "area")][3:] == ("true", "2025-09-29")


def test_every_cohort_equals_the_answer_key(world):
    expected = {(r["cohort"], r["measure"], r["key"]): int(r["value"]) for r in world.answers("cohorts.csv")}
    ((spells, days, known),) = world.query(
        "SELECT count(*), coalesce(sum(days_delayed), 0), count(*) FILTER (WHERE known_to_social_care) "
        "FROM marts.delayed_discharges"
    )
    ((falls, known_before, supported),) = world.query(
        "SELECT count(*), count(*) FILTER (WHERE known_to_social_care_before), "
        "count(*) FILTER (WHERE has_support_within_91_days) FROM marts.falls_admissions"
    )
    ((placements, self_funded),) = world.query(
        "SELECT count(*), count(*) FILTER (WHERE is_self_funded) FROM marts.care_home_after_hospital"
    )
    actual = {
        ("delayed_discharges", "spells", ""): spells,
        ("delayed_discharges", "days_delayed", ""): days,
        ("delayed_discharges", "known_to_social_care", ""): known,
        ("falls_admissions", "admissions", ""): falls,
        ("falls_admissions", "known_to_social_care_before", ""): known_before,
        ("falls_admissions", "with_support_within_91_days", ""): supported,
        ("care_home_after_hospital", "placements", ""): placements,
        ("care_home_after_hospital", "self_funded", ""): self_funded,
    }
    for band, code, admissions in world.query(
        "SELECT age_band, primary_diagnosis_code, admissions FROM marts.admission_reasons"
    ):
        actual[("admission_reasons", "admissions", f"{band}|{code}")] = admissions
    assert actual == expected
    assert spells > 0 and falls > 0 and placements > 0


def test_the_risk_pyramid_has_the_contracts_sizes(world):
    # The world's population is its register at the as-of date: N = 2,000 gives 10 / 90 / 300 / 1,600.
    assert POPULATION == 2000
    tiers = dict(world.query("SELECT risk_tier, count(*) FROM marts.risk_stratification GROUP BY 1"))
    assert tiers == {"very_high": 10, "high": 90, "moderate": 300, "low": 1600}
    registered = world.query("SELECT count(*) FROM marts.person WHERE is_registered")[0][0]
    assert registered == 2000 == world.world()["registered"]
    # Ranks run 1..N with the highest score first.
    ((first, last, ordered),) = world.query(
        """SELECT min(risk_rank), max(risk_rank),
                  bool_and(risk_score >= coalesce(next_score, 0)) FROM (
             SELECT risk_rank, risk_score, lead(risk_score) OVER (ORDER BY risk_rank) AS next_score
             FROM marts.risk_stratification) ranked"""
    )
    assert (first, last, ordered) == (1, 2000, True)


def test_the_risk_model_is_evaluated_on_a_later_year(world):
    rows = world.query("""SELECT risk_tier, people, share_of_emergency_admissions, c_statistic, fitted_as_of,
                                 evaluated_as_of FROM marts.risk_model_evaluation ORDER BY tier_order""")
    assert [r[0] for r in rows] == ["very_high", "high", "moderate", "low", "all"]
    assert sum(r[1] for r in rows[:4]) == rows[4][1] > 0
    assert abs(sum(r[2] for r in rows[:4]) - 100) < 0.05
    assert rows[0][4] < rows[0][5]
    assert 0.5 < rows[0][3] <= 1


def test_reporting_applies_disclosure_control_to_the_marts_counts(world):
    pairs = world.query(
        """SELECT m.numerator, r.numerator, r.is_suppressed, b.counts_people
           FROM marts.bcf_metrics m
           JOIN reporting.bcf_metrics r USING (metric_code, period_start, period_end, geography_level, geography_code)
           JOIN reference.bcf_metric b USING (metric_code)
           WHERE metric_code <> 'delayed_discharge_days'"""
    )
    assert pairs
    for true_count, shown, suppressed, _people in pairs:
        if 1 <= true_count <= 7:
            assert shown is None and suppressed
        else:
            assert shown == round(true_count / 5) * 5  # count / 5 is never exactly x.5
    assert any(s is None for _t, s, _x, _p in pairs) and any(s == 0 for _t, s, _x, _p in pairs)
    tiers = dict(world.query("SELECT risk_tier, people FROM reporting.risk_pyramid WHERE geography_level = 'area'"))
    assert tiers == {"very_high": 10, "high": 90, "moderate": 300, "low": 1600}
    # Each locality's tiers are the marts' counts under the same control; a small locality's very high tier is hidden.
    true_counts = dict(
        ((locality, tier), n)
        for locality, tier, n in world.query(
            """SELECT p.locality_code, r.risk_tier, count(*) FROM marts.risk_stratification r
           JOIN marts.person p USING (person_id) GROUP BY 1, 2"""
        )
    )
    shown = world.query(
        "SELECT geography_code, risk_tier, people FROM reporting.risk_pyramid WHERE geography_level = 'locality'"
    )
    assert len(shown) == 4 * len({locality for locality, _tier in true_counts if locality})
    for locality, tier, people in shown:
        true_count = true_counts.get((locality, tier), 0)
        assert people == (None if 1 <= true_count <= 7 else round(true_count / 5) * 5), (locality, tier)
    assert any(people is None for _l, _t, people in shown)


def test_the_run_wrote_the_board_report_from_reporting(world):
    assert "Board report" in world.first_run.stdout
    report = world.home / "state" / "reports" / "board_report.html"
    html = report.read_text()
    assert "risk" in html.lower() and "emergency_admissions" in html
