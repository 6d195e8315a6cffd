"""Each feed of the extract contract: its columns, and how one row becomes a pseudonymised warehouse row.

A personal file comes in one of two forms (`at_source.py`): identifiable, as the contract lists it, or
pseudonymised at source (`person_id` and no `nhs_number`). A row of an identifiable file is first made a
pseudonymised row in memory by `at_source.pseudonymise_row`, the function the `pophealth pseudonymise`
command runs at a source, so there is one way to pseudonymise; the transforms below then work on
pseudonymised rows. Values that come pseudonymised from a source are checked here instead.

A row transform returns the row to store, by column of its raw table (`Row`; `Feed.copy_row` makes it
the COPY's row in the declared order), or raises `RowProblem` to quarantine the row with a reason; a row
pseudonymised at source under another linkage key (or that does not say which) raises `FileRejected`,
and the whole file is refused. Identifiable values (NHS number, date of
birth, postcode, local ids) never leave memory in clear.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal, overload

from pophealth.contract.feeds import DIAG_COLUMNS, Feed, Row
from pophealth.contract.identifiers import NhsNumberCheck
from pophealth.identity.pseudonymise import PostcodeLookup, Pseudonymiser, birth_year_month, iso_date, postcode_digest
from pophealth.ingest.at_source import header_problem, pseudonymise_row, source_key_problem
from pophealth.ingest.landing import FileRejected


class RowProblem(Exception):
    """A row that cannot be loaded as it is: quarantined with this reason (never its value)."""

    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass
class RowContext:
    # None for reference data, which has no identifier and needs no key; a feed with identifiers has one
    # (load._stage: no key, no load), and `keyed` says so if it ever has not.
    pseudonymiser: Pseudonymiser | None
    postcodes: PostcodeLookup
    optouts: frozenset[str]
    provider: str | None
    period_end: date | None
    counters: dict[str, int] = field(default_factory=lambda: {"test_range": 0, "unlinked": 0, "opted_out": 0})

    @property
    def keyed(self) -> Pseudonymiser:
        if self.pseudonymiser is None:
            raise FileRejected("this feed's identifiers need the linkage key, and the load has none")
        return self.pseudonymiser


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_YEAR = re.compile(r"^[0-9]{4}$")
_MONTH = re.compile(r"^[0-9]{1,2}$")
_CHECKS = {c.value: c for c in NhsNumberCheck}


#: No field of the contract is longer than a few hundred characters: a longer value is a broken row, not data.
MAX_FIELD_CHARS = 1000


def _text(row: dict[str, str], column: str) -> str | None:
    value = row.get(column)
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_FIELD_CHARS:
        raise RowProblem(column, f"value is longer than {MAX_FIELD_CHARS:,} characters")
    return value or None


def _texts(row: dict[str, str], columns: tuple[str, ...], out: dict[str, object]) -> None:
    """`_text` of each column into `out`, in order (the first too long is the reason): one call for many columns."""
    get = row.get
    for column in columns:
        value = get(column)
        if value is not None:
            value = value.strip()
            if len(value) > MAX_FIELD_CHARS:
                raise RowProblem(column, f"value is longer than {MAX_FIELD_CHARS:,} characters")
        out[column] = value or None


def _required(row: dict[str, str], column: str) -> str:
    value = _text(row, column)
    if value is None:
        raise RowProblem(column, "required value is missing")
    return value


@overload
def _date(row: dict[str, str], column: str, required: Literal[True]) -> date: ...
@overload
def _date(row: dict[str, str], column: str, required: bool = False) -> date | None: ...
def _date(row: dict[str, str], column: str, required: bool = False) -> date | None:
    value = _text(row, column)
    if value is None:
        if required:
            raise RowProblem(column, "required date is missing")
        return None
    try:
        return iso_date(value)
    except ValueError as problem:
        raise RowProblem(column, str(problem)) from None


#: The largest whole number each column holds (PostgreSQL smallint unless said): a larger one is a quarantine
#: reason, not a crash of the load's COPY.
SMALLINT_MAX = 32_767
INTEGER_MAX = 2_147_483_647
_WHOLE = re.compile(r"^[0-9]+$")  # ASCII digits only: str.isdigit() also takes '²' and full-width digits
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
#: A decimal (a cost, units a week) of more digits than this is a broken value, not data.
MAX_DECIMAL_DIGITS = 20


@overload
def _int(row: dict[str, str], column: str, required: Literal[True], maximum: int = SMALLINT_MAX) -> int: ...
@overload
def _int(row: dict[str, str], column: str, required: bool = False, maximum: int = SMALLINT_MAX) -> int | None: ...
def _int(row: dict[str, str], column: str, required: bool = False, maximum: int = SMALLINT_MAX) -> int | None:
    value = _text(row, column)
    if value is None:
        if required:
            raise RowProblem(column, "required number is missing")
        return None
    if not _WHOLE.match(value):
        raise RowProblem(column, "not a whole number")
    number = int(value)
    if number > maximum:
        raise RowProblem(column, f"number is larger than {maximum:,}, the most the column holds")
    return number


def _decimal(row: dict[str, str], column: str) -> Decimal | None:
    value = _text(row, column)
    if value is None:
        return None
    if not _NUMBER.match(value):
        raise RowProblem(column, "not a number")
    if sum(c.isdigit() for c in value) > MAX_DECIMAL_DIGITS:
        raise RowProblem(column, f"number has more than {MAX_DECIMAL_DIGITS} digits")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise RowProblem(column, "not a number") from None


def _pseudonymised(feed: str, row: dict[str, str], ctx: RowContext) -> tuple[dict[str, str], dict[str, str] | None]:
    """The row in its pseudonymised form, and why an identifiable value of it could not be reduced.

    An identifiable row (it has `nhs_number`) is pseudonymised here, in memory; the second value is then
    a dict (column -> reason), and the row's pseudonymised values are ours and need no checking. A row
    that came pseudonymised from its source is returned as it is, with None: its values are checked, and
    first that it was made under the loading key (else the whole file is refused: `FileRejected`).
    """
    if "nhs_number" not in row:
        problem = source_key_problem(row, ctx.keyed.key_version)
        if problem:
            raise FileRejected(problem)
        return row, None
    unreduced: dict[str, str] = {}
    return pseudonymise_row(
        feed, row, ctx.keyed, ctx.postcodes, period_end=ctx.period_end, unreduced=unreduced
    ), unreduced


def _identity_column(row: dict[str, str], unreduced: dict[str, str] | None) -> str:
    """The column a missing identity is reported against: the NHS number's, unless the source only sent person_id."""
    return "person_id" if unreduced is None and _text(row, "nhs_number_check") is None else "nhs_number"


