"""The marts' rules, one hand-built person per rule, each answer worked out by hand below.

A landing folder of 1,000 people on the GP register (so the risk pyramid's cut is 5 / 45 / 150 / 800),
most of them identical so that their risk scores tie, plus a few people whose hospital and social care
records sit exactly on either side of a rule of docs/contract/marts.md. The extracts go through the
real loader into a real PostgreSQL and the real dbt project builds the marts. The as-of date is the
extracts' last period end, 2025-09-30.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pophealth.contract.feeds import FEEDS_BY_NAME

from .conftest import marts_built_from
from .test_person_rules import KEY, _valid_numbers, _write, person_id, transit

pytestmark = pytest.mark.integration

_numbers = _valid_numbers()
for _ in range(50):  # not the numbers test_person_rules uses
    next(_numbers)
# R: reablement 3 days before discharge (in) / 4 days before (out); C: a care home restart 200 days after
# the last placement ended (not new) / 400 days after (new); P: readmitted on day 29 (in) / day 30 (out);
# F: W19 with primary S72 (a falls admission) / with primary I63 (not); H: a repeated HFRS code.
R_IN, R_OUT, C_200, C_400, P_29, P_30, F_S72, F_I63, H = (next(_numbers) for _ in range(9))
STORY = (R_IN, R_OUT, C_200, C_400, P_29, P_30, F_S72, F_I63, H)
FILLERS = [next(_numbers) for _ in range(1000 - len(STORY))]  # alike in every way: their scores tie
OPTED_OUT = next(_numbers)  # in no extract: the list is not empty


def _episode(
    epikey: str,
    spell: str,
    number: str,
    admidate: str,
    disdate: str,
    *,
    admimeth: str = "21",
    diagnoses: tuple[str, ...] = ("J18.9",),
    ready: str = "",
    dismeth: str = "1",
    disdest: str = "19",
):
    row = dict.fromkeys(FEEDS_BY_NAME["apc"].written, "")
    row.update(
        epikey=epikey,
        spell_id=spell,
        nhs_number=number,
        nhs_number_status="01",
        date_of_birth="1935-03-03",
        sex="2",
        postcode="CM1 1AA",
        gp_practice_code="F81001",
        procode="RAJ",
        admidate=admidate,
        disdate=disdate,
        epistart=admidate,
        epiend=disdate,
        epiorder="1",
        admimeth=admimeth,
        admisorc="19",
        disdest=disdest,
        dismeth=dismeth,
        classpat="1",
        mainspef="300",
        tretspef="300",
        discharge_ready_date=ready,
    )
    for position, code in enumerate(diagnoses, start=1):
        row[f"diag_{position:02d}"] = code
    return [row[c] for c in FEEDS_BY_NAME["apc"].written]


def _service(
    period_end: str,
    local_id: str,
    number: str,
    start: str,
    end: str = "",
    *,
    service_type: str,
    component: str,
    outcome: str = "Continuation of support or services",
):
    period_start = {"2025-06-30": "2024-07-01", "2025-09-30": "2024-10-01"}[period_end]
    row = dict.fromkeys(FEEDS_BY_NAME["cld"].written, "")
    row.update(
        LA_Code="E10000012",
        Reporting_Period_Start_Date=period_start,
        Reporting_Period_End_Date=period_end,
        Client_Type="Service user",
        LA_Person_Unique_Identifier=local_id,
        NHS_Number=number,
        Gender="Female",
        Date_of_Birth="1935-03-03",
        Postcode="CM1 1AA",
        Event_Type="Service",
        Event_Reference=local_id + start,
        Event_Start_Date=start,
        Event_End_Date=end,
        Service_Type=service_type,
        Service_Component=component,
        Event_Outcome=outcome if not end else "NFA: Support ended for other reason",
    )
    return [row[c] for c in FEEDS_BY_NAME["cld"].written]


REABLEMENT = {"service_type": "Short term support: ST-Max", "component": "Reablement"}
CARE_HOME = {"service_type": "Long term support: Residential care", "component": "Long term residential care"}


def build_landing(landing: Path) -> None:
    landing.mkdir(parents=True)
    _write(
        landing / "ref_postcode_lookup.csv",
        ("postcode", "lsoa_code", "locality_code", "locality_name"),
        [("CM1 1AA", "E01021001", "E07000070", "Chelmsford")],
    )
    _write(
        landing / "ref_population_2024.csv",
        ("lsoa_code", "sex", "age", "population"),
        [("E01021001", "2", age, 100) for age in range(91)],
    )
    _write(
        landing / "ref_population_2025.csv",
        ("lsoa_code", "sex", "age", "population"),
        [("E01021001", "2", age, 100) for age in range(91)],
    )
    _write(landing / "optouts_20250930.csv", ("nhs_number",), [(OPTED_OUT,)])
    register = [[n, "1935-03-03", "2", "CM1 1AA", "F81001", "2000-01-01", "", ""] for n in STORY]
    register += [[n, "1980-01-01", "1", "CM1 1AA", "F81001", "2000-01-01", "", ""] for n in FILLERS]
    assert list(FEEDS_BY_NAME["gp_register"].written) == [
        "nhs_number",
        "date_of_birth",
        "sex",
        "postcode",
        "gp_practice_code",
        "registration_start_date",
        "registration_end_date",
        "date_of_death",
    ]
    _write(landing / "gp_register_20250930.csv", FEEDS_BY_NAME["gp_register"].written, register)
    _write(
        landing / "apc_RAJ_20250930.csv",
        FEEDS_BY_NAME["apc"].written,
        [
            # R_IN and R_OUT are discharged alive on 2025-03-10 (elective, so only the discharge matters).
            _episode("E1", "S1", R_IN, "2025-03-01", "2025-03-10", admimeth="11"),
            _episode("E2", "S2", R_OUT, "2025-03-01", "2025-03-10", admimeth="11"),
            # P_29: discharged 2025-05-01, an emergency admission 29 days later; P_30: 30 days later.
            _episode("E3", "S3", P_29, "2025-04-25", "2025-05-01"),
            _episode("E4", "S4", P_29, "2025-05-30", "2025-06-02"),
            _episode("E5", "S5", P_30, "2025-05-25", "2025-06-01"),
            _episode("E6", "S6", P_30, "2025-07-01", "2025-07-03"),
            # Falls: both have W19 in another position; only the injury primary makes a falls admission.
            _episode("E7", "S7", F_S72, "2025-08-01", "2025-08-09", diagnoses=("S72.0", "W19", "I10")),
            _episode("E8", "S8", F_I63, "2025-08-01", "2025-08-09", diagnoses=("I63.9", "W19", "I10")),
            # H: dementia (F00, 7.1) in two spells and twice in one, falls risk R29 (3.6), hypertension I10 (not a
            # frailty code): HFRS = 7.1 + 3.6 = 10.7, intermediate.
            _episode("E9", "S9", H, "2025-01-10", "2025-01-15", diagnoses=("F00.1", "I10", "F00.9")),
            _episode("E10", "S10", H, "2025-06-10", "2025-06-12", diagnoses=("R29.6", "F00.1")),
        ],
    )
    # The hospital data starts in July 2024 (the metrics' periods start with the first hospital extract).
    _write(
        landing / "apc_RAJ_20240731.csv",
        FEEDS_BY_NAME["apc"].written,
        [
            _episode("E0", "S0", H, "2024-07-01", "2024-07-02", admimeth="11", diagnoses=("I10",)),
        ],
    )
    _write(
        landing / "cld_E10000012_20250630.csv",
        FEEDS_BY_NAME["cld"].written,
        [
            # C_400's first placement ends 2024-07-10; the next starts 400 days later, 2025-08-14.
            _service("2025-06-30", "EC400", C_400, "2024-07-01", "2024-07-10", **CARE_HOME),
        ],
    )
    _write(
        landing / "cld_E10000012_20250930.csv",
        FEEDS_BY_NAME["cld"].written,
        [
            _service("2025-09-30", "ECR1", R_IN, "2025-03-07", "2025-03-20", **REABLEMENT),  # 3 days before
            _service("2025-09-30", "ECR2", R_OUT, "2025-03-06", "2025-03-20", **REABLEMENT),  # 4 days before
            # C_200's first placement ends 2024-10-05; the next starts 200 days later, 2025-04-23.
            _service("2025-09-30", "EC200", C_200, "2024-10-01", "2024-10-05", **CARE_HOME),
            _service("2025-09-30", "EC200", C_200, "2025-04-23", **CARE_HOME),
            _service("2025-09-30", "EC400", C_400, "2025-08-14", **CARE_HOME),
        ],
    )


@pytest.fixture(scope="module")
def marts(tmp_path_factory):
    import psycopg

    home = tmp_path_factory.mktemp("mart-rules")
    build_landing(home / "landing")
    with marts_built_from(home / "landing", home, KEY, timeout=900) as url, psycopg.connect(url) as conn:
        yield lambda sql, params=(): conn.execute(sql, params).fetchall()


def _contribution(marts, metric: str, number: str) -> list[tuple]:
    return marts(
        """SELECT event_date::text, numerator, denominator FROM intermediate.int_bcf_contribution
                    WHERE metric_code = %s AND person_key = %s ORDER BY event_date""",
        (metric, transit(number)),
    )


def test_reablement_starting_3_days_before_discharge_counts_and_4_days_before_does_not(marts):
    # R_IN: still at home 91 days later (no death, admission or care home): numerator 1 of denominator 1.
    assert _contribution(marts, "reablement_91_days_65", R_IN) == [("2025-03-10", 1, 1)]
    assert _contribution(marts, "reablement_91_days_65", R_OUT) == []
    ((numerator, denominator),) = marts("""SELECT numerator, denominator FROM marts.bcf_metrics
        WHERE metric_code = 'reablement_91_days_65' AND geography_level = 'area' AND period_start = '2025-03-01'
          AND period_end = '2025-03-31'""")
    assert (numerator, denominator) == (1, 1)


def test_a_care_home_restart_200_days_after_the_last_is_not_new_and_400_days_after_is(marts):
    assert _contribution(marts, "care_home_admissions_65", C_200) == [("2024-10-01", 1, None)]
    assert _contribution(marts, "care_home_admissions_65", C_400) == [("2024-07-01", 1, None), ("2025-08-14", 1, None)]
    monthly = dict(
        marts("""SELECT period_start::text, numerator FROM marts.bcf_metrics
        WHERE metric_code = 'care_home_admissions_65' AND geography_level = 'area' AND period_end - period_start < 31
          AND period_start IN ('2025-04-01', '2025-08-01')""")
    )
    assert monthly == {"2025-04-01": 0, "2025-08-01": 1}


def test_an_emergency_readmission_on_day_29_counts_and_on_day_30_does_not(marts):
    assert _contribution(marts, "emergency_readmissions_30d", P_29)[0] == ("2025-05-01", 1, 1)
    assert _contribution(marts, "emergency_readmissions_30d", P_30)[0] == ("2025-06-01", 0, 1)


def test_a_fall_counts_with_an_injury_primary_and_not_with_a_stroke_primary(marts):
    falls = dict(marts("SELECT person_id, fall_code FROM marts.falls_admissions"))
    assert falls == {person_id(F_S72): "W19"}
    assert _contribution(marts, "falls_admissions_65", F_S72) == [("2025-08-01", 1, None)]
    assert _contribution(marts, "falls_admissions_65", F_I63) == []


def test_hfrs_counts_a_repeated_code_once(marts):
    ((hfrs, band),) = marts(
        "SELECT hfrs, hfrs_band FROM marts.risk_stratification WHERE person_id = %s", (person_id(H),)
    )
    assert (float(hfrs), band) == (10.7, "intermediate")


def test_the_pyramid_cuts_1000_people_at_5_50_200_with_ties_broken_by_person_id(marts):
    rows = marts("SELECT person_id, risk_score, risk_rank, risk_tier FROM marts.risk_stratification ORDER BY risk_rank")
    assert len(rows) == 1000
    assert [r[2] for r in rows] == list(range(1, 1001))
    tiers = [r[3] for r in rows]
    assert tiers == ["very_high"] * 5 + ["high"] * 45 + ["moderate"] * 150 + ["low"] * 800
    # The 991 identical people tie on their score; their ranks follow their person_id.
    fillers = {person_id(n) for n in FILLERS}
    tied = [r for r in rows if r[0] in fillers]
    assert len({r[1] for r in tied}) == 1
    assert [r[0] for r in tied] == sorted(r[0] for r in tied)
    assert [r[2] for r in tied] == list(range(tied[0][2], tied[0][2] + len(tied)))
