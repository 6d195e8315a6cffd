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
    subprocess.run([sys.executable, "-m", "pophealth.cli", "synth", "--population", "600", "--seed", "5", "--out",
                    str(landing), "--councils", COUNCILS], env=isolated_env(home), check=True, capture_output=True,
                   timeout=300)
    with marts_built_from(landing, home, TEST_KEY, timeout=1500) as url:
        yield url, landing / "answer_key"


def test_every_metric_for_the_area_each_council_and_each_locality_equals_the_answer_key(warehouse):
    url, answer_key = warehouse
    with answer_key.joinpath("metrics.csv").open(newline="") as handle:
        expected = {(r["metric_code"], r["period_start"], r["period_end"], r["geography_level"], r["geography_code"]):
                    (_number(r["numerator"]), _number(r["denominator"]), _number(r["value"]), r["is_final"],
                     r["final_on"]) for r in csv.DictReader(handle)}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT metric_code, period_start::text, period_end::text, geography_level, geography_code, numerator,
                      denominator, value, is_final, final_on::text FROM marts.bcf_metrics""").fetchall()
        published = dict(conn.execute("SELECT geography_level, count(DISTINCT geography_code) FROM reporting.bcf_metrics "
                                      "GROUP BY 1").fetchall())
    actual = {r[:5]: (_number(r[5]), _number(r[6]), _number(r[7]), "true" if r[8] else "false", r[9]) for r in rows}
    assert set(actual) == set(expected)
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, f"{len(wrong)} of {len(expected)} differ, e.g. {next(iter(wrong.items()))}"
    assert {k[4] for k in expected if k[3] == "local_authority"} == set(COUNCILS.split(","))
    assert published == {"area": 1, "local_authority": 3, "locality": 20}  # 12 districts, 4 + 4 of the unitaries


def test_geographies_that_cannot_be_computed_are_said(warehouse):
    """Hand-made faults on the published reference tables: two LSOAs with no council, Thurrock with no 2025
    population estimates. pophealth status and the run summary print what geography_problems says."""
    from pophealth.geographies import geography_problems

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
