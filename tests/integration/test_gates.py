"""The quality gates on real staged loads: hand-made extracts of every feed, the real loader, a real PostgreSQL.

Each file is staged by `pophealth.ingest.load.stage_extract` (validated, pseudonymised, opt-outs applied) into its
batch table, and the DAG's gate task (`pophealth.operate.orchestration.gate_load`) runs the feed's suite from
expectations/registry.yml on it through Great Expectations' SQL data source; a failed gate refuses the load.

For every error rule of the registry there is a case below that takes a good extract, breaks exactly that
rule, and checks that the gate refuses the file with the rule, the number of rows and example row numbers
in its message, and that nothing of it reached the warehouse. Every warn rule has a case that lets the
load go on with the warning recorded. The volume rules are checked on a second delivery of a source.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from pophealth.config import environment
from pophealth.contract.feeds import FEEDS, LOAD_ORDER
from pophealth.contract.identifiers import nhs_check_digit

from .conftest import PURPOSE_KEYS_ENV, TEST_KEY, TEST_VAULT_PUBLIC_KEY

pytestmark = pytest.mark.integration

ENV = {"POPHEALTH_LINKAGE_KEY": TEST_KEY, "POPHEALTH_VAULT_PUBLIC_KEY": TEST_VAULT_PUBLIC_KEY, **PURPOSE_KEYS_ENV}
ENV_REMOVED = (
    "POPHEALTH_DATABASE_URL",
    "POPHEALTH_LINKAGE_KEY_FILE",
    "POPHEALTH_VAULT_PUBLIC_KEY_FILE",
    "POPHEALTH_VAULT_PRIVATE_KEY",
    "POPHEALTH_VAULT_PRIVATE_KEY_FILE",
    "POPHEALTH_EXPECTATIONS_DIR",
    "POPHEALTH_LANDING_DIR",
)


def _test_numbers(count: int) -> list[str]:
    """Valid NHS numbers in the 999 test range."""
    numbers = []
    stem = 999000100
    while len(numbers) < count:
        digit = nhs_check_digit(str(stem))
        if digit is not None:
            numbers.append(f"{stem}{digit}")
        stem += 1
    return numbers


# Who is who: 0-59 the people of the hand-made extracts; 60 died (the published register says so);
# 100-219 a register delivered twice; 300-359 an opt-out list delivered twice; 360-379 other opt-out lists;
# 399 on the opt-out list every test starts with.
NUMBERS = _test_numbers(400)
DEAD = NUMBERS[60]
DIED_ON = "2025-09-01"
OPTED_OUT = NUMBERS[399]


def _invalid(number: str) -> str:
    """The number with another last digit: its Modulus 11 check fails."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


FIXTURE_LOOKUP = [
    {"postcode": "CM1 1AA", "lsoa_code": "E01021001", "locality_code": "E07000070", "locality_name": "Chelmsford"},
    {"postcode": "CO1 1CC", "lsoa_code": "E01021100", "locality_code": "E07000071", "locality_name": "Colchester"},
]
HEADERS = {feed.name: feed.written for feed in FEEDS}
RAW_TABLES = {feed.name: feed.table for feed in FEEDS}