def _linkage(row: dict[str, str], unreduced: dict[str, str] | None) -> tuple[NhsNumberCheck, str | None]:
    """The NHS number check and person_id (None when there is none) of a pseudonymised row."""
    if unreduced is not None:
        return _CHECKS[row["nhs_number_check"]], row["person_id"] or None
    person = (_text(row, "person_id") or "").lower()
    stated = _text(row, "nhs_number_check")
    check: NhsNumberCheck | None
    if stated is None:
        # The contract's own form: the source computed person_id and says nothing more.
        if not person:
            return NhsNumberCheck.MISSING, None
        check = NhsNumberCheck.SOURCE_PSEUDONYM
    else:
        check = _CHECKS.get(stated.lower())
        if check is None:
            raise RowProblem("nhs_number_check", "not one of valid, test_range, missing, invalid, source_pseudonym")
        if not check.linkable:
            if person:
                raise RowProblem(
                    "person_id", "person_id is given but nhs_number_check says there was no valid NHS number"
                )
            return check, None
        if not person:
            raise RowProblem("person_id", "person_id is missing but nhs_number_check says the NHS number was valid")
    if not _HEX64.match(person):
        raise RowProblem("person_id", "person_id is not 64 hexadecimal characters")
    return check, person


def _counted(ctx: RowContext, check: NhsNumberCheck, person: str | None) -> tuple[str | None, str]:
    """nhs_number_key (the row's person_id, or None) and the NHS number check as stored, counting. A person with
    an opt-out is loaded like anyone (their own care may use it: direct_care); the marts build leaves them out of
    every secondary use under the list in force then. Here they are only counted, for the load audit."""
    if person is None:
        ctx.counters["unlinked"] += 1
        return None, check.value
    if person in ctx.optouts:
        ctx.counters["opted_out"] += 1
    if check is NhsNumberCheck.TEST_RANGE:
        ctx.counters["test_range"] += 1
    return person, check.value


