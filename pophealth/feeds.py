"""Each feed of the extract contract: its columns, and how one row becomes a pseudonymised warehouse row.

A row transform returns the tuple to store (in `Feed.table_columns` order), raises `RowProblem` to
quarantine the row with a reason, or raises `OptedOut`. Identifiable values (NHS number, date of birth,
postcode, local ids) are consumed here and never leave this module in clear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Callable

from pophealth.identifiers import NhsNumber, NhsNumberCheck, PersonId, check_nhs_number
from pophealth.pseudonymise import PostcodeLookup, Pseudonymiser, birth_year_month


class RowProblem(Exception):
    """A row that cannot be loaded as it is: quarantined with this reason (never its value)."""

    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column = column
        self.reason = reason


class OptedOut(Exception):
    """The row belongs to a person with a national data opt-out: removed before anything is stored."""


@dataclass
class RowContext:
    pseudonymiser: Pseudonymiser
    postcodes: PostcodeLookup
    optouts: frozenset[str]
    provider: str | None
    period_end: date | None
    counters: dict[str, int] = field(default_factory=lambda: {"test_range": 0, "unlinked": 0})


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _text(row: dict[str, str], column: str) -> str | None:
    value = row.get(column)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _required(row: dict[str, str], column: str) -> str:
    value = _text(row, column)
    if value is None:
        raise RowProblem(column, "required value is missing")
    return value


def _date(row: dict[str, str], column: str, required: bool = False) -> date | None:
    value = _text(row, column)
    if value is None:
        if required:
            raise RowProblem(column, "required date is missing")
        return None
    if not _ISO_DATE.match(value):
        raise RowProblem(column, "date is not in ISO YYYY-MM-DD form")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RowProblem(column, "date does not exist in the calendar") from None


def _int(row: dict[str, str], column: str, required: bool = False) -> int | None:
    value = _text(row, column)
    if value is None:
        if required:
            raise RowProblem(column, "required number is missing")
        return None
    if not value.isdigit():
        raise RowProblem(column, "not a whole number")
    return int(value)


def _decimal(row: dict[str, str], column: str) -> Decimal | None:
    value = _text(row, column)
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise RowProblem(column, "not a number") from None
    if not number.is_finite():
        raise RowProblem(column, "not a finite number")
    return number


def _identity(row: dict[str, str], ctx: RowContext, column: str) -> tuple[str | None, str]:
    """person_id (or None) and the NHS number check, applying the opt-out list."""
    if column not in row and "person_id" in row:
        # Pseudonymised at source: the source sent the pseudonym itself.
        value = (_text(row, "person_id") or "").lower()
        if not value:
            check, person = NhsNumberCheck.MISSING, None
        elif not _HEX64.match(value):
            raise RowProblem("person_id", "person_id is not 64 hexadecimal characters")
        else:
            check, person = NhsNumberCheck.SOURCE_PSEUDONYM, PersonId(value)
    else:
        raw = row.get(column)
        check = check_nhs_number(raw)
        person = ctx.pseudonymiser.person_id(NhsNumber(raw)) if check.linkable else None
    if person is None:
        ctx.counters["unlinked"] += 1
        return None, check.value
    if person.value in ctx.optouts:
        raise OptedOut()
    if check is NhsNumberCheck.TEST_RANGE:
        ctx.counters["test_range"] += 1
    return person.value, check.value


def _area(row: dict[str, str], ctx: RowContext, column: str) -> tuple[str | None, str | None]:
    area = ctx.postcodes.area(row.get(column))
    return (area.lsoa_code, area.locality_code) if area else (None, None)


def _dob(row: dict[str, str], ctx: RowContext, column: str) -> tuple[int | None, int | None]:
    dob = _date(row, column)
    if dob is not None and ctx.period_end is not None and dob > ctx.period_end:
        raise RowProblem(column, "date of birth is after the extract's period end")
    return birth_year_month(dob)


# ----------------------------------------------------------------------------------------------------------
# gp_register

GP_REGISTER_COLUMNS = (
    "nhs_number", "date_of_birth", "sex", "postcode", "gp_practice_code",
    "registration_start_date", "registration_end_date", "date_of_death",
)


def gp_register_row(row: dict[str, str], ctx: RowContext) -> tuple:
    if check_nhs_number(row.get("nhs_number")) in (NhsNumberCheck.MISSING, NhsNumberCheck.INVALID):
        raise RowProblem("nhs_number", "NHS number missing or invalid, and the register has no local id to follow")
    person_id, check = _identity(row, ctx, "nhs_number")
    birth_year, birth_month = _dob(row, ctx, "date_of_birth")
    lsoa, locality = _area(row, ctx, "postcode")
    return (
        person_id, check, birth_year, birth_month, _text(row, "sex"), lsoa, locality,
        _text(row, "gp_practice_code"), _date(row, "registration_start_date"),
        _date(row, "registration_end_date"), _date(row, "date_of_death"),
    )


# ----------------------------------------------------------------------------------------------------------
# apc

DIAG_COLUMNS = tuple(f"diag_{i:02d}" for i in range(1, 21))
APC_COLUMNS = (
    "epikey", "spell_id", "nhs_number", "nhs_number_status", "date_of_birth", "sex", "postcode",
    "gp_practice_code", "procode", "admidate", "disdate", "epistart", "epiend", "epiorder", "admimeth",
    "admisorc", "disdest", "dismeth", "classpat", "mainspef", "tretspef", *DIAG_COLUMNS, "discharge_ready_date",
)


def apc_row(row: dict[str, str], ctx: RowContext) -> tuple:
    procode = _required(row, "procode").upper()
    if ctx.provider and procode != ctx.provider:
        raise RowProblem("procode", "procode differs from the provider in the file name")
    epikey = _required(row, "epikey")
    spell_id = _required(row, "spell_id")
    admidate = _date(row, "admidate", required=True)
    epistart = _date(row, "epistart", required=True)
    epiorder = _int(row, "epiorder", required=True)
    if epiorder < 1:
        raise RowProblem("epiorder", "epiorder must be 1 or more")
    admimeth = _required(row, "admimeth").upper()
    person_id, check = _identity(row, ctx, "nhs_number")
    birth_year, birth_month = _dob(row, ctx, "date_of_birth")
    lsoa, locality = _area(row, ctx, "postcode")
    return (
        person_id, check,
        ctx.pseudonymiser.local(procode, "episode|" + epikey).value,
        ctx.pseudonymiser.local(procode, "spell|" + spell_id).value,
        _text(row, "nhs_number_status"), birth_year, birth_month, _text(row, "sex"), lsoa, locality,
        _text(row, "gp_practice_code"), procode, admidate, _date(row, "disdate"), epistart, _date(row, "epiend"),
        epiorder, admimeth, _text(row, "admisorc"), _text(row, "disdest"), _text(row, "dismeth"),
        _text(row, "classpat"), _text(row, "mainspef"), _text(row, "tretspef"),
        *(_text(row, c) for c in DIAG_COLUMNS), _date(row, "discharge_ready_date"),
    )


# ----------------------------------------------------------------------------------------------------------
# cld: the contract's column names as sources write them; matched case-insensitively, so the loader holds
# them lower-cased

CLD_CONTRACT_COLUMNS = (
    "LA_Code", "Reporting_Period_Start_Date", "Reporting_Period_End_Date", "Client_Type",
    "LA_Person_Unique_Identifier", "NHS_Number", "Gender", "Ethnicity", "Date_of_Birth", "Date_of_Death",
    "Postcode", "Primary_Support_Reason", "Accommodation_Status", "Event_Type", "Event_Reference",
    "Event_Start_Date", "Event_End_Date", "Event_Outcome", "Request_Route_of_Access", "Assessment_Type",
    "Service_Type", "Service_Component", "Delivery_Mechanism", "Review_Reason", "Unit_Cost",
    "Cost_Frequency_Unit_Type", "Planned_units_per_week",
)
CLD_COLUMNS = tuple(c.lower() for c in CLD_CONTRACT_COLUMNS)


def cld_row(row: dict[str, str], ctx: RowContext) -> tuple:
    la_code = _required(row, "la_code").upper()
    if ctx.provider and la_code != ctx.provider:
        raise RowProblem("la_code", "LA_Code differs from the council in the file name")
    local_id = _required(row, "la_person_unique_identifier")
    period_end = _date(row, "reporting_period_end_date", required=True)
    event_type = _required(row, "event_type")
    event_start = _date(row, "event_start_date", required=True)
    person_id, check = _identity(row, ctx, "nhs_number")
    birth_year, birth_month = _dob(row, ctx, "date_of_birth")
    lsoa, locality = _area(row, ctx, "postcode")
    return (
        person_id, check, ctx.pseudonymiser.local(la_code, "person|" + local_id).value, la_code,
        _date(row, "reporting_period_start_date"), period_end, _text(row, "client_type"), _text(row, "gender"),
        _text(row, "ethnicity"), birth_year, birth_month, _date(row, "date_of_death"), lsoa, locality,
        _text(row, "primary_support_reason"), _text(row, "accommodation_status"), event_type,
        _text(row, "event_reference"), event_start, _date(row, "event_end_date"), _text(row, "event_outcome"),
        _text(row, "request_route_of_access"), _text(row, "assessment_type"), _text(row, "service_type"),
        _text(row, "service_component"), _text(row, "delivery_mechanism"), _text(row, "review_reason"),
        _decimal(row, "unit_cost"), _text(row, "cost_frequency_unit_type"), _decimal(row, "planned_units_per_week"),
    )


# ----------------------------------------------------------------------------------------------------------
# optouts and reference data


def optout_row(row: dict[str, str], ctx: RowContext) -> tuple:
    check = check_nhs_number(row.get("nhs_number"))
    if not check.linkable:
        raise RowProblem("nhs_number", f"NHS number {check.value}: an opt-out cannot be applied without one")
    return (ctx.pseudonymiser.person_id(NhsNumber(row["nhs_number"])).value,)


def postcode_row(row: dict[str, str], ctx: RowContext) -> tuple:
    _required(row, "postcode")
    return (_required(row, "lsoa_code").upper(), _required(row, "locality_code").upper(), _text(row, "locality_name"))


def population_row(row: dict[str, str], ctx: RowContext) -> tuple:
    sex = _required(row, "sex")
    age = _int(row, "age", required=True)
    population = _int(row, "population", required=True)
    return (ctx.period_end.year, _required(row, "lsoa_code").upper(), sex, age, population)


# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feed:
    name: str
    contract_columns: tuple[str, ...]
    required_columns: tuple[str, ...]
    table: str                       # where published rows go
    table_columns: tuple[str, ...]   # what the transform returns, in order
    transform: Callable[[dict[str, str], RowContext], tuple]
    personal: bool                   # opt-outs apply, and a key is needed
    replaces_whole_table: bool = False  # the latest file is the whole truth (opt-out list, reference data)


_IDENTITY_OR_PSEUDONYM = ("nhs_number",)

FEED_SPECS: dict[str, Feed] = {
    "gp_register": Feed(
        "gp_register", GP_REGISTER_COLUMNS, GP_REGISTER_COLUMNS, "raw.gp_register",
        ("person_id", "nhs_number_check", "birth_year", "birth_month", "sex", "lsoa_code", "locality_code",
         "gp_practice_code", "registration_start_date", "registration_end_date", "date_of_death"),
        gp_register_row, personal=True,
    ),
    "apc": Feed(
        "apc", APC_COLUMNS + ("person_id",), tuple(c for c in APC_COLUMNS if c not in ("nhs_number", "nhs_number_status")),
        "raw.apc_episode",
        ("person_id", "nhs_number_check", "episode_key", "spell_key", "nhs_number_status", "birth_year",
         "birth_month", "sex", "lsoa_code", "locality_code", "gp_practice_code", "procode", "admidate", "disdate",
         "epistart", "epiend", "epiorder", "admimeth", "admisorc", "disdest", "dismeth", "classpat", "mainspef",
         "tretspef", *DIAG_COLUMNS, "discharge_ready_date"),
        apc_row, personal=True,
    ),
    "cld": Feed(
        "cld", CLD_COLUMNS + ("person_id",), tuple(c for c in CLD_COLUMNS if c != "nhs_number"), "raw.cld_event",
        ("person_id", "nhs_number_check", "la_person_key", "la_code", "reporting_period_start_date",
         "reporting_period_end_date", "client_type", "gender", "ethnicity", "birth_year", "birth_month",
         "date_of_death", "lsoa_code", "locality_code", "primary_support_reason", "accommodation_status",
         "event_type", "event_reference", "event_start_date", "event_end_date", "event_outcome",
         "request_route_of_access", "assessment_type", "service_type", "service_component", "delivery_mechanism",
         "review_reason", "unit_cost", "cost_frequency_unit_type", "planned_units_per_week"),
        cld_row, personal=True,
    ),
    "optouts": Feed(
        "optouts", ("nhs_number",), ("nhs_number",), "restricted.optout", ("person_id",), optout_row,
        personal=False, replaces_whole_table=True,
    ),
    "ref_postcode_lookup": Feed(
        "ref_postcode_lookup", ("postcode", "lsoa_code", "locality_code", "locality_name"),
        ("postcode", "lsoa_code", "locality_code"), "raw.ref_lsoa", ("lsoa_code", "locality_code", "locality_name"),
        postcode_row, personal=False, replaces_whole_table=True,
    ),
    "ref_population": Feed(
        "ref_population", ("lsoa_code", "sex", "age", "population"), ("lsoa_code", "sex", "age", "population"),
        "raw.ref_population", ("year", "lsoa_code", "sex", "age", "population"), population_row, personal=False,
    ),
}


def identity_columns_present(feed: Feed, columns: list[str]) -> str | None:
    """For a personal feed: None when the file has an NHS number or a source pseudonym column, else the problem."""
    if not feed.personal:
        return None
    nhs_column = "nhs_number"
    if nhs_column in columns or "person_id" in columns:
        return None
    return "missing required column: nhs_number (or person_id when pseudonymised at source)"