def _write(path: Path, header, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([row.get(c, "") for c in header] for row in rows)
    return path


# ----------------------------------------------------------------------------------------------------------
# Good extracts, one row at a time


def _day(start: str, days: int) -> str:
    return (date.fromisoformat(start) + timedelta(days=days)).isoformat()


def _apc(i: int, provider: str = "RAJ", **changes: str) -> dict:
    """Episode i of a good hospital extract for September 2025: its own spell, two days in hospital."""
    admitted = _day("2025-09-01", i % 25)
    row = dict(
        epikey=f"E{i}",
        spell_id=f"S{i}",
        nhs_number=NUMBERS[i],
        nhs_number_status="01",
        date_of_birth="1950-10-15",
        sex="1",
        postcode="CM1 1AA",
        gp_practice_code="F81001",
        procode=provider,
        admidate=admitted,
        disdate=_day(admitted, 2),
        epistart=admitted,
        epiend=_day(admitted, 2),
        epiorder="1",
        admimeth="21",
        admisorc="19",
        disdest="19",
        dismeth="1",
        classpat="1",
        mainspef="300",
        tretspef="300",
        diag_01="J18.9",
        diag_02="I10X",
        discharge_ready_date=_day(admitted, 1) if i % 3 == 0 else "",
    )
    row.update(changes)
    return row


def _in_month(i: int, period: str) -> dict:
    """The dates of episode i of a hospital file for the month ending `period` (YYYYMMDD): its rows say which month
    the file covers (audit.load.covers_from), and the volume rule compares month with month."""
    admitted = _day(f"{period[:4]}-{period[4:6]}-01", i % 25)
    return dict(
        admidate=admitted,
        disdate=_day(admitted, 2),
        epistart=admitted,
        epiend=_day(admitted, 2),
        discharge_ready_date=_day(admitted, 1) if i % 3 == 0 else "",
    )


def _register(i: int, **changes: str) -> dict:
    row = dict(
        nhs_number=NUMBERS[i],
        date_of_birth="1950-10-15",
        sex="12"[i % 2],
        postcode="CM1 1AA",
        gp_practice_code="F81001",
        registration_start_date="2000-01-01",
        registration_end_date="2024-06-30" if i % 7 == 3 else "",
        date_of_death="2025-03-03" if i % 11 == 5 and i < 60 else "",
    )
    row.update(changes)
    return row


CLD_EVENTS = (
    dict(
        Event_Type="Request",
        Request_Route_of_Access="Discharge from hospital",
        Event_Outcome="Progress to assessment, review or reassessment",
    ),
    dict(
        Event_Type="Assessment",
        Assessment_Type="Long term assessment",
        Event_Outcome="Progress to Support Planning / Services",
    ),  # a Release 1 value, mapped: not a warning
    dict(
        Event_Type="Service",
        Service_Type="Long Term Support: Community",  # Release 1 letter case
        Service_Component="Home support or domiciliary care",
        Delivery_Mechanism="CASSR commissioned support",
        Unit_Cost="21.50",
        Cost_Frequency_Unit_Type="Hourly",
        Planned_units_per_week="10",
        Event_Outcome="Continuation of support or services",
    ),
    dict(Event_Type="Review", Review_Reason="Planned review", Event_Outcome="NFA - Deceased"),
)


def _cld(i: int, period: str = "2025-09-30", **changes: str) -> dict:
    """Event i of a good social care extract whose reporting period ends on `period`."""
    start = _day(period, -40 - i % 30)
    row = dict(
        LA_Code="E10000012",
        Reporting_Period_Start_Date=_day(period, -364),
        Reporting_Period_End_Date=period,
        Client_Type="Service user",
        LA_Person_Unique_Identifier=f"P{i}",
        NHS_Number=NUMBERS[i],
        Gender="Female",
        Ethnicity="A",
        Date_of_Birth="1940-03-03",
        Postcode="CM1 1AA",
        Primary_Support_Reason="Physical support: Personal care support",
        Accommodation_Status="Owner occupier or shared ownership scheme",
        Event_Reference=f"R{i}",
        Event_Start_Date=start,
        Event_End_Date=_day(start, 3),
    )
    row.update(CLD_EVENTS[i % 4])
    if row["Event_Type"] == "Service":
        row["Event_End_Date"] = ""  # an open service
    if row["Event_Type"] == "Review":
        row["Date_of_Death"] = _day(start, 2)
    row.update(changes)
    return row


def _optout(i: int) -> dict:
    return {"nhs_number": NUMBERS[i]}


def _postcode(i: int, **changes: str) -> dict:
    """Postcode i of a good lookup: four postcodes per LSOA, LSOAs of two localities."""
    lsoa = 21000 + i // 4
    locality = "E07000070" if lsoa % 2 == 0 else "E07000071"
    row = dict(
        postcode=f"CM{i // 10 + 1} {i % 10}AB",
        lsoa_code=f"E01{lsoa:06d}",
        locality_code=locality,
        locality_name="Chelmsford" if locality == "E07000070" else "Colchester",
        la_code="E10000012",
    )
    row.update(changes)
    return row


def _population(lsoa: str = "E01021001") -> list[dict]:
    """One LSOA's mid-year estimate: both sexes at every age 0-90."""
    return [
        dict(lsoa_code=lsoa, sex=sex, age=str(age), population=str(10 + age % 7)) for sex in "12" for age in range(91)
    ]


GOOD = {
    "apc": lambda: [_apc(i) for i in range(10)],
    "gp_register": lambda: [_register(i) for i in range(10)],
    "cld": lambda: [_cld(i) for i in range(12)],
    "optouts": lambda: [_optout(360 + i) for i in range(10)],
    "ref_postcode_lookup": lambda: [_postcode(i) for i in range(12)],
    "ref_population": lambda: _population(),
}
FILE_NAMES = {
    "apc": "apc_RAJ_20250930.csv",
    "gp_register": "gp_register_20250930.csv",
    "cld": "cld_E10000012_20250930.csv",
    "optouts": "optouts_20250930.csv",
    "ref_postcode_lookup": "ref_postcode_lookup.csv",
    "ref_population": "ref_population_2025.csv",
}


def _changed(rows: list[dict], changes: dict[int, dict]) -> list[dict]:
    """The rows with some changed: {index: {column: value}} (index 0 is data row 1 of the file)."""
    return [{**row, **changes.get(i, {})} for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------------------------------------
# The warehouse


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """A fresh embedded PostgreSQL under a temporary POPHEALTH_HOME with an opt-out list, a small postcode
    lookup and a GP register (in which one person died) published."""
    home = tmp_path_factory.mktemp("gates")
    from pophealth.ingest import load
    from pophealth.warehouse import db, schema

    with environment(**ENV, **dict.fromkeys(ENV_REMOVED), POPHEALTH_HOME=str(home / "state")):
        db._cached = None  # the server is cached per process: make sure it is this home's
        try:
            schema.prepare_warehouse()
            for feed, name, rows in (
                ("optouts", "optouts_20250930.csv", [_optout(399)]),
                ("ref_postcode_lookup", "ref_postcode_lookup.csv", FIXTURE_LOOKUP),
                (
                    "gp_register",
                    "gp_register_20250331.csv",
                    [_register(i, date_of_death="") for i in range(10)] + [_register(60, date_of_death=DIED_ON)],
                ),
            ):
                folder = _landing(home / f"setup_{feed}")
                load.publish_load(load.stage_extract(_write(folder / name, HEADERS[feed], rows), "gates-setup").load_id)
            yield home
        finally:
            _stop_server(db)
            db._cached = None


def _stop_server(db) -> None:
    """Stop this module's embedded server. `db.stop_embedded()` runs pg_ctl, which refuses to run as root
    (pgserver then runs postgres as its own user); the fallback signals that one postmaster by its pid."""
    import signal
    import time

    from pophealth import config

    db.stop_embedded()
    pid_file = config.paths().pgdata / "postmaster.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)  # fast shutdown
        except (OSError, ValueError, IndexError):
            return
        for _ in range(50):
            if not pid_file.exists():
                break
            time.sleep(0.1)


_folders = itertools.count()


def _landing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "ref_postcode_lookup.csv", HEADERS["ref_postcode_lookup"], FIXTURE_LOOKUP)
    return folder


@pytest.fixture
def stage(warehouse, tmp_path):
    """Stage a file of a feed made of the given rows (each in its own landing folder); returns its load id."""
    from pophealth.ingest.load import stage_extract

    def _stage(feed: str, rows: list[dict], name: str | None = None) -> int:
        folder = _landing(tmp_path / f"landing{next(_folders)}")
        outcome = stage_extract(_write(folder / (name or FILE_NAMES[feed]), HEADERS[feed], rows), "gates-test")
        assert outcome.status == "validated"
        return outcome.load_id

    return _stage


def _query(sql: str, params: tuple = ()) -> list[tuple]:
    from pophealth.warehouse import db

    with db.connect() as conn:
        return conn.execute(sql, params).fetchall()


def _recorded(load_id: int) -> dict[str, dict]:
    from pophealth.warehouse import db

    with db.connect() as conn:
        cur = conn.execute("SELECT * FROM audit.gate_result WHERE load_id = %s", (load_id,))
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=False)) for r in cur.fetchall()]
    by_id = {r["check_id"]: r for r in rows}
    assert len(by_id) == len(rows), "one row per rule"
    return by_id


def _gate(load_id: int) -> str | None:
    """Run the DAG's gate task on the load: None when it passes, the task's failure message when it does not."""
    from airflow.sdk.exceptions import AirflowFailException

    from pophealth.operate.orchestration import gate_load

    try:
        assert gate_load(load_id, "gates-test") == load_id
        return None
    except AirflowFailException as exc:
        return str(exc)


def _assert_refused(load_id: int, feed: str) -> None:
    """The load is refused, its batch is gone, and not one row of it is in the warehouse."""
    ((status,),) = _query("SELECT status FROM audit.load WHERE load_id = %s", (load_id,))
    assert status == "gate_failed"
    assert _query(f"SELECT count(*) FROM {RAW_TABLES[feed]} WHERE load_id = %s", (load_id,)) == [(0,)]
    assert _query("SELECT to_regclass(%s)", (f"load_batch.load_{load_id}",)) == [(None,)]


