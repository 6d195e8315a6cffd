"""Each feed is declared once (pophealth/contract/feeds.py): what the rooms derive from a declaration agrees with it,
and each identifier a feed carries has its pseudonym column in the feed's raw table."""

import re
from datetime import date
from pathlib import Path

import pytest

from pophealth.contract.agreements import PER_PROVIDER_FEEDS
from pophealth.contract.feeds import FEEDS, KEY_VERSION_COLUMN, LOAD_ORDER, REPLACED_BY, LocalId
from pophealth.governance.lineage import SourceColumn, raw_to_feed
from pophealth.identity.rekey import REKEYED_COLUMNS
from pophealth.ingest.feeds import TRANSFORMS
from pophealth.ingest.landing import identify, why_not_an_extract
from pophealth.operate.orchestration import RAW_ASSETS, timetable
from tests.unit.test_feeds import apc, ctx, event, register

SCHEMA = Path(__file__).resolve().parents[2] / "pophealth" / "warehouse" / "schema.sql"
#: A good row of each feed, as a source sends it, and the provider its file name gives.
GOOD = {
    "ref_postcode_lookup": (
        {
            "postcode": "CM1 1AA",
            "lsoa_code": "E01990001",
            "locality_code": "E07000070",
            "locality_name": "Chelmsford",
            "la_code": "E10000012",
        },
        None,
    ),
    "ref_population": ({"lsoa_code": "E01990001", "sex": "1", "age": "40", "population": "12"}, None),
    "optouts": ({"nhs_number": "999 000 0018"}, None),
    "gp_register": (register(), None),
    "apc": (apc(), "RAJ"),
    "cld": (event(), "E10000012"),
}


def _raw_table_columns(table: str) -> set[str]:
    """The columns of a table as the warehouse's schema.sql creates it (and adds to it later)."""
    sql = re.sub(r"--[^\n]*", "", SCHEMA.read_text())
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {re.escape(table)} \((.*?)\n\);", sql, re.S)
    assert body, f"{table} is not created in schema.sql"
    # A column definition starts the body or follows a comma: a name, then its type (numeric(12,2)'s comma is not).
    created = set(re.findall(r"(?:^|,)\s*([a-z_0-9]+)\s+[a-z]", body.group(1).strip()))
    return created | set(re.findall(rf"ALTER TABLE {re.escape(table)} ADD COLUMN IF NOT EXISTS ([a-z_0-9]+)", sql))


def _a_name(feed) -> str:
    """A file name of the feed as the contract writes its form."""
    return (
        feed.file_name.form.replace("<YYYYMMDD>", "20250131")
        .replace("<YYYY>", "2025")
        .replace("<provider>", "RAJ")
        .replace("<LA code>", "E10000012")
    )


def test_every_feed_has_a_row_transform_and_a_good_row_here():
    assert set(TRANSFORMS) == set(LOAD_ORDER) == set(GOOD)


def test_reference_data_and_the_optout_list_load_before_any_personal_feed():
    personal = [i for i, feed in enumerate(FEEDS) if feed.personal]
    assert personal and max(i for i, feed in enumerate(FEEDS) if not feed.personal) < min(personal)
    assert LOAD_ORDER.index("optouts") < min(personal)


@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
def test_a_file_named_as_the_declared_form_is_identified_as_its_feed(feed):
    found = identify(Path(_a_name(feed)))
    assert found is not None and found.feed == feed.name
    assert (found.provider is not None) == feed.file_name.has_provider == (feed.name in PER_PROVIDER_FEEDS)
    assert (
        found.period_end == {"day": date(2025, 1, 31), "year": date(2025, 12, 31), "none": None}[feed.file_name.period]
    )
    assert feed.file_name.form in why_not_an_extract(Path(_a_name(feed).replace(".csv", ".txt")))
    # A feed of periods is dated to the day and sent per provider (coverage and the next delivery due are per provider).
    assert feed.period_months is None or (feed.file_name.period == "day" and feed.file_name.has_provider)


