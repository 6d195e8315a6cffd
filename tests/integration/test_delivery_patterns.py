"""What a year of real deliveries looks like: one world, its hospital extracts cut into files the ways trusts send
them (pophealth synth --delivery), each pattern loaded into its own warehouse. Every pattern must give the metrics of
the answer key, the same as the monthly files: the periods come from the rows, not from the file names, and an
episode sent in several files (cumulative year-to-date files, an unfinished episode sent again finished, a month
corrected in a later cumulative file) is held once, as the file with the latest period end says.

Social care is sent as rolling-year submissions (each repeats the last 12 months): quarterly, and with the
year-to-date hospital files every month (the council resubmitting its rolling year).
"""

from __future__ import annotations

import csv

import psycopg
import pytest

from .conftest import SEED, TEST_KEY, isolated_env, marts_built_from
from .test_pipeline_end_to_end import PERSON_COLUMNS, _normal, expected_person_row

pytestmark = pytest.mark.integration

POPULATION = 2000  # the end-to-end world's size: every metric is non-empty with this seed


def _number(value) -> str:
    return "" if value is None or value == "" else f"{float(value):.4f}"


@pytest.fixture(scope="module", params=["monthly", "annual", "ytd"])
def delivered(request, tmp_path_factory):
    import subprocess
    import sys

    home = tmp_path_factory.mktemp(f"delivery-{request.param}")
    landing = home / "landing"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pophealth.cli",
            "synth",
            "--population",
            str(POPULATION),
            "--seed",
            str(SEED),
            "--out",
            str(landing),
            "--delivery",
            request.param,
        ],
        env=isolated_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )
    with marts_built_from(landing, home, TEST_KEY, timeout=1500) as url, psycopg.connect(url) as conn:
        yield request.param, landing, lambda sql, params=(): conn.execute(sql, params).fetchall()


def test_the_files_are_cut_as_the_pattern_says(delivered):
    pattern, landing, query = delivered
    files = sorted(p.name for p in landing.glob("apc_RAJ_*.csv"))
    if pattern == "annual":
        assert files == ["apc_RAJ_20250930.csv"]
    else:
        assert len(files) == 18 and files[0] == "apc_RAJ_20240430.csv" and files[-1] == "apc_RAJ_20250930.csv"
    covers = query("""SELECT file_name, covers_from::text, covers_to::text FROM audit.load
                      WHERE file_name LIKE 'apc_RAJ_%%' AND status = 'published' ORDER BY file_name""")
    by_name = {name: (start, end) for name, start, end in covers}
    if pattern == "annual":
        assert by_name == {"apc_RAJ_20250930.csv": ("2024-04-01", "2025-09-30")}
    elif pattern == "ytd":
        # Cumulative from the start of each financial year: coverage comes from the rows, not the name.
        assert by_name["apc_RAJ_20250331.csv"] == ("2024-04-01", "2025-03-31")
        assert by_name["apc_RAJ_20250930.csv"] == ("2025-04-01", "2025-09-30")
    else:
        assert by_name["apc_RAJ_20250331.csv"] == ("2025-03-01", "2025-03-31")


@pytest.fixture(scope="module")
def monthly_answers(tmp_path_factory) -> str:
    from pophealth.synth import write_world

    out = tmp_path_factory.mktemp("monthly-answers") / "landing"
    write_world(out, population=POPULATION, seed=SEED, delivery="monthly")
    return (out / "answer_key" / "metrics.csv").read_text()


def test_the_answer_key_is_the_monthly_one(delivered, monthly_answers):
    # The same world whatever the files: so equal to its answer key below means equal to the monthly case.
    _pattern, landing, _query = delivered
    assert (landing / "answer_key" / "metrics.csv").read_text() == monthly_answers


def test_marts_person_equals_the_answer_key_whatever_the_files(delivered):
    _pattern, landing, query = delivered
    with (landing / "answer_key" / "people.csv").open(newline="") as handle:
        expected = {expected_person_row(row) for row in csv.DictReader(handle)}
    actual = {tuple(_normal(v) for v in row) for row in query(f"SELECT {', '.join(PERSON_COLUMNS)} FROM marts.person")}
    assert len(actual) == len(expected)
    assert actual == expected


def test_every_bcf_metric_equals_the_answer_key_whatever_the_files(delivered):
    _pattern, landing, query = delivered
    with (landing / "answer_key" / "metrics.csv").open(newline="") as handle:
        expected = {
            (r["metric_code"], r["period_start"], r["period_end"], r["geography_code"]): (
                _number(r["numerator"]),
                _number(r["denominator"]),
                _number(r["value"]),
            )
            for r in csv.DictReader(handle)
        }
    actual = {
        (code, start, end, geography): (_number(numerator), _number(denominator), _number(value))
        for code, start, end, geography, numerator, denominator, value in query(
            """SELECT metric_code, period_start::text, period_end::text, geography_code, numerator,
                            denominator, value FROM marts.bcf_metrics"""
        )
    }
    assert set(actual) == set(expected)
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, f"{len(wrong)} of {len(expected)} differ, e.g. {next(iter(wrong.items()))}"
    # The year as a whole is there, not only its last month (issue 18: one annual file gave March alone).
    assert ("emergency_admissions", "2024-04-01", "2025-03-31", "E10000012") in actual


def test_each_episode_is_held_once_as_the_latest_file_says(delivered):
    pattern, landing, query = delivered
    ((episodes, distinct),) = query("SELECT count(*), count(DISTINCT episode_key) FROM staging.stg_apc_episode")
    assert episodes == distinct
    ((raw,),) = query("SELECT count(*) FROM raw.apc_episode")
    if pattern == "ytd":
        assert raw > 3 * episodes  # the cumulative files repeat every episode many times
        # A few emergency episodes were first sent as elective (11) and corrected in the next cumulative file.
        ((corrected,),) = query("""SELECT count(DISTINCT raw_episode.episode_key) FROM raw.apc_episode AS raw_episode
                                 JOIN staging.stg_apc_episode AS held USING (episode_key)
                                 WHERE raw_episode.admimeth = '11' AND held.admimeth <> '11'""")
        assert corrected > 0
        ((unfinished,),) = query("SELECT count(*) FROM staging.stg_apc_episode WHERE dismeth = '8'")
        ((open_at_end,),) = query("SELECT count(*) FROM staging.stg_apc_episode WHERE disdate IS NULL")
        assert unfinished == open_at_end  # an episode sent open, then finished, is held finished


def test_every_period_is_computed_and_none_is_left_out_in_silence(delivered):
    _pattern, _landing, query = delivered
    rows = query("SELECT period_type, is_computed, reason_not_computed FROM reporting.period_coverage")
    assert {(t, c) for t, c, _r in rows} == {("month", True), ("quarter", True), ("financial_year", True)}
    assert len(rows) == 18 + 6 + 1
