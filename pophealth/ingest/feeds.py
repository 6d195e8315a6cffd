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
from functools import lru_cache
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


#: How the plain value of a column is read: the trimmed, non-empty text -> the value stored, or RowProblem.
Convert = Callable[[str, str], object]
#: The plain columns of a feed's row (no identifier, no rule across columns), in the order they are checked (the
#: first bad one is the row's reason), each with its converter (None: the text as it is).
Plan = tuple[tuple[str, Convert | None], ...]


def _plain(row: dict[str, str], plan: Plan, out: dict[str, object]) -> None:
    """`_text` of each column of the plan, converted, into `out`. The hot path of staging: one loop for a row's
    plain columns instead of a call or two per column, and an empty value (most diagnosis columns) costs one test."""
    get = row.get
    for column, convert in plan:
        value = get(column)
        if value:
            value = value.strip()
            if len(value) > MAX_FIELD_CHARS:
                raise RowProblem(column, f"value is longer than {MAX_FIELD_CHARS:,} characters")
            if value:
                out[column] = value if convert is None else convert(column, value)
                continue
        out[column] = None


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
    return _as_date(column, value)


@lru_cache(maxsize=4096)
def _event_day(text: str) -> date:
    """iso_date, remembered: a file's event dates repeat on many rows (an admission day, a reporting period end).
    A pure function of the text, so the cache cannot be fooled; bounded; a bad date raises each time (an exception
    is never cached). Dates of birth do not come here: they are many, and not kept beyond their row."""
    return iso_date(text)


def _as_date(column: str, value: str) -> date:
    try:
        return _event_day(value)
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


def _as_decimal(column: str, value: str) -> Decimal:
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
    text = _text(row, column)
    if text is None:
        return None, None
    try:
        dob = iso_date(text)  # not _event_day: a date of birth is not remembered beyond its row
    except ValueError as problem:
        raise RowProblem(column, str(problem)) from None
    if ctx.period_end is not None and dob > ctx.period_end:
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
    out: dict[str, object] = {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check_stored,
        "birth_year": birth_year,
        "birth_month": birth_month,
        "sex": None,
        "lsoa_code": lsoa,
        "locality_code": locality,
    }
    _plain(row, _GP_REGISTER_PLAIN, out)
    return out


_GP_REGISTER_PLAIN: Plan = (
    ("sex", None),
    ("gp_practice_code", None),
    ("registration_start_date", _as_date),
    ("registration_end_date", _as_date),
    ("date_of_death", _as_date),
)


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
    # The plain columns' places are held (None) so that the row keeps its table's column order.
    out: dict[str, object] = {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check,
        "episode_key": episode_key,
        "spell_key": spell_key,
        "nhs_number_status": None,
        "birth_year": birth_year,
        "birth_month": birth_month,
        "sex": None,
        "lsoa_code": lsoa,
        "locality_code": locality,
        "gp_practice_code": None,
        "procode": procode,
        "admidate": admidate,
        "disdate": None,
        "epistart": epistart,
        "epiend": None,
        "epiorder": epiorder,
        "admimeth": admimeth,
    }
    _plain(row, _APC_PLAIN, out)
    return out


_APC_PLAIN: Plan = (
    ("nhs_number_status", None),
    ("sex", None),
    ("gp_practice_code", None),
    ("disdate", _as_date),
    ("epiend", _as_date),
    ("admisorc", None),
    ("disdest", None),
    ("dismeth", None),
    ("classpat", None),
    ("mainspef", None),
    ("tretspef", None),
    *((column, None) for column in DIAG_COLUMNS),
    ("discharge_ready_date", _as_date),
)


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
    # The plain columns' places are held (None) so that the row keeps its table's column order.
    out: dict[str, object] = {
        "nhs_number_key": nhs_number_key,
        "nhs_number_check": check,
        "la_person_key": la_person_key,
        "la_code": la_code,
        "reporting_period_start_date": None,
        "reporting_period_end_date": period_end,
        "client_type": None,
        "gender": None,
        "ethnicity": None,
        "birth_year": birth_year,
        "birth_month": birth_month,
        "date_of_death": None,
        "lsoa_code": lsoa,
        "locality_code": locality,
        "primary_support_reason": None,
        "accommodation_status": None,
        "event_type": event_type,
        "event_reference": None,
        "event_start_date": event_start,
    }
    _plain(row, _CLD_PLAIN, out)
    return out


_CLD_PLAIN: Plan = (
    ("reporting_period_start_date", _as_date),
    ("client_type", None),
    ("gender", None),
    ("ethnicity", None),
    ("date_of_death", _as_date),
    ("primary_support_reason", None),
    ("accommodation_status", None),
    ("event_reference", None),
    ("event_end_date", _as_date),
    ("event_outcome", None),
    ("request_route_of_access", None),
    ("assessment_type", None),
    ("service_type", None),
    ("service_component", None),
    ("delivery_mechanism", None),
    ("review_reason", None),
    ("unit_cost", _as_decimal),
    ("cost_frequency_unit_type", None),
    ("planned_units_per_week", _as_decimal),
)


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