def _local_key(
    row: dict[str, str], ctx: RowContext, unreduced: dict[str, str] | None, column: str, source: str, kind: str
) -> str:
    """The keyed pseudonym of a local id: ours already, or sent as one (64 lowercase hex), or made now."""
    value = _required(row, column)
    if unreduced is not None or _HEX64.match(value):
        return value
    return ctx.keyed.local(source, f"{kind}|{value}").value


def _area(row: dict[str, str], ctx: RowContext, unreduced: dict[str, str] | None) -> tuple[str | None, str | None]:
    if unreduced is not None:
        return row["lsoa_code"] or None, row["locality_code"] or None
    if _text(row, "postcode") is not None:
        area = ctx.postcodes.area(row.get("postcode"))
        return (area.lsoa_code, area.locality_code) if area else (None, None)
    # An LSOA sent by the source counts only if the lookup knows it (the locality is the lookup's); an
    # unknown one is treated like a postcode not in the lookup: no area, the row is kept.
    lsoa = _text(row, "lsoa_code")
    if lsoa is None:
        return None, None
    for code in (lsoa, lsoa.upper()):
        if code in ctx.postcodes.localities:
            return code, ctx.postcodes.localities[code] or None
    return None, None


def _dob(row: dict[str, str], ctx: RowContext, column: str) -> tuple[int | None, int | None]:
    dob = _date(row, column)
    if dob is not None and ctx.period_end is not None and dob > ctx.period_end:
        raise RowProblem(column, "date of birth is after the extract's period end")
    return birth_year_month(dob)


def _birth(row: dict[str, str], ctx: RowContext, unreduced: dict[str, str] | None) -> tuple[int | None, int | None]:
    if unreduced is not None:
        reason = unreduced.get("date_of_birth")
        if reason:
            raise RowProblem("date_of_birth", reason)
        year = row["birth_year"]
        return (int(year), int(row["birth_month"])) if year else (None, None)
    if _text(row, "date_of_birth") is not None:
        return _dob(row, ctx, "date_of_birth")
    year_text = _text(row, "birth_year")
    if year_text is None:
        return None, None
    if not _YEAR.match(year_text):
        raise RowProblem("birth_year", "birth year is not 4 digits")
    month_text = _text(row, "birth_month")
    month = int(month_text) if month_text is not None and _MONTH.match(month_text) else None
    if month_text is not None and not (month and 1 <= month <= 12):
        raise RowProblem("birth_month", "birth month is not a whole number from 1 to 12")
    end = ctx.period_end
    if end is not None and (int(year_text), month or 1) > (end.year, end.month):
        raise RowProblem("birth_year", "date of birth is after the extract's period end")
    return int(year_text), month


# ----------------------------------------------------------------------------------------------------------
# gp_register


