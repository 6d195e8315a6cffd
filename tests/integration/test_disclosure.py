"""What analysts can still single out (`governance.disclosure`), on hand-made tables in a real PostgreSQL whose
answers are worked out by hand below; and the IG report's section that shows it.

A person table, quasi-identifiers birth_year, sex, lsoa_code (risk_score and note are not):

    p01 p02        1950 1 A      a class of 2
    p03            1950 2 A      unique (a row of the same values without a person_id does not hide it)
    p04 ... p08    1960 2 B      a class of 5
    p09 p10        1970 1 -      a class of 2 (an unknown LSOA is a value like any other)

    10 people: 1 unique (10.0%), 4 in classes of 2-4, 5 in classes of 5 or more.

An admissions table, quasi-identifiers age_band and the two dates (spell_id is not):

    q1  65-74 2025-01-01..2025-01-05   with q2: a class of 2
    q1  65-74 2025-03-01..2025-03-02   alone: q1 is unique, by the record that singles them out best
    q2  65-74 2025-01-01..2025-01-05   a class of 2
    q3  75-84 2025-02-01..2025-02-03   twice (two spells): still one person, unique

    3 people: 2 unique, 1 in classes of 2-4, none of 5 or more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import isolated_env

pytestmark = pytest.mark.integration

PERSON_ROWS = [
    ("p01", 1950, "1", "A"),
    ("p02", 1950, "1", "A"),
    ("p03", 1950, "2", "A"),
    (None, 1950, "2", "A"),
    *[(f"p0{i}", 1960, "2", "B") for i in range(4, 9)],
    ("p09", 1970, "1", None),
    ("p10", 1970, "1", None),
]
ADMISSION_ROWS = [
    ("q1", "65-74", "2025-01-01", "2025-01-05", "s1"),
    ("q1", "65-74", "2025-03-01", "2025-03-02", "s2"),
    ("q2", "65-74", "2025-01-01", "2025-01-05", "s3"),
    ("q3", "75-84", "2025-02-01", "2025-02-03", "s4"),
    ("q3", "75-84", "2025-02-01", "2025-02-03", "s5"),
]


def _hand_made(conn, schema: str) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.execute(f"""CREATE TABLE {schema}.hand_made_person (person_id text, birth_year int, sex text, lsoa_code text,
                                                            risk_score numeric, note text)""")
    for row in PERSON_ROWS:
        conn.execute(f"INSERT INTO {schema}.hand_made_person VALUES (%s, %s, %s, %s, 0.5, 'x')", row)
    conn.execute(f"""CREATE TABLE {schema}.hand_made_admissions (person_id text, age_band text, admission_date date,
                                                                discharge_date date, spell_id text)""")
    for row in ADMISSION_ROWS:
        conn.execute(f"INSERT INTO {schema}.hand_made_admissions VALUES (%s, %s, %s, %s, %s)", row)
    conn.execute(f"CREATE TABLE {schema}.hand_made_counts (age_band text, people int)")  # no person_id: not measured


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """A fresh warehouse (schemas and grants, nothing loaded) with the hand-made tables in a scratch schema
    and in `marts`; yields (a function that opens a connection to it, its home)."""
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    home = tmp_path_factory.mktemp("disclosure")
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("POPHEALTH_")]:
            patch.delenv(name)
        for name, value in isolated_env(home).items():
            if name.startswith("POPHEALTH_"):
                patch.setenv(name, value)
        patch.setattr(db, "_cached", None)
        try:
            prepare_warehouse()
            with db.connect() as conn:
                _hand_made(conn, "qi_scratch")
                _hand_made(conn, "marts")
                _hand_made(conn, "qi_elsewhere")
            yield db.connect, home
        finally:
            db.stop_embedded()


def test_the_people_a_hand_made_table_singles_out_are_counted_as_worked_out_by_hand(warehouse):
    from pophealth.governance.disclosure import Uniqueness, quasi_identifier_uniqueness

    with warehouse[0]() as conn:
        results = quasi_identifier_uniqueness(conn, ("qi_scratch",))
    assert results == [
        Uniqueness("qi_scratch.hand_made_admissions", ("age_band", "admission_date", "discharge_date"), 3, 2, 1, 0),
        Uniqueness("qi_scratch.hand_made_person", ("birth_year", "sex", "lsoa_code"), 10, 1, 4, 5),
    ]
    assert results[1].share_unique == pytest.approx(0.1)


def test_the_marts_and_direct_care_are_found_in_the_catalogue_and_no_other_schema(warehouse):
    from pophealth.governance.disclosure import quasi_identifier_uniqueness, uniqueness_text

    with warehouse[0]() as conn:
        found = [r.mart for r in quasi_identifier_uniqueness(conn)]
        assert found == ["marts.hand_made_admissions", "marts.hand_made_person"]  # no table in direct_care yet
        conn.execute("CREATE SCHEMA IF NOT EXISTS direct_care")  # setup creates it (pophealth/warehouse/access.sql)
        conn.execute("CREATE TABLE direct_care.case_finding (person_id text, locality_code text)")
        conn.execute("INSERT INTO direct_care.case_finding VALUES ('c1', 'L1'), ('c2', 'L1'), ('c3', 'L2')")
        results = quasi_identifier_uniqueness(conn)
        conn.rollback()
    assert [r.mart for r in results] == ["direct_care.case_finding", *found]
    assert results[0].quasi_identifiers == ("locality_code",) and (results[0].people, results[0].unique) == (3, 1)
    text = uniqueness_text(results)
    assert "marts.hand_made_person" in text and "10.0%" in text and "p01" not in text


def test_the_ig_report_shows_what_each_mart_singles_out(warehouse):
    from pophealth.contract import agreements
    from pophealth.governance.ig_report import build_report

    with warehouse[0]() as conn:
        page, summary = build_report(conn, agreements.load_register())
    assert '<section id="singling-out"><h2>What analysts can single out</h2>' in page
    section = re.search(r'<table id="quasi-identifiers">.*?</table>', page, re.S).group(0)
    person = re.search(r"<tr><td>marts\.hand_made_person</td>.*?</tr>", section).group(0)
    assert re.findall(r'<td class="n">([^<]*)</td>', person) == ["10", "1", "10.0%", "4", "5"]
    assert "<td>birth_year, sex, lsoa_code</td>" in person
    assert "qi_scratch" not in section and "qi_elsewhere" not in section
    assert not any(f"<td>{p}</td>" in page for p in ("p01", "p03", "q1"))
    assert summary["most_unique"].mart == "marts.hand_made_admissions"


def test_the_command_prints_the_figures_of_the_marts(warehouse):
    _connect, home = warehouse
    printed = subprocess.run(
        [sys.executable, "-m", "pophealth.cli", "quasi-identifiers"],
        env=isolated_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    person = next(line for line in printed.stdout.splitlines() if line.startswith("marts.hand_made_person"))
    assert person.split()[1:6] == ["10", "1", "10.0%", "4", "5"]
    assert "p01" not in printed.stdout and "qi_scratch" not in printed.stdout
