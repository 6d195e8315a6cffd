"""Each feed of the extract contract (docs/contract/extracts.md), declared once: `FEEDS`, in load order.

A declaration says everything about a feed that is not code: how its files are named, when they arrive, its
columns as sources write them, which may be left out, its identifiers and the pseudonym column each becomes,
the raw table its rows go to and that table's columns. Everything else is derived from it here (the
pseudonymised form's header, the columns a file may have, the COPY row) or by the rooms that use it (landing's
file names and load order, the DAGs and their schedules, the lineage, the key rotation's pseudonym columns).

How to add a feed:
1. declare it below, in `FEEDS` at its place in the load order (reference data and the opt-out list come before
   any personal feed);
2. write its row transform in pophealth/ingest/feeds.py and put it in `TRANSFORMS` (how a row becomes a row of
   its raw table: that is code, not a declaration), and a good row of it in tests/unit/test_feed_declarations.py;
3. create its raw table in pophealth/warehouse/schema.sql, its quality gate in expectations/registry.yml, its dbt
   source and staging model, and say it in docs/contract/extracts.md;
4. a feed of periods: say where its rows say its data starts (ingest/load.py COVERAGE_START); an identifier that
   becomes a published id: map it (identity/purposes.py TRANSIT_COLUMNS).
That test checks that what is derived from `FEEDS` agrees with it, and that each identifier has its pseudonym
column in the raw table.

An identifier is never stored in clear: the NHS number becomes `nhs_number_key`, a source's local id (an episode, a
spell, a council's person) its keyed pseudonym. A date of birth and a postcode are not identifiers here but are
reduced in place (`REPLACED_BY`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from operator import itemgetter
from typing import Literal

#: The last column of every pseudonymised extract: the version of the linkage key that made it.
KEY_VERSION_COLUMN = "linkage_key_version"

#: What each identifiable column becomes in a pseudonymised extract, in place. The raw table keeps these names but
#: the NHS number's pseudonym: a transit pseudonym is `<thing>_key` in the warehouse (docs/architecture.md, Names),
#: so the extract's person_id is the raw tables' nhs_number_key (NHS_NUMBER.pseudonym_column).
REPLACED_BY: dict[str, tuple[str, str]] = {
    "nhs_number": ("person_id", "nhs_number_check"),
    "date_of_birth": ("birth_year", "birth_month"),
    "postcode": ("lsoa_code", "locality_code"),
}

#: A row as a transform returns it: the raw table's column -> its value.
Row = Mapping[str, object]


@dataclass(frozen=True)
class Identifier:
    """A column that identifies someone, and the column of the raw table that holds its pseudonym instead.

    The NHS number's pseudonym (nhs_number_key) is the same whichever source sent it; a source's own id's is not
    (LocalId).
    """

    column: str  # lower-case, as rows hold it
    pseudonym_column: str  # in the raw table


@dataclass(frozen=True)
class LocalId(Identifier):
    """A source's own identifier, pseudonymised under its source's code, the value of the column `scope` (procode,
    la_code), as `local(SOURCE, "KIND|" + id)`: the kind keeps an episode's pseudonym from ever equalling a spell's."""

    scope: str
    kind: str


NHS_NUMBER = Identifier("nhs_number", "nhs_number_key")


@dataclass(frozen=True)
class FileName:
    """How the contract names a feed's files: the pattern (a `provider` group for a feed of several senders, a
    `period` group of YYYYMMDD or YYYY), and the form the contract writes it in, for messages."""

    pattern: re.Pattern[str]
    form: str
    period: Literal["day", "year", "none"]

    @property
    def has_provider(self) -> bool:
        return "provider" in self.pattern.groupindex


@dataclass(frozen=True)
class Arrival:
    """How a feed's files arrive: when its scheduled run looks (cron, Europe/London), and how long it waits for them.

    A run started by hand never waits. The operate room makes the Airflow timetable of it."""

    cron: str
    wait: timedelta
    described: str


@dataclass(frozen=True)
class Feed:
    """One feed of the extract contract. See the module's docstring for how to add one."""

    name: str
    described: str  # one line, in the users' words (the DAG's description)
    file_name: FileName
    arrival: Arrival
    written: tuple[str, ...]  # the contract's columns as sources write them, in the contract's order
    table: str  # the raw table its published rows go to
    table_columns: tuple[str, ...]  # what its transform returns, in the COPY's order
    # The feed comes identifiable, or pseudonymised at source, when it has identifiers; reference data has none.
    identifiers: tuple[Identifier, ...] = ()
    optional: tuple[str, ...] = ()  # written columns (lower-case) a file may leave out
    personal: bool = False  # opt-outs apply, and each identity goes to the vault
    replaces_whole_table: bool = False  # the latest file is the whole truth (opt-out list, reference data)
    # Columns the transform returns after table_columns that the batch table holds but the raw table does not
    # (the postcode lookup's postcodes, published to raw.ref_postcode by load.publish_load).
    staged_only: tuple[str, ...] = ()
    # A feed whose files each cover a period (the metrics need them), one file per period per provider: the months
    # from one period to the next. None: a snapshot on its date (the register), reference data, the opt-out list.
    period_months: int | None = None

    @cached_property
    def identifiable(self) -> tuple[str, ...]:
        """The written columns, lower-cased (as rows hold them)."""
        return tuple(c.lower() for c in self.written)

    @property
    def pseudonymisable(self) -> bool:
        """A feed with identifiers: sent identifiable, or pseudonymised at source (`pophealth pseudonymise`)."""
        return bool(self.identifiers)

    @cached_property
    def local_ids(self) -> tuple[LocalId, ...]:
        return tuple(i for i in self.identifiers if isinstance(i, LocalId))

    @cached_property
    def header(self) -> tuple[str, ...]:
        """The pseudonymised extract's header as written: each identifiable column replaced in place
        (`REPLACED_BY`; local ids keep their names and hold their pseudonyms), then `KEY_VERSION_COLUMN`."""
        if not self.pseudonymisable:
            return ()
        header: list[str] = []
        for column in self.written:
            header.extend(REPLACED_BY.get(column.lower(), (column,)))
        return (*header, KEY_VERSION_COLUMN)

    @cached_property
    def pseudonymised(self) -> tuple[str, ...]:
        """The pseudonymised extract's columns, lower-case, in its order."""
        return tuple(c.lower() for c in self.header)

    @cached_property
    def identifiable_required(self) -> tuple[str, ...]:
        return tuple(c for c in self.identifiable if c not in self.optional)

    @cached_property
    def pseudonymised_required(self) -> tuple[tuple[str, ...], ...]:
        """For a file pseudonymised at source: each, the columns any one of which will do. The identity is
        person_id (its presence is what makes the form), and a date of birth or postcode may still come unreduced."""
        return tuple(
            (REPLACED_BY[c][0], c) if c in REPLACED_BY else (c,)
            for c in self.identifiable_required
            if c != NHS_NUMBER.column
        )

    @cached_property
    def contract_columns(self) -> tuple[str, ...]:
        """Every column a file of this feed may have, in either form (the rest are reported as extra)."""
        if not self.pseudonymisable:
            return self.identifiable
        return tuple(dict.fromkeys(self.identifiable + (REPLACED_BY[NHS_NUMBER.column][0],) + self.pseudonymised))

    @cached_property
    def required_columns(self) -> tuple[str, ...]:
        """Checked in every file by landing.open_extract. A pseudonymisable feed's depend on the file's form
        and are checked after it (at_source.header_problem)."""
        return () if self.pseudonymisable else self.identifiable_required

    @cached_property
    def copy_row(self) -> Callable[[Row], tuple[object, ...]]:
        """A transform's row as the COPY row of the batch table: table_columns then staged_only, in that order.

        The one place a row becomes positional; a column the transform did not return is a KeyError."""
        columns = self.table_columns + self.staged_only
        if len(columns) == 1:
            (only,) = columns
            return lambda row: (row[only],)
        getter: Callable[[Row], tuple[object, ...]] = itemgetter(*columns)  # the hot path: C, not a generator
        return getter