def gp_register_row(row: dict[str, str], ctx: RowContext) -> Row:
    row, unreduced = _pseudonymised("gp_register", row, ctx)
    check, person = _linkage(row, unreduced)
    if person is None:
        raise RowProblem(
            _identity_column(row, unreduced),
            "NHS number missing or invalid, and the register has no local id to follow",
        )
    nhs_number_key, check_stored = _counted(ctx, check, person)
    birth_year, birth_month = _birth(row, ctx, unreduced)
    lsoa, locality = _area(row, ctx, unreduced)
    return {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check_stored,
        "birth_year": birth_year,
        "birth_month": birth_month,
        "sex": _text(row, "sex"),
        "lsoa_code": lsoa,
        "locality_code": locality,
        "gp_practice_code": _text(row, "gp_practice_code"),
        "registration_start_date": _date(row, "registration_start_date"),
        "registration_end_date": _date(row, "registration_end_date"),
        "date_of_death": _date(row, "date_of_death"),
    }


# ----------------------------------------------------------------------------------------------------------
# apc


def apc_row(row: dict[str, str], ctx: RowContext) -> Row:
    row, unreduced = _pseudonymised("apc", row, ctx)
    procode = _required(row, "procode").upper()
    if ctx.provider and procode != ctx.provider:
        raise RowProblem("procode", "procode differs from the provider in the file name")
    episode_key = _local_key(row, ctx, unreduced, "epikey", procode, "episode")
    spell_key = _local_key(row, ctx, unreduced, "spell_id", procode, "spell")
    admidate = _date(row, "admidate", required=True)
    epistart = _date(row, "epistart", required=True)
    epiorder = _int(row, "epiorder", required=True)
    if epiorder < 1:
        raise RowProblem("epiorder", "epiorder must be 1 or more")
    admimeth = _required(row, "admimeth").upper()
    nhs_number_key, check = _counted(ctx, *_linkage(row, unreduced))
    birth_year, birth_month = _birth(row, ctx, unreduced)
    lsoa, locality = _area(row, ctx, unreduced)
    out: dict[str, object] = {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check,
        "episode_key": episode_key,
        "spell_key": spell_key,
        "nhs_number_status": _text(row, "nhs_number_status"),
        "birth_year": birth_year,
        "birth_month": birth_month,
        "sex": _text(row, "sex"),
        "lsoa_code": lsoa,
        "locality_code": locality,
        "gp_practice_code": _text(row, "gp_practice_code"),
        "procode": procode,
        "admidate": admidate,
        "disdate": _date(row, "disdate"),
        "epistart": epistart,
        "epiend": _date(row, "epiend"),
        "epiorder": epiorder,
        "admimeth": admimeth,
        "admisorc": _text(row, "admisorc"),
        "disdest": _text(row, "disdest"),
        "dismeth": _text(row, "dismeth"),
        "classpat": _text(row, "classpat"),
        "mainspef": _text(row, "mainspef"),
        "tretspef": _text(row, "tretspef"),
    }
    _texts(row, DIAG_COLUMNS, out)
    out["discharge_ready_date"] = _date(row, "discharge_ready_date")
    return out


# ----------------------------------------------------------------------------------------------------------
# cld (rows hold the CLD's column names lower-cased)


