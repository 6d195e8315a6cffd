"""Three councils in one platform (issue 18, contract v2): Mid and South Essex's Essex County Council, Southend-on-Sea
and Thurrock, their own localities, every Better Care Fund metric for the area, each council and each locality, and
whether each period is final. A small generated world is loaded and its marts built without Airflow
(conftest.marts_built_from); the end-to-end test does the same through the DAGs.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import psycopg
import pytest

from .conftest import COUNCILS, TEST_KEY, isolated_env, marts_built_from

pytestmark = pytest.mark.integration


def _number(value) -> str:
    return "" if value in (None, "") else f"{float(value):.4f}"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    home = tmp_path_factory.mktemp("councils")
    landing = home / "landing"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pophealth.cli",
            "synth",
            "--population",
            "600",
            "--seed",
            "5",
            "--out",
            str(landing),
            "--councils",
            COUNCILS,
        ],
        env=isolated_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )
    with marts_built_from(landing, home, TEST_KEY, timeout=1500) as url:
        yield url, landing / "answer_key"


def test_every_metric_for_the_area_each_council_and_each_locality_equals_the_answer_key(warehouse):
    url, answer_key = warehouse
    with answer_key.joinpath("metrics.csv").open(newline="") as handle:
        expected = {
            (r["metric_code"], r["period_start"], r["period_end"], r["geography_level"], r["geography_code"]): (
                _number(r["numerator"]),
                _number(r["denominator"]),
                _number(r["value"]),
                r["is_final"],
                r["final_on"],
            )
            for r in csv.DictReader(handle)
        }
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT metric_code, period_start::text, period_end::text, geography_level, geography_code, numerator,
                      denominator, value, is_final, final_on::text FROM marts.bcf_metrics"""
        ).fetchall()
        published = dict(
            conn.execute(
                "SELECT geography_level, count(DISTINCT geography_code) FROM reporting.bcf_metrics GROUP BY 1"
            ).fetchall()
        )
    actual = {r[:5]: (_number(r[5]), _number(r[6]), _number(r[7]), "true" if r[8] else "false", r[9]) for r in rows}
    assert set(actual) == set(expected)
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, f"{len(wrong)} of {len(expected)} differ, e.g. {next(iter(wrong.items()))}"
    assert {k[4] for k in expected if k[3] == "local_authority"} == set(COUNCILS.split(","))
    assert published == {"area": 1, "local_authority": 3, "locality": 20}  # 12 districts, 4 + 4 of the unitaries


def test_geographies_that_cannot_be_computed_are_said(warehouse):
    """Hand-made faults on the published reference tables: two LSOAs with no council, Thurrock with no 2025
    population estimates. pophealth status and the run summary print what geography_problems says."""
    from pophealth.reports.geographies import geography_problems

    url, _ = warehouse
    with psycopg.connect(url) as conn:  # rolled back at the end: the warehouse is as it was
        assert geography_problems(conn) == []
        conn.execute("""UPDATE raw.ref_lsoa SET la_code = NULL WHERE lsoa_code IN (
                            SELECT DISTINCT lsoa_code FROM raw.ref_lsoa WHERE la_code = 'E10000012'
                            ORDER BY 1 LIMIT 2)""")
        conn.execute("""DELETE FROM raw.ref_population WHERE year = 2025 AND lsoa_code IN (
                            SELECT lsoa_code FROM raw.ref_lsoa WHERE la_code = 'E06000034')""")
        problems = geography_problems(conn)
        conn.rollback()
    assert any(p.startswith("2 of ") and "LSOAs of the postcode lookup have no la_code" in p for p in problems)
    assert any(p.startswith("council E06000034 has no population estimates for 2025") for p in problems)
    assert any(p.startswith("locality GRAYS has no population estimates for 2025") for p in problems)
    assert not any("E10000012" in p or "E06000033" in p for p in problems)


# -- names beside the codes (issue 21): the locality dimension, the metrics' words, ICD-10 titles ---------------