@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
def test_a_good_row_is_returned_with_every_column_of_the_copy_and_no_other(feed):
    row, provider = GOOD[feed.name]
    context = ctx(provider)
    context.period_end = date(2025, 12, 31)
    values = TRANSFORMS[feed.name](row, context)
    assert set(values) == set(feed.table_columns + feed.staged_only)
    assert feed.copy_row(values) == tuple(values[c] for c in feed.table_columns + feed.staged_only)


@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
def test_each_identifier_has_its_pseudonym_column_in_the_raw_table(feed):
    stored = _raw_table_columns(feed.table)
    assert set(feed.table_columns) <= stored, f"{feed.table}: the COPY names columns the table does not have"
    for identifier in feed.identifiers:
        assert identifier.pseudonym_column in feed.table_columns
        assert identifier.pseudonym_column in stored
        assert identifier.column in feed.identifiable
        assert identifier.column not in feed.table_columns, "an identifier is never stored in clear"
        assert identifier.pseudonym_column in REKEYED_COLUMNS, "a key rotation re-keys every pseudonym column"
        if feed.personal:  # the lineage walks each pseudonym column back to the identifier it is made of
            written = feed.written[feed.identifiable.index(identifier.column)]
            assert raw_to_feed(feed.table, identifier.pseudonym_column) == SourceColumn(feed.name, written)
        if isinstance(identifier, LocalId):
            assert identifier.scope in feed.identifiable
            assert identifier.column in feed.pseudonymised  # keeps its name, holds its pseudonym
        else:  # the NHS number: person_id in a pseudonymised extract (the contract's), nhs_number_key in the warehouse
            assert REPLACED_BY[identifier.column][0] == "person_id" and identifier.pseudonym_column == "nhs_number_key"


@pytest.mark.parametrize("feed", [f for f in FEEDS if f.pseudonymisable], ids=lambda f: f.name)
def test_the_pseudonymised_form_has_no_identifiable_column(feed):
    assert feed.pseudonymised[-1] == KEY_VERSION_COLUMN
    assert not set(feed.pseudonymised) & set(REPLACED_BY)
    assert set(feed.identifiable) - set(REPLACED_BY) <= set(feed.pseudonymised)


def test_reference_data_has_no_identifier_and_no_pseudonymised_form():
    for feed in FEEDS:
        if not feed.pseudonymisable:
            assert not feed.personal and feed.header == () and not set(feed.identifiable) & {"nhs_number"}


def test_each_feed_publishes_its_own_raw_table_on_its_declared_schedule():
    assert [a.name for a in RAW_ASSETS] == [f"warehouse.{feed.table}" for feed in FEEDS]
    assert len({feed.table for feed in FEEDS}) == len(FEEDS)
    for feed in FEEDS:
        schedule = timetable(feed.arrival)
        assert schedule.expression == feed.arrival.cron and str(schedule.timezone) == "Europe/London"
        assert feed.arrival.wait.total_seconds() > 0 and feed.described.endswith(".")


OPERATING = Path(__file__).resolve().parents[2] / "docs" / "operating.md"


def _said(wait) -> str:
    days, minutes = wait.days, wait.seconds // 60
    return f"up to {days} days" if days else f"up to {minutes} minutes"


@pytest.mark.parametrize("feed", FEEDS, ids=lambda f: f.name)
def test_the_operating_guide_gives_each_feeds_schedule_as_declared(feed):
    """docs/operating.md states the schedules for the data engineer; the declaration is what runs."""
    rows = [
        line for line in OPERATING.read_text().splitlines() if line.startswith("|") and f"`ingest_{feed.name}`" in line
    ]
    assert len(rows) == 1, f"docs/operating.md's schedule table has no single row for ingest_{feed.name}"
    cron = feed.arrival.cron
    assert f"`{cron}`" in rows[0] or (cron == "0 * * * *" and "every hour" in rows[0]), rows[0]
    assert _said(feed.arrival.wait) in rows[0], rows[0]