# ----------------------------------------------------------------------------------------------------------
# The declarations

_DAY = "(?P<period>[0-9]{8})"
_CSV = r"\.csv(?:\.gz)?$"
#: The time of the scheduled run of a feed that comes when it comes: hourly, waiting most of the hour.
_ON_ARRIVAL = Arrival("0 * * * *", timedelta(minutes=55), "on arrival (checked hourly)")
DIAG_COLUMNS = tuple(f"diag_{i:02d}" for i in range(1, 21))

FEEDS: tuple[Feed, ...] = (
    Feed(
        "ref_postcode_lookup",
        "Postcode to LSOA and locality lookup (public reference data).",
        FileName(re.compile("^ref_postcode_lookup" + _CSV), "ref_postcode_lookup.csv", "none"),
        _ON_ARRIVAL,
        written=("postcode", "lsoa_code", "locality_code", "locality_name", "la_code"),
        optional=("locality_name", "la_code"),
        table="raw.ref_lsoa",
        table_columns=("lsoa_code", "locality_code", "locality_name", "la_code"),
        replaces_whole_table=True,
        staged_only=("postcode_digest",),
    ),
    Feed(
        "ref_population",
        "Mid-year population estimates by LSOA, sex and single year of age (public reference data).",
        FileName(re.compile("^ref_population_(?P<period>[0-9]{4})" + _CSV), "ref_population_<YYYY>.csv", "year"),
        _ON_ARRIVAL,
        written=("lsoa_code", "sex", "age", "population"),
        table="raw.ref_population",
        table_columns=("year", "lsoa_code", "sex", "age", "population"),
    ),
    Feed(
        "optouts",
        "National data opt-out list: applied to every personal feed before anything is stored.",
        FileName(re.compile(f"^optouts_{_DAY}" + _CSV), "optouts_<YYYYMMDD>.csv", "day"),
        _ON_ARRIVAL,
        written=("nhs_number",),
        identifiers=(NHS_NUMBER,),
        table="restricted.optout",
        table_columns=("nhs_number_key",),
        replaces_whole_table=True,
    ),
    Feed(
        "gp_register",
        "GP-registered population: the person spine.",
        FileName(re.compile(f"^gp_register_{_DAY}" + _CSV), "gp_register_<YYYYMMDD>.csv", "day"),
        _ON_ARRIVAL,
        written=(
            "nhs_number",
            "date_of_birth",
            "sex",
            "postcode",
            "gp_practice_code",
            "registration_start_date",
            "registration_end_date",
            "date_of_death",
        ),
        identifiers=(NHS_NUMBER,),
        table="raw.gp_register",
        table_columns=(
            "nhs_number_key",
            "nhs_number_check",
            "birth_year",
            "birth_month",
            "sex",
            "lsoa_code",
            "locality_code",
            "gp_practice_code",
            "registration_start_date",
            "registration_end_date",
            "date_of_death",
        ),
        personal=True,
    ),
    Feed(
        "apc",
        "Hospital admitted patient care, one row per consultant episode (HES field names).",
        FileName(
            re.compile(f"^apc_(?P<provider>[A-Z0-9]{{3,5}})_{_DAY}" + _CSV), "apc_<provider>_<YYYYMMDD>.csv", "day"
        ),
        # Hospital extracts monthly: SUS/HES month end plus a few working days.
        Arrival("0 6 10 * *", timedelta(days=5), "monthly, from the 10th, waiting up to 5 days"),
        written=(
            "epikey",
            "spell_id",
            "nhs_number",
            "nhs_number_status",
            "date_of_birth",
            "sex",
            "postcode",
            "gp_practice_code",
            "procode",
            "admidate",
            "disdate",
            "epistart",
            "epiend",
            "epiorder",
            "admimeth",
            "admisorc",
            "disdest",
            "dismeth",
            "classpat",
            "mainspef",
            "tretspef",
            *DIAG_COLUMNS,
            "discharge_ready_date",
        ),
        optional=("nhs_number", "nhs_number_status"),
        identifiers=(
            NHS_NUMBER,
            LocalId("epikey", "episode_key", "procode", "episode"),
            LocalId("spell_id", "spell_key", "procode", "spell"),
        ),
        table="raw.apc_episode",
        table_columns=(
            "nhs_number_key",
            "nhs_number_check",
            "episode_key",
            "spell_key",
            "nhs_number_status",
            "birth_year",
            "birth_month",
            "sex",
            "lsoa_code",
            "locality_code",
            "gp_practice_code",
            "procode",
            "admidate",
            "disdate",
            "epistart",
            "epiend",
            "epiorder",
            "admimeth",
            "admisorc",
            "disdest",
            "dismeth",
            "classpat",
            "mainspef",
            "tretspef",
            *DIAG_COLUMNS,
            "discharge_ready_date",
        ),
        personal=True,
        period_months=1,
    ),
    Feed(
        "cld",
        "Adult social care client level data (Release 2), quarterly, rolling 12 months.",
        FileName(
            re.compile(f"^cld_(?P<provider>[A-Z][0-9]{{8}})_{_DAY}" + _CSV), "cld_<LA code>_<YYYYMMDD>.csv", "day"
        ),
        # CLD is due about a month after the quarter.
        Arrival(
            "0 6 1 2,5,8,11 *",
            timedelta(days=14),
            "quarterly, from the 1st of the month after the quarter's month, waiting up to 14 days",
        ),
        # The CLD's names with its capitalisation; matched case-insensitively, so rows hold them lower-cased.
        written=(
            "LA_Code",
            "Reporting_Period_Start_Date",
            "Reporting_Period_End_Date",
            "Client_Type",
            "LA_Person_Unique_Identifier",
            "NHS_Number",
            "Gender",
            "Ethnicity",
            "Date_of_Birth",
            "Date_of_Death",
            "Postcode",
            "Primary_Support_Reason",
            "Accommodation_Status",
            "Event_Type",
            "Event_Reference",
            "Event_Start_Date",
            "Event_End_Date",
            "Event_Outcome",
            "Request_Route_of_Access",
            "Assessment_Type",
            "Service_Type",
            "Service_Component",
            "Delivery_Mechanism",
            "Review_Reason",
            "Unit_Cost",
            "Cost_Frequency_Unit_Type",
            "Planned_units_per_week",
        ),
        optional=("nhs_number",),
        identifiers=(NHS_NUMBER, LocalId("la_person_unique_identifier", "la_person_key", "la_code", "person")),
        table="raw.cld_event",
        table_columns=(
            "nhs_number_key",
            "nhs_number_check",
            "la_person_key",
            "la_code",
            "reporting_period_start_date",
            "reporting_period_end_date",
            "client_type",
            "gender",
            "ethnicity",
            "birth_year",
            "birth_month",
            "date_of_death",
            "lsoa_code",
            "locality_code",
            "primary_support_reason",
            "accommodation_status",
            "event_type",
            "event_reference",
            "event_start_date",
            "event_end_date",
            "event_outcome",
            "request_route_of_access",
            "assessment_type",
            "service_type",
            "service_component",
            "delivery_mechanism",
            "review_reason",
            "unit_cost",
            "cost_frequency_unit_type",
            "planned_units_per_week",
        ),
        personal=True,
        period_months=3,
    ),
)

FEEDS_BY_NAME: dict[str, Feed] = {feed.name: feed for feed in FEEDS}
#: The feeds' names in the order they must be loaded: reference data and the opt-out list before any personal feed.
LOAD_ORDER: tuple[str, ...] = tuple(feed.name for feed in FEEDS)
#: The feeds whose rows are about people: opt-outs apply, and each identity goes to the vault.
PERSONAL_FEEDS: tuple[str, ...] = tuple(feed.name for feed in FEEDS if feed.personal)
#: Every column of a raw table that holds an identifier's pseudonym.
PSEUDONYM_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(i.pseudonym_column for f in FEEDS for i in f.identifiers))