def _seed(name: str) -> list[dict]:
    from .conftest import REPO

    with (REPO / "dbt_project" / "seeds" / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_locality_dimension_names_every_locality_and_its_council(warehouse):
    url, _ = warehouse
    councils = {r["la_code"]: r["la_name"] for r in _seed("local_authority")}
    with psycopg.connect(url) as conn:
        localities = conn.execute(
            "SELECT locality_code, locality_name, la_code, council_name FROM marts.locality"
        ).fetchall()
        lookup = dict(conn.execute("SELECT locality_code, min(la_code) FROM raw.ref_lsoa GROUP BY 1").fetchall())
        # the metrics' localities are the dimension's, with the same names
        metric_names = dict(
            conn.execute("""SELECT DISTINCT geography_code, geography_name FROM marts.bcf_metrics
                                            WHERE geography_level = 'locality'""").fetchall()
        )
    assert len(localities) == 20 and {r[0] for r in localities} == set(lookup)
    for code, name, la_code, council in localities:
        assert la_code == lookup[code] and council == councils[la_code] and name
        assert metric_names[code] == name
    assert ("GRAYS", "E06000034", "Thurrock") in {(r[0], r[2], r[3]) for r in localities}


def test_bcf_metrics_say_in_words_what_their_codes_mean_as_reporting_does(warehouse):
    url, _ = warehouse
    with psycopg.connect(url) as conn:
        differ = conn.execute("""
            SELECT count(*) FILTER (WHERE (m.metric_name, m.unit, m.period_type, m.geography_name)
                                          IS DISTINCT FROM (r.metric_name, r.unit, r.period_type, r.geography_name)),
                   count(*)
            FROM marts.bcf_metrics m JOIN reporting.bcf_metrics r
                USING (metric_code, period_start, period_end, geography_level, geography_code)""").fetchone()
        named = dict(conn.execute("SELECT DISTINCT metric_code, metric_name FROM marts.bcf_metrics").fetchall())
        area = conn.execute(
            "SELECT DISTINCT geography_name FROM marts.bcf_metrics WHERE geography_level = 'area'"
        ).fetchall()
        periods = dict(
            conn.execute("""SELECT period_type, count(*) FILTER (WHERE CASE period_type
                                              WHEN 'month' THEN period_end = (date_trunc('month', period_start)
                                                                              + interval '1 month - 1 day')::date
                                              WHEN 'quarter' THEN period_end = (period_start + interval '3 months'
                                                                                - interval '1 day')::date
                                              ELSE period_end = (period_start + interval '1 year'
                                                                 - interval '1 day')::date
                                              END) = count(*) FROM marts.bcf_metrics GROUP BY 1""").fetchall()
        )
    assert differ[0] == 0 and differ[1] > 0
    assert named == {r["metric_code"]: r["metric_name"] for r in _seed("bcf_metric")}
    assert len(area) == 1 and area[0][0]
    # each period is what its type says (this small world has months and quarters; a financial year if it is whole)
    assert {"month", "quarter"} <= set(periods) <= {"month", "quarter", "financial_year"}
    assert all(periods.values())


def test_a_value_has_the_precision_its_unit_needs_and_numerator_and_denominator_stay_exact(warehouse):
    # Hand-worked: 29 of 32 still at home is 90.625%, given as 90.6; 1 of 3 is 33.3; 2 of 3 is 66.7.
    url, _ = warehouse
    with psycopg.connect(url) as conn:
        worst = conn.execute(
            "SELECT max(scale(value)), bool_and(scale(numerator) = 0) FROM marts.bcf_metrics"
        ).fetchone()
        wrong = conn.execute(
            """SELECT count(*) FROM marts.bcf_metrics m JOIN reference.bcf_metric d USING (metric_code)
               WHERE denominator > 0 AND value <> round(numerator / denominator * d.scale, 1)"""
        ).fetchone()[0]
        hand = conn.execute("""SELECT round(29::numeric / 32 * 100, 1), round(1::numeric / 3 * 100, 1),
                                      round(2::numeric / 3 * 100, 1)""").fetchone()
    assert worst == (1, True) and wrong == 0
    assert [str(v) for v in hand] == ["90.6", "33.3", "66.7"]


@pytest.mark.parametrize(
    "mart, code",
    [
        ("admission_reasons", "primary_diagnosis_code"),
        ("delayed_discharges", "left(primary_diagnosis, 3)"),
        ("falls_admissions", "left(primary_diagnosis, 3)"),
    ],
)
# (marts.care_home_after_hospital joins the titles the same way; this small world sends nobody to a care home)
def test_each_diagnosis_comes_with_its_who_icd10_title(warehouse, mart, code):
    url, _ = warehouse
    titles = {r["code"]: r["title"] for r in _seed("icd10_category")}
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT DISTINCT {code}, primary_diagnosis_description FROM marts.{mart}").fetchall()
    assert rows
    for category, description in rows:
        assert description == titles.get(category), (category, description)
    assert any(description for _, description in rows)