IDENTIFYING = {
    "nhs_number",
    "NHS_Number",
    "date_of_birth",
    "Date_of_Birth",
    "postcode",
    "Postcode",
    "LA_Person_Unique_Identifier",
    "epikey",
    "spell_id",
    "Event_Reference",
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _assert_no_value_of(rows: list[dict], text: str) -> None:
    """No identifier, postcode or date of the file in the text (identifiers short enough to match anything,
    such as the test's own local ids, are compared as whole words)."""
    for row in rows:
        for column, value in row.items():
            if not value:
                continue
            if column in IDENTIFYING and len(value) >= 4 or _DATE.match(value):
                assert value not in text, f"a value of {column} is in the gate's message"
            elif column in IDENTIFYING:
                assert not re.search(rf"\b{re.escape(value)}\b", text), f"a value of {column} is in the message"


# ----------------------------------------------------------------------------------------------------------
# Every error rule: a file that breaks it is refused


@dataclass(frozen=True)
class Case:
    rule: str
    rows: Callable[[], list[dict]]
    count: int
    examples: tuple[int, ...] = ()

    @property
    def feed(self) -> str:
        return self.rule.split(".")[0]


def _broken(feed: str, changes: dict[int, dict]) -> Callable[[], list[dict]]:
    return lambda: _changed(GOOD[feed](), changes)


ERROR_CASES = [
    # apc -------------------------------------------------------------------------------------------------
    Case(
        "apc.nhs_number.valid_share_floor",
        _broken("apc", {i: {"nhs_number": _invalid(NUMBERS[i])} for i in range(6)}),
        6,
        (1, 2, 3, 4, 5),
    ),
    Case(
        "apc.rows.loaded_share",
        _broken("apc", {2: {"admidate": "2025-02-30"}, 4: {"epistart": "30/09/2025"}}),
        2,
        (3, 5),
    ),
    Case("apc.admission_method.in_contract", _broken("apc", {3: {"admimeth": "XX"}}), 1, (4,)),
    Case("apc.discharge_method.in_contract", _broken("apc", {3: {"dismeth": "0"}, 7: {"dismeth": "X"}}), 2, (4, 8)),
    Case("apc.discharge_destination.in_contract", _broken("apc", {5: {"disdest": "00"}}), 1, (6,)),
    Case("apc.episode_order.positive", _broken("apc", {1: {"epiorder": "100"}}), 1, (2,)),
    Case("apc.episode_key.unique", _broken("apc", {5: {"epikey": "E4"}}), 2, (5, 6)),
    Case(
        "apc.spell.one_admission",  # a second episode of spell S5 with another admission date
        _broken("apc", {6: {"spell_id": "S5", "nhs_number": NUMBERS[5], "epiorder": "2"}}),
        2,
        (6, 7),
    ),
    Case("apc.episode_starts_after_admission", _broken("apc", {2: {"epistart": "2025-09-01"}}), 1, (3,)),
    Case("apc.episode_ends_after_it_starts", _broken("apc", {2: {"epiend": "2025-09-02"}}), 1, (3,)),
    Case("apc.episode_ends_by_discharge", _broken("apc", {2: {"epiend": "2025-09-06"}}), 1, (3,)),
    Case("apc.discharge_after_admission", _broken("apc", {2: {"disdate": "2025-09-02", "epiend": ""}}), 1, (3,)),
    Case(
        "apc.dates.not_after_period_end",
        _broken(
            "apc",
            {9: {"admidate": "2025-10-01", "epistart": "2025-10-01", "epiend": "2025-10-03", "disdate": "2025-10-03"}},
        ),
        1,
        (10,),
    ),
    Case(
        "apc.admitted_after_birth",  # born in September 2025, admitted in August
        _broken("apc", {1: {"date_of_birth": "2025-09-10", "admidate": "2025-08-30", "epistart": "2025-08-30"}}),
        1,
        (2,),
    ),
    Case("apc.admitted_after_death", _broken("apc", {7: {"nhs_number": DEAD}}), 1, (8,)),
    Case(
        "apc.admitted_after_hospital_death",  # died in spell S3 on 6 September, admitted again on the 9th
        _broken("apc", {3: {"dismeth": "4", "disdest": "79"}, 8: {"nhs_number": NUMBERS[3]}}),
        1,
        (9,),
    ),
    Case("apc.birth_year.plausible", _broken("apc", {0: {"date_of_birth": "1880-01-01"}}), 1, (1,)),
    # gp_register -----------------------------------------------------------------------------------------
    Case(
        "gp_register.nhs_number.valid_share_floor",  # 1 of 10 quarantined: 90% valid
        _broken("gp_register", {2: {"nhs_number": _invalid(NUMBERS[2])}}),
        1,
        (3,),
    ),
    Case(
        "gp_register.rows.loaded_share",
        _broken("gp_register", {3: {"registration_start_date": "2025-13-01"}, 5: {"date_of_death": "yesterday"}}),
        2,
        (4, 6),
    ),
    Case("gp_register.person.unique", _broken("gp_register", {4: {"nhs_number": NUMBERS[3]}}), 2, (4, 5)),
    Case("gp_register.birth_year.plausible", _broken("gp_register", {6: {"date_of_birth": "1880-05-05"}}), 1, (7,)),
    Case(
        "gp_register.dates.not_after_period_end",
        _broken("gp_register", {0: {"registration_start_date": "2025-10-01"}}),
        1,
        (1,),
    ),
    Case("gp_register.died_after_birth", _broken("gp_register", {8: {"date_of_death": "1950-09-01"}}), 1, (9,)),
    # cld -------------------------------------------------------------------------------------------------
    Case(
        "cld.nhs_number.valid_share_floor",
        _broken("cld", {i: {"NHS_Number": ""} for i in range(8)}),
        8,
        (1, 2, 3, 4, 5),
    ),
    Case(
        "cld.rows.loaded_share",
        _broken("cld", {1: {"Event_Start_Date": "2025-02-30"}, 6: {"Event_Type": ""}}),
        2,
        (2, 7),
    ),
    Case("cld.event.unique_in_file", lambda: GOOD["cld"]() + GOOD["cld"]()[2:3], 2, (3, len(GOOD["cld"]()) + 1)),
    Case("cld.event_type.in_contract", _broken("cld", {4: {"Event_Type": "Referral"}}), 1, (5,)),
    Case(
        "cld.reporting_period.matches_file", _broken("cld", {2: {"Reporting_Period_End_Date": "2025-06-30"}}), 1, (3,)
    ),
    Case("cld.reporting_period_in_order", _broken("cld", {3: {"Reporting_Period_Start_Date": "2025-10-01"}}), 1, (4,)),
    Case("cld.event_ends_after_it_starts", _broken("cld", {0: {"Event_End_Date": "2025-01-01"}}), 1, (1,)),
    Case("cld.dates.not_after_period_end", _broken("cld", {5: {"Event_End_Date": "2025-10-05"}}), 1, (6,)),
    Case("cld.birth_year.plausible", _broken("cld", {7: {"Date_of_Birth": "1880-01-01"}}), 1, (8,)),
    # optouts: counts and quarantined row numbers only (the opt-out list keeps no row numbers) -----------
    Case(
        "optouts.rows.loaded_share",  # 6 of 10 numbers mangled (one cut short): a garbled list
        _broken(
            "optouts",
            {**{i: {"nhs_number": _invalid(NUMBERS[360 + i])} for i in range(1, 6)}, 8: {"nhs_number": "12345"}},
        ),
        6,
        (2, 3, 4, 5, 6),
    ),
    # ref_postcode_lookup ---------------------------------------------------------------------------------
    Case("ref_postcode_lookup.rows.loaded_share", _broken("ref_postcode_lookup", {5: {"locality_code": ""}}), 1, (6,)),
    Case("ref_postcode_lookup.lsoa_code.format", _broken("ref_postcode_lookup", {0: {"lsoa_code": "X01021000"}}), 1),
    Case(
        "ref_postcode_lookup.locality_code.format",
        _broken("ref_postcode_lookup", {i: {"locality_code": "NOT A CODE"} for i in range(4)}),
        4,
    ),
    Case(
        "ref_postcode_lookup.lsoa_in_one_locality",
        _broken("ref_postcode_lookup", {1: {"locality_code": "E07000071"}}),
        4,
    ),
    # a district's code (E07, lower tier) where the council's belongs
    Case(
        "ref_postcode_lookup.la_code.format",
        _broken("ref_postcode_lookup", {i: {"la_code": "E07000070"} for i in range(12)}),
        12,
    ),
    # postcode 2 (LSOA E01021000, locality E07000070) put in Thurrock: its LSOA (rows 1-4) and its locality
    # (the even LSOAs: rows 1-4 and 9-12) would each be in two councils
    Case(
        "ref_postcode_lookup.locality_in_one_council", _broken("ref_postcode_lookup", {1: {"la_code": "E06000034"}}), 8
    ),
    # ref_population ---------------------------------------------------------------------------------------
    Case(
        "ref_population.rows.loaded_share",
        _broken("ref_population", {10: {"population": "x"}, 20: {"age": "-1"}}),
        2,
        (11, 21),
    ),
    Case("ref_population.sex.in_contract", _broken("ref_population", {0: {"sex": "M"}}), 1),
    Case(
        "ref_population.lsoa_code.format",
        _broken("ref_population", {i: {"lsoa_code": "E0102100"} for i in range(182)}),
        182,
    ),
    Case("ref_population.cell.unique", lambda: _population() + [_population()[5]], 2),
    Case("ref_population.age.in_range", _broken("ref_population", {100: {"age": "95"}}), 1),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.rule)
def test_a_file_that_breaks_an_error_rule_is_refused_with_the_rule_rows_and_no_value(stage, case):
    from pophealth.quality.validation import SUMMARY_FAILURES

    rows = case.rows()
    load_id = stage(case.feed, rows)
    message = _gate(load_id)
    assert message is not None, f"{case.rule}: the gate passed"
    recorded = _recorded(load_id)
    errors = {k for k, r in recorded.items() if r["status"] == "failed" and r["severity"] == "error"}
    assert errors == {case.rule}, message
    rule = recorded[case.rule]
    assert rule["unexpected_count"] == case.count, message
    assert rule["example_rows"] == list(case.examples), message
    # One screen: the file, the rule, its severity, how many rows, the threshold, example row numbers.
    assert "QUALITY GATE FAILED" in message and FILE_NAMES[case.feed] in message
    assert f"FAILED [error] {case.rule}:" in message
    assert f"{case.count:,} of " in message and rule["threshold"] in message
    if case.examples:
        assert "example rows (1 = first data row): " + ", ".join(map(str, case.examples)) in message
    assert len(message.splitlines()) <= 2 + 2 * SUMMARY_FAILURES + 8
    _assert_no_value_of(rows, message)
    _assert_no_value_of(rows, repr(recorded))
    _assert_refused(load_id, case.feed)


# ----------------------------------------------------------------------------------------------------------
# Every warn rule: the load goes on, the warning is recorded


WARN_CASES = [
    Case("apc.nhs_number.present", _broken("apc", {4: {"nhs_number": ""}}), 1, (5,)),
    Case("apc.primary_diagnosis.present", _broken("apc", {8: {"diag_01": ""}}), 1, (9,)),
    Case("apc.nhs_number.valid_share", _broken("apc", {6: {"nhs_number": _invalid(NUMBERS[6])}}), 1, (7,)),
    Case("apc.admission_source.in_contract", _broken("apc", {2: {"admisorc": "77"}}), 1, (3,)),
    Case("apc.patient_classification.in_contract", _broken("apc", {2: {"classpat": "7"}}), 1, (3,)),
    Case("apc.nhs_number_status.in_contract", _broken("apc", {2: {"nhs_number_status": "09"}}), 1, (3,)),
    Case("apc.sex.in_contract", _broken("apc", {2: {"sex": "3"}}), 1, (3,)),
    Case("apc.primary_diagnosis.icd10_format", _broken("apc", {2: {"diag_01": "FALL"}}), 1, (3,)),
    Case(
        "apc.one_first_episode_per_spell",  # a second first episode of spell S7 (same person, same admission)
        _broken(
            "apc",
            {
                8: {
                    "spell_id": "S7",
                    "nhs_number": NUMBERS[7],
                    "admidate": "2025-09-08",
                    "epistart": "2025-09-08",
                    "epiend": "2025-09-10",
                    "disdate": "2025-09-10",
                }
            },
        ),
        2,
        (8, 9),
    ),
    Case("apc.discharge_ready_before_discharge", _broken("apc", {4: {"discharge_ready_date": "2025-09-20"}}), 1, (5,)),
    Case("gp_register.area.known", _broken("gp_register", {1: {"postcode": "ZZ9 9ZZ"}}), 1, (2,)),
    Case(
        "gp_register.nhs_number.valid_share",  # 1 of 50 quarantined: 98% valid, above the error floor
        lambda: _changed([_register(i) for i in range(50)], {9: {"nhs_number": ""}}),
        1,
        (10,),
    ),
    Case("gp_register.sex.in_contract", _broken("gp_register", {2: {"sex": "3"}}), 1, (3,)),
    Case("gp_register.practice_code.ods_format", _broken("gp_register", {2: {"gp_practice_code": "ABC"}}), 1, (3,)),
    Case(
        "gp_register.registration_end.not_after_period_end",  # a planned deduction
        _broken("gp_register", {3: {"registration_end_date": "2025-12-31"}}),
        1,
        (4,),
    ),
    Case(
        "gp_register.registration_in_order",
        _broken("gp_register", {3: {"registration_end_date": "1999-01-01"}}),
        1,
        (4,),
    ),
    Case("cld.nhs_number.present", _broken("cld", {i: {"NHS_Number": ""} for i in range(5)}), 5, (1, 2, 3, 4, 5)),
    Case("cld.event_details.present", _broken("cld", {4: {"Request_Route_of_Access": ""}}), 1, (5,)),
    Case(
        "cld.nhs_number.valid_share",
        _broken("cld", {i: {"NHS_Number": _invalid(NUMBERS[i])} for i in range(5)}),
        5,
        (1, 2, 3, 4, 5),
    ),
    Case("cld.client_type.in_contract", _broken("cld", {3: {"Client_Type": "Client"}}), 1, (4,)),
    Case("cld.event_outcome.in_contract", _broken("cld", {3: {"Event_Outcome": "Gone fishing"}}), 1, (4,)),
    Case(
        "cld.request_route.in_contract", _broken("cld", {0: {"Request_Route_of_Access": "By carrier pigeon"}}), 1, (1,)
    ),
    Case(
        "cld.assessment_type.in_contract", _broken("cld", {1: {"Assessment_Type": "Medium term assessment"}}), 1, (2,)
    ),
    Case("cld.service_type.in_contract", _broken("cld", {2: {"Service_Type": "Long term support: Holiday"}}), 1, (3,)),
    Case("cld.delivery_mechanism.in_contract", _broken("cld", {2: {"Delivery_Mechanism": "Cash"}}), 1, (3,)),
    Case("cld.event_starts_by_death", _broken("cld", {5: {"Date_of_Death": "2025-01-01"}}), 1, (6,)),
    Case("cld.unit_cost.non_negative", _broken("cld", {6: {"Unit_Cost": "-5"}}), 1, (7,)),
    Case("cld.planned_units.within_week", _broken("cld", {6: {"Planned_units_per_week": "200"}}), 1, (7,)),
    Case(
        "optouts.nhs_number.valid_share",
        lambda: _changed([_optout(360 + i) for i in range(20)], {4: {"nhs_number": _invalid(NUMBERS[364])}}),
        1,
        (5,),
    ),
    Case("optouts.person.unique", _broken("optouts", {3: {"nhs_number": NUMBERS[362]}}), 2),
    Case("ref_postcode_lookup.locality_name.present", _broken("ref_postcode_lookup", {3: {"locality_name": ""}}), 1),
    Case("ref_postcode_lookup.la_code.on_every_row", _broken("ref_postcode_lookup", {3: {"la_code": ""}}), 1),
    Case("ref_population.lsoa.in_lookup", lambda: _population("E01099999"), 182),
    Case("ref_population.grid.complete", lambda: _population()[:-1], 181),
]


@pytest.mark.parametrize("case", WARN_CASES, ids=lambda c: c.rule)
def test_a_file_that_breaks_a_warn_rule_is_loaded_and_the_warning_recorded(stage, case):
    load_id = stage(case.feed, case.rows())
    message = _gate(load_id)
    assert message is None, message
    recorded = _recorded(load_id)
    assert not [k for k, r in recorded.items() if r["status"] == "failed" and r["severity"] == "error"]
    rule = recorded[case.rule]
    assert (rule["status"], rule["severity"]) == ("failed", "warn")
    assert rule["unexpected_count"] == case.count
    assert rule["example_rows"] == list(case.examples)
    ((status,),) = _query("SELECT status FROM audit.load WHERE load_id = %s", (load_id,))
    assert status == "validated"  # the gate let it through: the publish task runs next


def test_every_rule_of_the_registry_has_a_case_here():
    from pophealth.quality.rules import load_rules

    rules = load_rules()
    errors = {r.id for r in rules if r.severity == "error"}
    warns = {r.id for r in rules if r.severity == "warn"}
    volume = {r.id for r in rules if r.row_count is not None and r.row_count.baseline == "previous_load"}
    assert {c.rule for c in ERROR_CASES} | volume == errors
    assert {c.rule for c in WARN_CASES} == warns
    assert {r.feed for r in rules if r.id in volume} == set(LOAD_ORDER)


# ----------------------------------------------------------------------------------------------------------
# A good file passes every rule


@pytest.mark.parametrize("feed", list(GOOD))
def test_a_good_file_passes_every_rule_and_every_result_is_recorded(stage, feed):
    from pophealth.quality import gates
    from pophealth.quality.data_docs import data_docs_index

    load_id = stage(feed, GOOD[feed]())
    outcome = gates.run_load_gate(load_id, feed, f"load_batch.load_{load_id}", run_id="run-good")
    assert outcome.passed and not outcome.failures(), outcome.summary()
    recorded = _recorded(load_id)
    assert set(recorded) == {rule.id for rule in gates.checks_for(feed)}
    skipped = {k for k, r in recorded.items() if r["status"] == "not_applicable"}
    assert skipped == {f"{feed}.volume.within_band"}  # nothing to compare with: no earlier delivery
    for check_id, row in recorded.items():
        assert row["run_id"] == "run-good" and row["suite"] == f"{feed}_load"
        assert row["example_rows"] == [] and row["threshold"], check_id
    assert f"{FILE_NAMES[feed]} (load {load_id}): {feed} suite:" in outcome.summary()
    assert "0 failed" in outcome.summary()
    # Great Expectations' Data Docs: a page for this validation, listed in the site's index.
    index = data_docs_index()
    assert str(index) in outcome.summary() and index.is_file()
    pages = [
        p for p in (index.parent / "validations").rglob("*.html") if p.name.endswith(f"load_batch.load_{load_id}.html")
    ]
    assert len(pages) == 1 and f"load_batch.load_{load_id}" in index.read_text()


def test_a_thurrock_lookup_with_its_own_locality_codes_passes_every_rule(stage):
    """Thurrock plans by its four integrated locality areas, not ONS districts (contract v2): such a lookup
    failed ref_postcode_lookup.locality_code.format before (E06-E09 and six digits only)."""
    from pophealth.quality import gates

    areas = ["GRAYS", "TILBURY", "STANFORD-LE-HOPE", "AVELEY_OCKENDON"]
    rows = [
        dict(
            postcode=f"RM{i // 10 + 1} {i % 10}TT",
            lsoa_code=f"E01{22000 + i // 2:06d}",
            locality_code=areas[(i // 2) % 4],
            locality_name=areas[(i // 2) % 4].title(),
            la_code="E06000034",
        )
        for i in range(16)
    ]
    load_id = stage("ref_postcode_lookup", rows)
    outcome = gates.run_load_gate(load_id, "ref_postcode_lookup", f"load_batch.load_{load_id}", run_id="run-thurrock")
    assert outcome.passed and not outcome.failures(), outcome.summary()
    recorded = _recorded(load_id)
    for rule in (
        "ref_postcode_lookup.locality_code.format",
        "ref_postcode_lookup.lsoa_in_one_locality",
        "ref_postcode_lookup.la_code.format",
        "ref_postcode_lookup.locality_in_one_council",
    ):
        assert recorded[rule]["status"] == "passed", rule


def test_a_lookup_without_la_code_is_one_councils_area_and_its_council_rules_do_not_apply(stage):
    from pophealth.quality import gates

    load_id = stage("ref_postcode_lookup", [{**_postcode(i), "la_code": ""} for i in range(12)])
    outcome = gates.run_load_gate(load_id, "ref_postcode_lookup", f"load_batch.load_{load_id}", run_id="run-no-la")
    assert outcome.passed, outcome.summary()
    recorded = _recorded(load_id)
    assert recorded["ref_postcode_lookup.la_code.format"]["status"] == "not_applicable"
    assert recorded["ref_postcode_lookup.la_code.on_every_row"]["status"] == "not_applicable"


def test_a_rule_on_a_column_empty_in_the_whole_file_is_not_applicable(stage):
    from pophealth.quality import gates

    load_id = stage("apc", [_apc(i, discharge_ready_date="", epiend="") for i in range(10)])
    outcome = gates.run_load_gate(load_id, "apc", f"load_batch.load_{load_id}", run_id="run-empty")
    assert outcome.passed
    status = {r.check_id: r.status for r in outcome.results}
    assert status["apc.discharge_ready_before_discharge"] == "not_applicable"
    assert status["apc.episode_ends_after_it_starts"] == "not_applicable"
    assert status["apc.episode_ends_by_discharge"] == "not_applicable"
    assert status["apc.discharge_after_admission"] == "passed"
    recorded = _recorded(load_id)
    assert recorded["apc.discharge_ready_before_discharge"]["status"] == "not_applicable"
    assert recorded["apc.discharge_ready_before_discharge"]["unexpected_count"] is None
    assert recorded["apc.discharge_ready_before_discharge"]["observed"] == "column empty in this file"
    empty_line = next(line for line in outcome.summary().splitlines() if "(column empty in this file)" in line)
    assert "apc.discharge_ready_before_discharge" in empty_line and "apc.episode_ends_by_discharge" in empty_line


def test_a_many_rule_failure_stays_one_screen(stage):
    from pophealth.quality.validation import SUMMARY_FAILURES

    rows = _changed(
        GOOD["apc"](),
        {
            0: {
                "admimeth": "XX",
                "dismeth": "X",
                "disdest": "00",
                "admisorc": "77",
                "classpat": "7",
                "sex": "3",
                "nhs_number_status": "09",
                "diag_01": "FALL",
                "epiorder": "100",
                "date_of_birth": "1880-01-01",
            },
            1: {"epistart": "2025-09-01", "epiend": "2025-08-01", "discharge_ready_date": "2025-09-30"},
            2: {"epikey": "E1", "nhs_number": DEAD},
        },
    )
    load_id = stage("apc", rows)
    message = _gate(load_id)
    assert message is not None
    failed = [k for k, r in _recorded(load_id).items() if r["status"] == "failed"]
    assert len(failed) > SUMMARY_FAILURES
    assert len(message.splitlines()) <= 2 + 2 * SUMMARY_FAILURES + 8
    assert f"and {len(failed) - SUMMARY_FAILURES} more failed rules (audit.gate_result)" in message
    _assert_no_value_of(rows, message)
    _assert_refused(load_id, "apc")


# ----------------------------------------------------------------------------------------------------------
# The volume band: a second delivery with half the rows of the first is a failed extract


VOLUME = {
    # feed: (file name pattern, first and second period, rows of the first delivery, rows of a delivery)
    "apc": (
        "apc_RDE_{}.csv",
        ("20250930", "20251031"),
        60,
        lambda n, period: [_apc(i, provider="RDE", **_in_month(i, period)) for i in range(n)],
    ),
    "gp_register": (
        "gp_register_{}.csv",
        ("20250831", "20250930"),
        120,
        lambda n, _: [_register(100 + i) for i in range(n)],
    ),
    "cld": (
        "cld_E10000012_{}.csv",
        ("20250630", "20250930"),
        60,
        lambda n, period: [_cld(i, period=f"{period[:4]}-{period[4:6]}-{period[6:]}") for i in range(n)],
    ),
    "optouts": ("optouts_{}.csv", ("20251130", "20251231"), 60, lambda n, _: [_optout(300 + i) for i in range(n)]),
    "ref_postcode_lookup": ("ref_postcode_lookup.csv", ("", ""), 120, lambda n, _: [_postcode(i) for i in range(n)]),
    "ref_population": ("ref_population_{}.csv", ("2024", "2025"), 182, lambda n, _: _population()[:n]),
}


@pytest.fixture
def retire_loads(warehouse, tmp_path):
    """Afterwards, make the loads a test published no longer the previous delivery of their source, so that
    no other test compares its file with them; the opt-out list is restored by publishing it again."""
    from pophealth.ingest.load import publish_load, stage_extract
    from pophealth.warehouse import db

    ((first,),) = _query("SELECT coalesce(max(load_id), 0) FROM audit.load")
    yield
    with db.connect() as conn:
        feeds = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT feed FROM audit.load WHERE load_id > %s AND status = 'published'", (first,)
            )
        ]
        conn.execute(
            "UPDATE audit.load SET status = 'superseded' WHERE load_id > %s AND status = 'published' "
            "AND feed <> 'optouts'",
            (first,),
        )
    if "optouts" in feeds:
        # A list dated after the one in force (an older one would be refused as stale).
        ((latest,),) = _query("SELECT max(period_end) FROM audit.load WHERE feed = 'optouts' AND status = 'published'")
        folder = _landing(tmp_path / "restore")
        path = _write(folder / f"optouts_{latest + timedelta(days=1):%Y%m%d}.csv", HEADERS["optouts"], [_optout(399)])
        publish_load(stage_extract(path, "gates-restore").load_id)


@pytest.mark.parametrize("feed", LOAD_ORDER)
def test_a_second_delivery_with_half_the_rows_fails_the_volume_band(stage, retire_loads, feed):
    from pophealth.ingest.load import publish_load

    pattern, periods, size, rows_of = VOLUME[feed]
    rule = f"{feed}.volume.within_band"
    first = stage(feed, rows_of(size, periods[0]), pattern.format(periods[0]))
    assert _gate(first) is None
    volume = _recorded(first)[rule]
    assert volume["status"] == "not_applicable"  # a first delivery has nothing to compare with
    assert volume["observed"].startswith(("no previous published or staged load", "the previous load has"))
    publish_load(first)

    rows = rows_of(size // 2, periods[1])
    second = stage(feed, rows, pattern.format(periods[1]))
    message = _gate(second)
    assert message is not None, f"{rule}: half the rows passed"
    recorded = _recorded(second)
    assert {k for k, r in recorded.items() if r["status"] == "failed" and r["severity"] == "error"} == {rule}
    assert recorded[rule]["observed_number"] == size // 2
    assert f"FAILED [error] {rule}:" in message
    assert f"observed {size // 2:,} rows (50% of {size:,})" in message
    assert f"previous published load of {feed}" in message and f"(load {first}" in message
    _assert_no_value_of(rows, message)
    _assert_refused(second, feed)


def test_a_second_delivery_within_the_band_passes(stage, retire_loads):
    from pophealth.ingest.load import publish_load

    first = stage("apc", [_apc(i, provider="RQW") for i in range(60)], "apc_RQW_20250930.csv")
    assert _gate(first) is None
    publish_load(first)
    second = stage(
        "apc", [_apc(i, provider="RQW", **_in_month(i, "20251031")) for i in range(45)], "apc_RQW_20251031.csv"
    )  # 75%
    assert _gate(second) is None
    volume = _recorded(second)["apc.volume.within_band"]
    assert volume["status"] == "passed" and volume["observed_number"] == 45
    assert volume["threshold"].startswith(
        "rows between 60% and 200% of the 60 rows of the previous published "
        f"load of apc RQW (load {first}, period ending 2025-09-30), so 36 to 120"
    )


def test_a_monthly_file_after_an_annual_one_is_compared_with_a_months_share_of_it(stage, retire_loads):
    from pophealth.ingest.load import publish_load

    # A year to September 2025, 50 episodes a month; then October with 50 (passes) or 20 (40%: fails).
    year = [
        _apc(
            i % 60,
            provider="RQW",
            epikey=f"Y{i}",
            spell_id=f"Y{i}",
            **_in_month(i, f"{2024 + (9 + i // 50 >= 12)}{(9 + i // 50) % 12 + 1:02d}01"),
        )
        for i in range(600)
    ]
    first = stage("apc", year, "apc_RQW_20250930.csv")
    assert _query("SELECT covers_from::text, covers_to::text FROM audit.load WHERE load_id = %s", (first,)) == [
        ("2024-10-01", "2025-09-30")
    ]
    assert _gate(first) is None
    publish_load(first)
    october = stage(
        "apc", [_apc(i, provider="RQW", **_in_month(i, "20251031")) for i in range(50)], "apc_RQW_20251031.csv"
    )
    assert _gate(october) is None  # not "8% of the last load"
    volume = _recorded(october)["apc.volume.within_band"]
    assert volume["status"] == "passed" and volume["observed_number"] == 50
    assert "12 months, scaled to the 1 month this file covers" in volume["threshold"]
    assert "so 30 to 100" in volume["threshold"]
    short = stage(
        "apc", [_apc(i, provider="RQW", **_in_month(i, "20251031")) for i in range(20)], "apc_RQW_20251031.csv"
    )
    assert "FAILED [error] apc.volume.within_band:" in (_gate(short) or "")


# A backfill: every month of a source staged in one run before any is published. Each month is compared with the
# month before as staged by the same run; a load another run staged and never published is no baseline.


def _stage_in_run(tmp_path, run_id: str, name: str, rows: list[dict]) -> int:
    from pophealth.ingest.load import stage_extract

    folder = _landing(tmp_path / f"landing{next(_folders)}")
    outcome = stage_extract(_write(folder / name, HEADERS["apc"], rows), run_id)
    assert outcome.status == "validated"
    return outcome.load_id


def _month(n: int, period: str, provider: str = "RQW") -> list[dict]:
    return [
        _apc(i % 60, provider=provider, epikey=f"B{period}{i}", spell_id=f"B{period}{i}", **_in_month(i, period))
        for i in range(n)
    ]


def test_a_backfilled_month_is_compared_with_the_month_before_staged_in_the_same_run(warehouse, tmp_path, retire_loads):
    january = _stage_in_run(tmp_path, "backfill-1", "apc_RQW_20260131.csv", _month(80, "20260131"))
    february = _stage_in_run(tmp_path, "backfill-1", "apc_RQW_20260228.csv", _month(60, "20260228"))
    march = _stage_in_run(tmp_path, "backfill-1", "apc_RQW_20260331.csv", _month(30, "20260331"))  # truncated
    assert _gate(january) is None
    assert _recorded(january)["apc.volume.within_band"]["status"] == "not_applicable"
    assert _gate(february) is None  # 60 of 80: 75%, within 60% to 200%
    volume = _recorded(february)["apc.volume.within_band"]
    assert volume["status"] == "passed" and volume["observed_number"] == 60
    assert volume["threshold"].startswith(
        "rows between 60% and 200% of the 80 rows of the previous load of apc RQW "
        f"staged in this run (load {january}, period ending 2026-01-31), "
        "so 48 to 160"
    )
    message = _gate(march)  # 30 of 60: 50%, the truncated file the rule is there for, caught before publication
    assert message is not None and "FAILED [error] apc.volume.within_band:" in message
    assert f"(load {february}, period ending 2026-02-28)" in message


def test_a_load_staged_by_another_run_and_never_published_is_no_baseline(warehouse, tmp_path, retire_loads):
    _stage_in_run(tmp_path, "abandoned-run", "apc_RDE_20260131.csv", _month(60, "20260131", "RDE"))
    april = _stage_in_run(tmp_path, "later-run", "apc_RDE_20260430.csv", _month(20, "20260430", "RDE"))
    assert _gate(april) is None
    volume = _recorded(april)["apc.volume.within_band"]
    assert volume["status"] == "not_applicable"
    assert volume["observed"] == "no previous published or staged load of apc RDE"


# ----------------------------------------------------------------------------------------------------------
# One query for every rule: what Great Expectations would say, without its validation on a file that passes


def _measured_and_validated(load_id: int, feed: str) -> tuple[list, dict]:
    """The gate's one query (validation.measure) and Great Expectations' own validation, on the same staged file, for
    every rule of its feed but the volume rules (their bounds are the gate's, measured by GE as a row count)."""
    from psycopg import sql

    from pophealth.quality import gates, validation
    from pophealth.warehouse import db

    table = sql.Identifier("load_batch", f"load_{load_id}")
    with db.connect() as conn:
        ctx = gates.LoadContext.of(conn, load_id, feed)
        rules = [gates._bound(rule, ctx) for rule in gates.checks_for(feed) if rule.row_count is None]
        columns = sorted({c for rule in rules for c in rule.columns})
        counts = conn.execute(
            sql.SQL("SELECT count(*){} FROM {}").format(
                sql.SQL("").join(sql.SQL(", count({})").format(sql.Identifier(c)) for c in columns), table
            )
        ).fetchone()
        measured = validation.measure(conn, table, rules, counts[0], dict(zip(columns, counts[1:], strict=True)))
    assert measured is not None, f"{feed}: a rule of the registry is not measured by the one query"
    validated = validation.validate("load_batch", f"load_{load_id}", "measure_test", rules)
    return list(zip(rules, measured, strict=True)), validated


_WITHIN_TOLERANCE = [
    # 1 of 40 episodes without an NHS number: 2.5%, within the 5% apc.nhs_number.present allows (a pass that counts).
    ("apc", lambda: _changed([_apc(i) for i in range(40)], {3: {"nhs_number": ""}})),
    # 1 of 20: exactly 5%, on the threshold (GE: the share passing >= mostly).
    ("apc", lambda: _changed([_apc(i) for i in range(20)], {3: {"nhs_number": ""}})),
]


@pytest.mark.parametrize(
    "feed, rows",
    [(feed, GOOD[feed]) for feed in GOOD]
    + _WITHIN_TOLERANCE
    + [(case.feed, case.rows) for case in ERROR_CASES + WARN_CASES if case.feed in GOOD],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_one_query_judges_each_rule_as_great_expectations_does(stage, feed, rows):
    """A file whose rules all pass in the one query is not validated by GE again (its results are the query's): so a
    rule the query passes must pass in GE, with the same counts. A rule it fails sends the file to GE: it may fail
    only what GE fails, except a pair or compound rule with failing rows, which it leaves to GE's finer accounting."""
    # An opt-out list dated after any other test's: an older one than the list in force is refused as stale.
    load_id = stage(feed, rows(), "optouts_20271231.csv" if feed == "optouts" else None)
    measured, validated = _measured_and_validated(load_id, feed)
    for rule, m in measured:
        ge = validated[rule.id]
        counted = (ge.result or {}).get("unexpected_count", (ge.result or {}).get("observed_value"))
        found = m.result.get("unexpected_count", m.result.get("observed_value"))
        assert found == counted, f"{rule.id}: the query counts {found}, Great Expectations {counted}"
        if m.success or rule.expectation not in (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            "ExpectCompoundColumnsToBeUnique",
        ):
            assert m.success == ge.success, f"{rule.id}: the query says {m.success}, Great Expectations {ge.success}"


def test_a_file_within_its_tolerances_passes_on_the_one_query_with_its_counts_and_its_page(stage):
    """The good path: every rule passes in the one query; the counts of the rule failing within its tolerance are
    recorded as Great Expectations records them, and the Data Docs site has the file's page."""
    from pophealth.quality import gates
    from pophealth.quality.data_docs import data_docs_index

    load_id = stage("apc", _WITHIN_TOLERANCE[0][1]())
    outcome = gates.run_load_gate(load_id, "apc", f"load_batch.load_{load_id}", run_id="run-tolerance")
    assert outcome.passed and not outcome.failures(), outcome.summary()
    present = _recorded(load_id)["apc.nhs_number.present"]
    assert present["status"] == "passed" and present["unexpected_count"] == 1
    assert present["observed"] == "1 unexpected (2.50%)" and present["example_rows"] == []
    index = data_docs_index()
    assert f"load_batch.load_{load_id}" in index.read_text()


def test_of_five_files_gated_in_turn_only_the_third_which_breaks_a_rule_is_refused_with_its_message(stage):
    """Five monthly files of one trust gated in turn, as a load task gates its files: the four good ones pass on the
    one query, each with its own results and Data Docs page; the third, with an admission method outside the
    contract, goes to Great Expectations and is refused with the rule, its row and no value."""
    from pophealth.quality import gates
    from pophealth.quality.data_docs import data_docs_index

    periods = ("20270131", "20270228", "20270331", "20270430", "20270531")
    files = []
    for n, period in enumerate(periods):
        rows = [_apc(i, provider="RAJ", **_in_month(i, period)) for i in range(30)]
        if n == 2:
            rows = _changed(rows, {3: {"admimeth": "XX"}})
        files.append((stage("apc", rows, f"apc_RAJ_{period}.csv"), rows))
    messages = [_gate(load_id) for load_id, _ in files]
    assert [m is None for m in messages] == [True, True, False, True, True], messages
    refused, rows = files[2]
    message = messages[2] or ""
    assert "QUALITY GATE FAILED for apc_RAJ_20270331.csv" in message
    assert "FAILED [error] apc.admission_method.in_contract:" in message
    assert "1 of 30 rows" in message and "example rows (1 = first data row): 4" in message
    _assert_no_value_of(rows, message)
    _assert_refused(refused, "apc")
    index = data_docs_index().read_text()
    for load_id, _ in files:
        recorded = _recorded(load_id)
        assert set(recorded) == {rule.id for rule in gates.checks_for("apc")}
        failed = {k for k, r in recorded.items() if r["status"] == "failed"}
        assert failed == ({"apc.admission_method.in_contract"} if load_id == refused else set()), load_id
        assert f"load_batch.load_{load_id}" in index


def _linked_page(index: str, load_id: int) -> Path:
    """The page the Data Docs index links for the load's validation."""
    from urllib.parse import unquote

    from pophealth.quality.data_docs import data_docs_index

    links = re.findall(rf'href="(validations/[^"]*/warehouse-load_batch\.load_{load_id}\.html)"', index)
    assert len(links) == 1, f"load {load_id}: {links}"
    return data_docs_index().parent / unquote(links[0])


def test_the_index_links_the_gate_s_own_page_for_a_passing_file_and_great_expectations_for_a_refused_one(stage):
    """A file whose rules all pass in the one query has the gate's own page (what each rule checked and counted, no
    value from the file); a refused file, validated by Great Expectations, keeps GE's page with its detail."""
    from pophealth.quality import gates
    from pophealth.quality.data_docs import data_docs_index

    good_rows = [_apc(i, provider="RAJ", **_in_month(i, "20270630")) for i in range(30)]
    bad_rows = _changed(
        [_apc(i, provider="RAJ", **_in_month(i, "20270731")) for i in range(30)], {5: {"admimeth": "XX"}}
    )
    good = stage("apc", good_rows, "apc_RAJ_20270630.csv")
    assert gates.run_load_gate(good, "apc", f"load_batch.load_{good}").passed
    bad = stage("apc", bad_rows, "apc_RAJ_20270731.csv")
    assert not gates.run_load_gate(bad, "apc", f"load_batch.load_{bad}").passed
    index = data_docs_index().read_text()
    assert index.index(f"load_batch.load_{bad}.html") < index.index(f"load_batch.load_{good}.html"), "newest first"

    own = _linked_page(index, good).read_text()
    assert "Measured by the gate's one SQL query" in own and "apc_RAJ_20270630.csv" in own
    ran = [k for k, r in _recorded(good).items() if r["status"] != "not_applicable"]
    assert f"{len(ran)} of {len(ran)} rules passed" in own and all(f"<td>{k}</td>" in own for k in ran)
    _assert_no_value_of(good_rows, own)

    ge_page = _linked_page(index, bad).read_text()
    assert "Measured by the gate's one SQL query" not in ge_page
    assert "great_expectations" in ge_page.lower() or "Great Expectations" in ge_page  # rendered by GE
    assert "expect_column_values_to_be_in_set" in ge_page or "values must belong to this set" in ge_page
    _assert_no_value_of(bad_rows, ge_page)
    row = re.search(rf"<tr>((?:(?!</tr>).)*load_batch\.load_{bad}\.html(?:(?!</tr>).)*)</tr>", index, re.S)
    assert row and "failed" in row.group(1) and "Great Expectations" in row.group(1)


def test_a_passing_file_s_gate_does_not_import_great_expectations(stage):
    """Importing Great Expectations costs seconds per process (each Airflow task is one): a file whose every rule passes
    in the one query is gated, its results and page kept, without it."""
    import subprocess
    import sys

    load_id = stage(
        "apc", [_apc(i, provider="RAJ", **_in_month(i, "20270831")) for i in range(20)], "apc_RAJ_20270831.csv"
    )
    check = (
        "import sys\n"
        "from pophealth.quality import gates\n"
        "from pophealth.quality.data_docs import data_docs_once\n"
        "with data_docs_once():\n"
        f"    outcome = gates.run_load_gate({load_id}, 'apc', 'load_batch.load_{load_id}', run_id='run-no-ge')\n"
        "assert outcome.passed, outcome.summary()\n"
        "imported = sorted(m for m in sys.modules if m.split('.')[0] == 'great_expectations')\n"
        "assert not imported, f'imported {imported[:3]}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["run_id"] for r in _recorded(load_id).values()} == {"run-no-ge"}
    from pophealth.quality.data_docs import data_docs_index

    assert _linked_page(data_docs_index().read_text(), load_id).is_file()


def test_a_uniqueness_rule_gathers_the_repeated_values_once_rather_than_per_row(warehouse):
    """Counting the rows whose value repeats (the gate's one query) and naming them (example rows, in a select list):
    each plans the repeated values as a query run once, never as a subquery run again for every row (a SubPlan).
    `count(*) FILTER (WHERE x IN (SELECT ... HAVING count(*) > 1))` was planned so under PostgreSQL's default
    work_mem, and did not end in 90 s on all Essex's 1,438,682 people (issue 19)."""
    from psycopg import sql

    from pophealth.quality import validation
    from pophealth.quality.rules import failing_rows_condition, marts_rules
    from pophealth.warehouse import db

    class Recording:
        """The connection, with every statement it is given kept."""

        def __init__(self, conn):
            self.conn, self.statements = conn, []

        def transaction(self):
            return self.conn.transaction()

        def execute(self, statement, *args):
            self.statements.append(statement)
            return self.conn.execute(statement, *args)

    unique = [r for r in marts_rules().rules if r.expectation == "ExpectColumnValuesToBeUnique"]
    assert unique
    with db.connect() as conn, conn.transaction(force_rollback=True):
        for rule in unique:
            column = sql.Identifier(rule.kwargs["column"])
            conn.execute(sql.SQL("CREATE TEMP TABLE t ({} text)").format(column))
            conn.execute(sql.SQL("INSERT INTO t SELECT g::text FROM generate_series(1, 1000) g UNION ALL SELECT '7'"))
            conn.execute("ANALYZE t")
            conn.execute("SET LOCAL work_mem = '64kB'")  # as tight, for 1,001 rows, as 4MB is for Essex
            recording = Recording(conn)
            measured = validation.measure(recording, sql.Identifier("t"), [rule], 1001, {rule.kwargs["column"]: 1001})
            assert measured is not None and measured[0].result["unexpected_count"] == 2, rule.id
            condition = failing_rows_condition(rule, sql.Identifier("t"))
            named = sql.SQL("SELECT count(*) FILTER (WHERE {}) FROM t").format(condition)
            assert conn.execute(named).fetchone()[0] == 2
            for statement in (recording.statements[-1], named):
                (plan,) = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statement)).fetchone()
                per_row = [
                    n["Subplan Name"] for n in _plan_nodes(plan[0]["Plan"]) if n.get("Parent Relationship") == "SubPlan"
                ]
                assert per_row == [], (rule.id, per_row, statement.as_string(conn))
            conn.execute("DROP TABLE t")


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)