def cld_row(row: dict[str, str], ctx: RowContext) -> Row:
    row, unreduced = _pseudonymised("cld", row, ctx)
    la_code = _required(row, "la_code").upper()
    if ctx.provider and la_code != ctx.provider:
        raise RowProblem("la_code", "LA_Code differs from the council in the file name")
    la_person_key = _local_key(row, ctx, unreduced, "la_person_unique_identifier", la_code, "person")
    period_end = _date(row, "reporting_period_end_date", required=True)
    event_type = _required(row, "event_type")
    event_start = _date(row, "event_start_date", required=True)
    nhs_number_key, check = _counted(ctx, *_linkage(row, unreduced))
    birth_year, birth_month = _birth(row, ctx, unreduced)
    lsoa, locality = _area(row, ctx, unreduced)
    return {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check,
        "la_person_key": la_person_key,
        "la_code": la_code,
        "reporting_period_start_date": _date(row, "reporting_period_start_date"),
        "reporting_period_end_date": period_end,
        "client_type": _text(row, "client_type"),
        "gender": _text(row, "gender"),
        "ethnicity": _text(row, "ethnicity"),
        "birth_year": birth_year,
        "birth_month": birth_month,
        "date_of_death": _date(row, "date_of_death"),
        "lsoa_code": lsoa,
        "locality_code": locality,
        "primary_support_reason": _text(row, "primary_support_reason"),
        "accommodation_status": _text(row, "accommodation_status"),
        "event_type": event_type,
        "event_reference": _text(row, "event_reference"),
        "event_start_date": event_start,
        "event_end_date": _date(row, "event_end_date"),
        "event_outcome": _text(row, "event_outcome"),
        "request_route_of_access": _text(row, "request_route_of_access"),
        "assessment_type": _text(row, "assessment_type"),
        "service_type": _text(row, "service_type"),
        "service_component": _text(row, "service_component"),
        "delivery_mechanism": _text(row, "delivery_mechanism"),
        "review_reason": _text(row, "review_reason"),
        "unit_cost": _decimal(row, "unit_cost"),
        "cost_frequency_unit_type": _text(row, "cost_frequency_unit_type"),
        "planned_units_per_week": _decimal(row, "planned_units_per_week"),
    }


# ----------------------------------------------------------------------------------------------------------
# optouts and reference data


def optout_row(row: dict[str, str], ctx: RowContext) -> Row:
    row, unreduced = _pseudonymised("optouts", row, ctx)
    check, person = _linkage(row, unreduced)
    if person is None:
        raise RowProblem(
            _identity_column(row, unreduced), f"NHS number {check.value}: an opt-out cannot be applied without one"
        )
    return {"nhs_number_key": person}


#: A locality code as the contract (v2) has it: a district's ONS code or a council's own code such as GRAYS.
_LOCALITY_CODE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")


def postcode_row(row: dict[str, str], ctx: RowContext) -> Row:
    """raw.ref_lsoa's columns (with la_code: the council, empty when the lookup has none), and the
    postcode's digest, which goes to raw.ref_postcode only."""
    postcode = postcode_digest(_required(row, "postcode"))
    la_code = _text(row, "la_code")
    return {
        "lsoa_code": _required(row, "lsoa_code").upper(),
        "locality_code": _required(row, "locality_code").upper(),
        "locality_name": _text(row, "locality_name"),
        "la_code": la_code.upper() if la_code else None,
        "postcode_digest": postcode,
    }


def population_row(row: dict[str, str], ctx: RowContext) -> Row:
    sex = _required(row, "sex")
    age = _int(row, "age", required=True)
    population = _int(row, "population", required=True, maximum=INTEGER_MAX)
    assert ctx.period_end is not None, "a population file's name gives its year"
    return {
        "year": ctx.period_end.year,
        "lsoa_code": _required(row, "lsoa_code").upper(),
        "sex": sex,
        "age": age,
        "population": population,
    }


# ----------------------------------------------------------------------------------------------------------


#: How a row of each feed becomes a row of its raw table: the one thing of a feed its declaration
#: (pophealth/contract/feeds.py) does not say.
RowTransform = Callable[[dict[str, str], RowContext], Row]
TRANSFORMS: dict[str, RowTransform] = {
    "ref_postcode_lookup": postcode_row,
    "ref_population": population_row,
    "optouts": optout_row,
    "gp_register": gp_register_row,
    "apc": apc_row,
    "cld": cld_row,
}


def identity_columns_present(feed: Feed, columns: list[str]) -> str | None:
    """For a personal feed or the opt-out list: None when the header has every column its form requires
    (identifiable: as the contract says; pseudonymised at source: person_id, and birth_year or
    date_of_birth, lsoa_code or postcode), else the problem. Reference feeds: None."""
    return header_problem(feed.name, columns)
