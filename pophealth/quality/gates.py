"""Quality gates: Great Expectations suites, built from `expectations/registry.yml`, run on each staged load.

A load is staged into its own table (`load_batch.load_<id>`); the gate validates that table inside
PostgreSQL through a Great Expectations SQL data source (nothing is pulled into pandas), records every
result in `audit.gate_result`, and says in one screen what failed: the file, the rule, its threshold, how
many rows, and example row numbers (never values: values may identify someone).

The registry is the single place where rules live. Each rule names a Great Expectations 1.x expectation
class and its keyword arguments, plus a severity (error refuses the load, warn reports it), its place in
the OHDSI Data Quality Dashboard taxonomy (category, subcategory, verification or validation) and a
one-line reason. Thresholds are the rules' own kwargs (`mostly`, `min_value`, ...), with per-source
overrides (`by_provider`); a rule on the number of rows compares the batch with the file it came from or
with the previous load of the same source (`row_count`: published, or an earlier period staged in the same backfill). A feed with no rules has no gate
(`has_suite`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import string
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from pophealth import config
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

REGISTRY_ENV = "POPHEALTH_EXPECTATIONS_DIR"
REGISTRY_FILE = "registry.yml"
SEVERITIES = ("error", "warn")
CATEGORIES = ("conformance", "completeness", "plausibility")
# OHDSI DQD (Kahn et al. 2016): subcategories of conformance and plausibility (completeness has none), and
# the context: verification (against the contract and the file itself) or validation (against other data:
# the previous load, another feed already published).
SUBCATEGORIES = {
    "conformance": ("value", "relational", "computational"),
    "completeness": (),
    "plausibility": ("uniqueness", "atemporal", "temporal"),
}
CONTEXTS = ("verification", "validation")
EXAMPLE_ROWS = 5
SUMMARY_FAILURES = 12  # failed rules listed in full in the summary; the rest by id (all are in audit.gate_result)
ROWS_QUERY_PREFIX = "SELECT source_row FROM {batch}"
# Reference data and the opt-out list keep no row numbers: their SQL rules count rows and return nothing else.
COUNT_QUERY_PREFIX = "SELECT 1 FROM {batch}"
# What a rule's SQL may name, besides {batch} (which Great Expectations fills): the load being gated.
PLACEHOLDERS = ("batch", "load_id", "period_end", "provider")
RULE_KEYS = frozenset({"id", "feed", "expectation", "kwargs", "severity", "category", "subcategory", "context",
                       "note", "applies_to", "row_count", "by_provider", "reads_published"})
ROW_COUNT_BASELINES = ("file", "previous_load")
ROW_COUNT_KEYS = frozenset({"baseline", "min_ratio", "max_ratio", "min_baseline_rows", "only_quarantined_for"})

# Rules that measure presence itself: an empty column is exactly their failure, never "not applicable".
PRESENCE_EXPECTATIONS = frozenset({
    "ExpectColumnValuesToNotBeNull",
    "ExpectColumnValuesToBeNull",
    "ExpectColumnProportionOfNonNullValuesToBeBetween",
    "ExpectTableRowCountToBeBetween",
    "ExpectTableRowCountToEqual",
    "ExpectTableColumnsToMatchSet",
    "ExpectTableColumnsToMatchOrderedList",
    "ExpectColumnToExist",
})
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")


class RegistryError(ValueError):
    """The rule registry is malformed; the message names the rule and what is wrong with it."""


# ----------------------------------------------------------------------------------------------------------
# The registry


def registry_dir() -> Path:
    override = os.environ.get(REGISTRY_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "expectations"


_registry_cache: dict[tuple[str, float], dict] = {}


def registry() -> dict:
    """The parsed registry (re-read when the file changes), validated: RegistryError when malformed."""
    path = registry_dir() / REGISTRY_FILE
    if not path.is_file():
        raise RegistryError(f"the quality rule registry {path} does not exist (set {REGISTRY_ENV} to its folder)")
    key = (str(path), path.stat().st_mtime)
    if key not in _registry_cache:
        data = yaml.safe_load(path.read_text()) or {}
        problems = registry_problems(data)
        if problems:
            raise RegistryError(f"{path}: " + "; ".join(problems))
        _registry_cache.clear()
        _registry_cache[key] = data
    return _registry_cache[key]


def has_row_numbers(feed: str) -> bool:
    """Whether the feed's batch table keeps each row's number in the file (`source_row`): the personal feeds.
    Reference data and the opt-out list are stored without it (pophealth/ingest/load.py)."""
    from pophealth.contract.feeds import FEEDS_BY_NAME

    return feed in FEEDS_BY_NAME and FEEDS_BY_NAME[feed].personal


_ROWS_QUERY = re.compile(r"^SELECT (?:(?P<alias>\w+)\.)?source_row FROM \{batch\}(?: (?P<as>\w+))?")
_BATCH_FOLLOWED_BY = re.compile(r"\{batch\}\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
_AFTER_TABLE = frozenset({"where", "group", "order", "union", "limit", "except", "intersect", "join", "on",
                          "left", "right", "inner", "full", "cross", "having", "window", "fetch", "offset"})


def unaliased_batch_in_a_join(query: str) -> bool:
    """Whether a query with a JOIN names {batch} without an alias somewhere. Great Expectations leaves {batch}
    unaliased in a query with a JOIN (the rule aliases it), and PostgreSQL before 16 refuses a subquery in FROM
    without an alias: such a rule passes on PostgreSQL 16 and cannot be evaluated on 15 (Debian 12's)."""
    if re.search(r"\bJOIN\b", query, re.IGNORECASE) is None:
        return False
    return any(alias is None or alias.lower() in _AFTER_TABLE
               for alias in (m.group(1) for m in re.finditer(r"\{batch\}(?:\s+(?:AS\s+)?(\w+))?", query,
                                                            re.IGNORECASE)))


def query_problem(feed: str, query: str) -> str | None:
    """What is wrong with a rule's SQL, or None. It returns row numbers (`SELECT source_row FROM {batch}`;
    with a join, `SELECT b.source_row FROM {batch} b JOIN ...`), or for a feed without row numbers counts
    rows (`SELECT 1 FROM {batch}`). Great Expectations aliases {batch} itself unless the query has a JOIN,
    so only a query with a JOIN may alias it."""
    query = " ".join(str(query).split())
    if has_row_numbers(feed):
        match = _ROWS_QUERY.match(query)
        if match is None or (match.group("alias") and match.group("alias") != match.group("as")):
            return (f"unexpected_rows_query must start with '{ROWS_QUERY_PREFIX}' (or, joining, "
                    "'SELECT b.source_row FROM {batch} b JOIN ...'): row numbers only, never values")
    elif not query.startswith(COUNT_QUERY_PREFIX):
        return (f"unexpected_rows_query must start with '{COUNT_QUERY_PREFIX}' "
                f"({feed} keeps no row numbers: count rows, never return values)")
    has_join = re.search(r"\bJOIN\b", query, re.IGNORECASE) is not None
    aliased = [w for w in _BATCH_FOLLOWED_BY.findall(query) if w.lower() not in _AFTER_TABLE]
    if aliased and not has_join:
        return "unexpected_rows_query aliases {batch} without a JOIN (Great Expectations aliases it itself then)"
    names = _placeholders(query)
    if names is None:
        return "unexpected_rows_query has unpaired braces"
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        return (f"unexpected_rows_query names {{{unknown[0]}}}; the placeholders are "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS))
    return None


def _placeholders(query: str) -> list[str] | None:
    """The {names} in a query, or None when its braces do not parse."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(query) if name is not None]
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_count_problems(name: str, feed: str, check: dict, spec: Any) -> list[str]:
    from pophealth.contract.feeds import FEEDS_BY_NAME

    problems: list[str] = []
    if not isinstance(spec, dict):
        return [f"{name}: row_count must be a mapping"]
    if check.get("expectation") != "ExpectTableRowCountToBeBetween":
        problems.append(f"{name}: row_count goes with ExpectTableRowCountToBeBetween")
    unknown = set(spec) - ROW_COUNT_KEYS
    if unknown:
        problems.append(f"{name}: row_count has unknown keys {', '.join(sorted(unknown))}")
    if spec.get("baseline") not in ROW_COUNT_BASELINES:
        problems.append(f"{name}: row_count baseline must be one of {', '.join(ROW_COUNT_BASELINES)}")
    ratios = [spec.get(k) for k in ("min_ratio", "max_ratio") if spec.get(k) is not None]
    if not ratios:
        problems.append(f"{name}: row_count needs min_ratio or max_ratio")
    if any(not _is_number(r) or r <= 0 for r in ratios):
        problems.append(f"{name}: row_count ratios must be positive numbers")
    elif len(ratios) == 2 and ratios[0] > ratios[1]:
        problems.append(f"{name}: row_count min_ratio is above max_ratio")
    minimum = spec.get("min_baseline_rows", 0)
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
        problems.append(f"{name}: row_count min_baseline_rows must be a whole number >= 0")
    only = spec.get("only_quarantined_for")
    if only is not None:
        if spec.get("baseline") != "file":
            problems.append(f"{name}: only_quarantined_for goes with baseline: file")
        if not isinstance(only, list) or not only:
            problems.append(f"{name}: only_quarantined_for must be a list of the file's columns")
        elif feed in FEEDS_BY_NAME:
            for column in only:
                if column not in FEEDS_BY_NAME[feed].contract_columns:
                    problems.append(f"{name}: only_quarantined_for names {column}, "
                                    f"not a column of an extract of {feed}")
    if {"min_value", "max_value"} & set(check.get("kwargs") or {}):
        problems.append(f"{name}: with row_count, min_value and max_value are computed; do not set them")
    return problems


def _override_problems(name: str, feed: str, check: dict) -> list[str]:
    from pophealth.contract.feeds import FEEDS_BY_NAME

    overrides = check.get("by_provider")
    if not isinstance(overrides, dict) or not overrides:
        return [f"{name}: by_provider must map provider codes to overrides"]
    if feed not in FEEDS_BY_NAME or not FEEDS_BY_NAME[feed].file_name.has_provider:
        return [f"{name}: by_provider on {feed}, a feed with one sender"]
    problems: list[str] = []
    for provider, override in overrides.items():
        if not isinstance(override, dict) or not override or set(override) - {"kwargs", "row_count"}:
            problems.append(f"{name}: by_provider {provider} may override kwargs and row_count only")
            continue
        for part, values in override.items():
            base = check.get(part) or {}
            if not isinstance(values, dict):
                problems.append(f"{name}: by_provider {provider} {part} must be a mapping")
                continue
            for key, value in values.items():
                if key not in base:
                    problems.append(f"{name}: by_provider {provider} overrides {part}.{key}, "
                                    "which the rule does not set")
                elif _is_number(base[key]) != _is_number(value):
                    problems.append(f"{name}: by_provider {provider} {part}.{key} must be a number like the rule's")
    return problems


def _published_column(reference: Any) -> tuple[str, str] | None:
    """`schema.table.column` of a feed's published table, as (table, column); None when it is not one."""
    from pophealth.contract.feeds import FEEDS_BY_NAME

    if not isinstance(reference, str) or reference.count(".") != 2:
        return None
    table, _, column = reference.rpartition(".")
    for spec in FEEDS_BY_NAME.values():
        if spec.table == table and column in spec.table_columns:
            return table, column
    return None


def registry_problems(data: dict) -> list[str]:
    """What is wrong with a registry (empty when it is well formed). Does not import Great Expectations."""
    from pophealth.contract.feeds import FEEDS_BY_NAME

    problems: list[str] = []
    checks = data.get("checks") if isinstance(data, dict) else None
    if not isinstance(checks, list):
        return ["the registry needs a top-level list `checks`"]
    seen: set[str] = set()
    for i, check in enumerate(checks):
        name = check.get("id") if isinstance(check, dict) else None
        if not name:
            problems.append(f"check #{i + 1} has no id")
            continue
        if name in seen:
            problems.append(f"{name}: the id is used twice")
        seen.add(name)
        unknown = set(check) - RULE_KEYS
        if unknown:
            problems.append(f"{name}: unknown keys {', '.join(sorted(unknown))}")
        feed = check.get("feed")
        if feed not in FEEDS_BY_NAME:
            problems.append(f"{name}: unknown feed {feed!r}")
        elif not name.startswith(feed + "."):
            problems.append(f"{name}: the id must start with its feed ({feed}.)")
        if check.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {', '.join(SEVERITIES)}")
        category = check.get("category")
        if category not in CATEGORIES:
            problems.append(f"{name}: category must be one of {', '.join(CATEGORIES)}")
        elif SUBCATEGORIES[category] and check.get("subcategory") not in SUBCATEGORIES[category]:
            problems.append(f"{name}: subcategory of {category} must be one of {', '.join(SUBCATEGORIES[category])}")
        elif not SUBCATEGORIES[category] and check.get("subcategory") is not None:
            problems.append(f"{name}: {category} has no subcategory")
        if check.get("context") not in CONTEXTS:
            problems.append(f"{name}: context must be one of {', '.join(CONTEXTS)}")
        if not str(check.get("note") or "").strip():
            problems.append(f"{name}: a one-line note saying why the rule exists is required")
        if not isinstance(check.get("expectation"), str):
            problems.append(f"{name}: expectation (a Great Expectations class name) is required")
        if not isinstance(check.get("kwargs", {}), dict):
            problems.append(f"{name}: kwargs must be a mapping")
            continue
        if "row_count" in check:
            problems.extend(_row_count_problems(name, feed, check, check["row_count"]))
        if "by_provider" in check:
            problems.extend(_override_problems(name, feed, check))
        for reference in check.get("reads_published") or []:
            if _published_column(reference) is None:
                problems.append(f"{name}: reads_published {reference!r} is not schema.table.column "
                                "of a published table")
        query = (check.get("kwargs") or {}).get("unexpected_rows_query")
        if query is not None and feed in FEEDS_BY_NAME:
            problem = query_problem(feed, query)
            if problem:
                problems.append(f"{name}: {problem}")
        if feed in FEEDS_BY_NAME:
            known = set(FEEDS_BY_NAME[feed].table_columns) | {"load_id"}
            if has_row_numbers(feed):
                known.add("source_row")
            for column in columns_of(check):
                if column not in known:
                    problems.append(f"{name}: {column} is not a column of {FEEDS_BY_NAME[feed].table}")
    return problems


def all_checks() -> list[dict]:
    return list(registry()["checks"])


def checks_for(feed: str) -> list[dict]:
    return [c for c in all_checks() if c["feed"] == feed]


def has_suite(feed: str) -> bool:
    """Whether the registry has rules for the feed (a feed without rules is not gated)."""
    return bool(checks_for(feed))


def suite_name(feed: str) -> str:
    return f"{feed}_load"


def columns_of(check: dict) -> list[str]:
    """The columns a rule reads: its column kwargs, or `applies_to` for rules written as SQL."""
    kwargs = check.get("kwargs") or {}
    columns: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str):
            columns.append(value)
        elif isinstance(value, list):
            columns.extend(value)
    return columns + [c for c in check.get("applies_to") or [] if c not in columns]


def for_provider(check: dict, provider: str | None) -> dict:
    """The rule as it applies to one source: its `by_provider` overrides (thresholds) merged in."""
    override = (check.get("by_provider") or {}).get(provider) if provider else None
    if not override:
        return check
    resolved = copy.deepcopy(check)
    for part, values in override.items():
        resolved.setdefault(part, {}).update(values)
    resolved["threshold_of"] = provider
    return resolved


# ----------------------------------------------------------------------------------------------------------
# The load being gated


@dataclass
class LoadContext:
    """What audit.load knows of the load: its file and source, and the counts of the staging step."""

    load_id: int
    feed: str
    file_name: str = ""
    provider: str | None = None
    period_end: date | None = None
    rows_read: int = 0
    rows_opted_out: int = 0

    @classmethod
    def of(cls, conn, load_id: int, feed: str) -> LoadContext:
        row = conn.execute(
            "SELECT file_name, provider, period_end, rows_read, rows_opted_out FROM audit.load WHERE load_id = %s",
            (load_id,)).fetchone()
        if row is None:
            return cls(load_id, feed)
        return cls(load_id, feed, row[0], row[1], row[2], int(row[3] or 0), int(row[4] or 0))

    def describe(self) -> str:
        return " ".join(p for p in (self.feed, self.provider) if p)


def bind_query(query: str, ctx: LoadContext) -> str:
    """The rule's SQL with the load's placeholders filled as SQL literals; {batch} is left to Great
    Expectations. Values come from audit.load (the file name), never from a row."""
    values = {
        "load_id": str(int(ctx.load_id)),
        "period_end": f"DATE '{ctx.period_end.isoformat()}'" if ctx.period_end else "CAST(NULL AS date)",
        "provider": "'" + ctx.provider.replace("'", "''") + "'" if ctx.provider else "CAST(NULL AS text)",
    }
    for name, literal in values.items():
        query = query.replace("{" + name + "}", literal)
    return query


def _bound(check: dict, ctx: LoadContext) -> dict:
    """The rule for this load: per-source thresholds applied and its SQL placeholders filled."""
    check = for_provider(check, ctx.provider)
    query = (check.get("kwargs") or {}).get("unexpected_rows_query")
    if query is not None:
        check = {**check, "kwargs": {**check["kwargs"], "unexpected_rows_query": bind_query(query, ctx)}}
    return check


@dataclass
class RowCountBand:
    """A `row_count` rule's bounds for this load, or why it does not apply."""

    min_value: int | None = None
    max_value: int | None = None
    baseline_rows: int = 0
    baseline: str = ""                 # what the bounds are relative to, in words
    not_applicable: str | None = None
    quarantined_columns: tuple[str, ...] = ()


def _quarantine_filter(columns: tuple[str, ...]) -> tuple[str, tuple]:
    if not columns:
        return "", ()
    return " AND column_name = ANY(%s)", (list(columns),)


def months_covered(covers_from, covers_to) -> int | None:
    """How many calendar months a load's rows cover (audit.load.covers_from/covers_to); None for a snapshot (the
    register) or a feed without periods: those are compared whole."""
    if covers_from is None or covers_to is None or covers_from == covers_to:
        return None
    return (covers_to.year - covers_from.year) * 12 + covers_to.month - covers_from.month + 1


#: How long a volume rule waits for an earlier period of the same source that its own run is still staging (the
#: files of a backfill are staged in parallel): long enough for a month of hospital episodes, bounded so that a
#: stuck stage cannot hold the gate; after it, the rule compares with what has been staged or published.
EARLIER_STAGING_WAIT = timedelta(minutes=5)


def previous_load(conn, ctx: LoadContext) -> tuple | None:
    """The load a `previous_load` volume rule compares with: of the same feed and provider, the latest period before
    this one (or this period's published load, for a re-delivery), among loads published, or staged by the same run
    (status validated: read whole, their gate pending or passed). A staged earlier period of the run counts, so that
    a backfill, whose files are all loaded in one run before any is published, still compares each month with the
    month before; a staged load another run left unpublished does not.
    Returns (load_id, rows_loaded, period_end, covers_from, covers_to, status)."""
    return conn.execute(
        """SELECT load_id, rows_loaded, period_end, covers_from, covers_to, status FROM audit.load
           WHERE feed = %(feed)s AND provider IS NOT DISTINCT FROM %(provider)s AND load_id <> %(load)s
             AND (status = 'published' AND (period_end IS NULL OR %(period)s::date IS NULL OR period_end <= %(period)s)
                  OR status = 'validated' AND period_end < %(period)s
                     AND run_id = (SELECT run_id FROM audit.load WHERE load_id = %(load)s))
           ORDER BY period_end DESC NULLS LAST, (status = 'published') DESC, load_id DESC LIMIT 1""",
        {"load": ctx.load_id, "feed": ctx.feed, "provider": ctx.provider, "period": ctx.period_end}).fetchone()


def _wait_for_earlier_periods_staging(conn, ctx: LoadContext) -> None:
    """Wait (bounded) while this load's own run is still staging an earlier period of the same source: a stage in
    progress holds its worker and ends, so waiting on it cannot deadlock; loads of other runs are not waited for."""
    if ctx.period_end is None:
        return
    deadline = time.monotonic() + EARLIER_STAGING_WAIT.total_seconds()
    while time.monotonic() < deadline:
        staging = conn.execute(
            """SELECT count(*) FROM audit.load l JOIN audit.load this ON this.load_id = %s
               WHERE l.feed = this.feed AND l.provider IS NOT DISTINCT FROM this.provider AND l.status = 'loading'
                 AND l.run_id = this.run_id AND l.period_end < this.period_end""", (ctx.load_id,)).fetchone()[0]
        if not staging:
            return
        conn.commit()  # a fresh snapshot on the next look
        time.sleep(1)
    log.warning("%s: an earlier period was still staging after %s; the volume rule compares with what is staged",
                ctx.describe(), EARLIER_STAGING_WAIT)


def row_count_band(conn, check: dict, ctx: LoadContext) -> RowCountBand:
    """The bounds of a `row_count` rule for this load: its ratios times the rows of its baseline (the rows the
    file offered, or the previous load of the same feed and provider: previous_load), or why it does not apply."""
    spec = check["row_count"]
    minimum = int(spec.get("min_baseline_rows", 0))
    band = RowCountBand()
    if spec["baseline"] == "file":
        band.quarantined_columns = tuple(spec.get("only_quarantined_for") or ())
        offered = ctx.rows_read - ctx.rows_opted_out
        if band.quarantined_columns:
            # Rows quarantined for another reason are left out: the rule measures this reason alone.
            where, params = _quarantine_filter(band.quarantined_columns)
            other = conn.execute(
                "SELECT count(*) FROM audit.quarantine WHERE load_id = %s AND NOT (column_name IS NOT NULL"
                + where + ")", (ctx.load_id, *params)).fetchone()[0]
            offered -= int(other)
        band.baseline_rows = offered
        band.baseline = ("rows the file offered" + (" (opted-out people apart)" if ctx.rows_opted_out else "")
                         + (f" that were not quarantined for another column than {', '.join(band.quarantined_columns)}"
                            if band.quarantined_columns else ""))
        if offered <= 0:
            band.not_applicable = "no row of the file to compare with"
            return band
        if offered < minimum:
            band.not_applicable = f"the file offered {offered:,} rows, fewer than the {minimum:,} a share needs"
            return band
    else:
        _wait_for_earlier_periods_staging(conn, ctx)
        previous = previous_load(conn, ctx)
        if previous is None:
            band.baseline = f"previous published load of {ctx.describe()}"
            band.not_applicable = f"no previous published or staged load of {ctx.describe()}"
            return band
        band.baseline_rows = int(previous[1])
        period = f", period ending {previous[2].isoformat()}" if previous[2] else ""
        band.baseline = (f"previous published load of {ctx.describe()}" if previous[5] == "published"
                         else f"previous load of {ctx.describe()} staged in this run") + f" (load {previous[0]}{period})"
        # Like with like: a file covering a month after one covering a year is compared with a month's share of it.
        this = conn.execute("SELECT covers_from, covers_to FROM audit.load WHERE load_id = %s",
                            (ctx.load_id,)).fetchone()
        these, those = months_covered(*(this or (None, None))), months_covered(previous[3], previous[4])
        if these and those and these != those:
            band.baseline_rows = round(band.baseline_rows * these / those)
            band.baseline += (f", {those} months, scaled to the {these} month{'s' if these > 1 else ''}"
                              " this file covers")
        if band.baseline_rows < minimum:
            band.not_applicable = (f"the previous load has {band.baseline_rows:,} rows, "
                                   f"fewer than the {minimum:,} a volume comparison needs")
            return band
    if spec.get("min_ratio") is not None:
        band.min_value = math.ceil(spec["min_ratio"] * band.baseline_rows - 1e-9)
    if spec.get("max_ratio") is not None:
        band.max_value = math.floor(spec["max_ratio"] * band.baseline_rows + 1e-9)
    return band


def _published_has_values(conn, check: dict) -> str | None:
    """Why a rule that reads published data does not apply (that data has no value yet), or None."""
    for reference in check.get("reads_published") or []:
        table, column = _published_column(reference)
        schema, _, name = table.partition(".")
        found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)").format(
            sql.Identifier(schema, name), sql.Identifier(column))).fetchone()[0]
        if not found:
            return f"nothing published in {reference} yet"
    return None


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class CheckResult:
    check_id: str
    category: str
    severity: str
    status: str            # passed, failed, not_applicable
    note: str
    unexpected_count: int | None = None
    row_count: int = 0
    threshold: str = ""
    observed: str = ""
    example_rows: list[int] = field(default_factory=list)
    expectation: str = ""
    observed_number: float | None = None
    subcategory: str = ""
    context: str = ""


@dataclass
class GateOutcome:
    feed: str
    results: list[CheckResult]
    seconds: float = 0.0
    file_name: str = ""
    load_id: int | None = None

    @property
    def passed(self) -> bool:
        """False exactly when an error rule failed; warnings and not-applicable rules never stop a load."""
        return not any(r.status == "failed" and r.severity == "error" for r in self.results)

    def failures(self, severity: str | None = None) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed" and (severity is None or r.severity == severity)]

    def summary(self) -> str:
        """One screen: the file and the tally, then each failed rule (errors first) with its reason, threshold,
        how many rows and example row numbers; never a value from the file."""
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("passed", "failed", "not_applicable")}
        errors, warns = len(self.failures("error")), len(self.failures("warn"))
        where = f"{self.file_name} (load {self.load_id}): " if self.file_name else ""
        lines = [f"{where}{self.feed} suite: {counts['passed']} passed, {counts['failed']} failed "
                 f"({errors} error, {warns} warn), {counts['not_applicable']} not applicable"]
        ordered = sorted(self.failures(), key=lambda r: (r.severity != "error", r.check_id))
        for r in ordered[:SUMMARY_FAILURES]:
            lines.append(f"  {'FAILED' if r.severity == 'error' else 'warning'} [{r.severity}] {r.check_id}: {r.note}")
            if r.unexpected_count is not None:
                measured = f"{r.unexpected_count:,} of {r.row_count:,} rows"
            else:
                measured = f"observed {r.observed or '?'}"
            examples = ", ".join(str(n) for n in r.example_rows)
            lines.append(f"      {measured}; threshold: {r.threshold}"
                         + (f"; example rows (1 = first data row): {examples}" if examples else ""))
        if len(ordered) > SUMMARY_FAILURES:
            rest = ordered[SUMMARY_FAILURES:]
            lines.append(f"  ... and {len(rest)} more failed rules (audit.gate_result): "
                         + ", ".join(r.check_id for r in rest))
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == "not_applicable":
                skipped.setdefault(r.observed or "column empty in this file", []).append(r.check_id)
        for reason, ids in skipped.items():
            lines.append(f"  not applicable ({reason}): {', '.join(ids)}")
        lines.append(f"  Data Docs (Great Expectations): {data_docs_index()}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Each rule's failing rows as SQL, for example row numbers (and a count when Great Expectations gives none)


def _literal_list(values: list) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(v) for v in values)


def failing_rows_condition(check: dict, table: sql.Composable) -> sql.Composable | None:
    """A WHERE condition true for the rows the rule rejects, or None when the rule has no row-level meaning.
    A rule written as SQL must have its placeholders other than {batch} filled first (`bind_query`)."""
    kind = check["expectation"]
    kw = check.get("kwargs") or {}
    col = sql.Identifier(kw["column"]) if isinstance(kw.get("column"), str) else None
    if kind == "ExpectColumnValuesToNotBeNull":
        return sql.SQL("{} IS NULL").format(col)
    if kind == "ExpectColumnValuesToBeInSet":
        return sql.SQL("{c} IS NOT NULL AND {c} NOT IN ({v})").format(c=col, v=_literal_list(kw["value_set"]))
    if kind == "ExpectColumnValuesToNotBeInSet":
        return sql.SQL("{c} IN ({v})").format(c=col, v=_literal_list(kw["value_set"]))
    if kind == "ExpectColumnValuesToBeBetween":
        parts = []
        if kw.get("min_value") is not None:
            op = "<=" if kw.get("strict_min") else "<"
            parts.append(sql.SQL("{} " + op + " {}").format(col, sql.Literal(kw["min_value"])))
        if kw.get("max_value") is not None:
            op = ">=" if kw.get("strict_max") else ">"
            parts.append(sql.SQL("{} " + op + " {}").format(col, sql.Literal(kw["max_value"])))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts)) if parts else None
    if kind == "ExpectColumnValuesToBeUnique":
        return sql.SQL("{c} IN (SELECT {c} FROM {t} GROUP BY {c} HAVING count(*) > 1)").format(c=col, t=table)
    if kind == "ExpectCompoundColumnsToBeUnique":
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in kw["column_list"])
        return sql.SQL("({c}) IN (SELECT {c} FROM {t} GROUP BY {c} HAVING count(*) > 1)").format(c=cols, t=table)
    if kind == "ExpectColumnValuesToMatchRegex":
        return sql.SQL("{c} IS NOT NULL AND {c}::text !~ {r}").format(c=col, r=sql.Literal(kw["regex"]))
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        a, b = sql.Identifier(kw["column_A"]), sql.Identifier(kw["column_B"])
        compare = sql.SQL("({} >= {}) IS NOT TRUE" if kw.get("or_equal") else "({} > {}) IS NOT TRUE").format(a, b)
        ignore = kw.get("ignore_row_if", "both_values_are_missing")
        if ignore == "either_value_is_missing":
            return sql.SQL("{a} IS NOT NULL AND {b} IS NOT NULL AND {c}").format(a=a, b=b, c=compare)
        if ignore == "both_values_are_missing":
            return sql.SQL("NOT ({a} IS NULL AND {b} IS NULL) AND {c}").format(a=a, b=b, c=compare)
        return compare
    if kind == "UnexpectedRowsExpectation":
        if not has_row_numbers(check["feed"]):
            return None  # its query counts rows of a table without row numbers
        pieces = " ".join(kw["unexpected_rows_query"].split()).split("{batch}")
        query = sql.Composed([sql.SQL(pieces[0])] + [part for piece in pieces[1:] for part in (table, sql.SQL(piece))])
        return sql.Composed([sql.SQL("source_row IN ("), query, sql.SQL(")")])
    return None


def _share(mostly: Any) -> str:
    return f"at least {float(mostly):.0%} of rows" if mostly is not None else "every row"


def _values(value_set: list) -> str:
    """A rule's value set as the summary shows it: the registry's own values (never the file's), or their number."""
    if len(value_set) <= 6:
        return "(" + ", ".join(str(v) for v in value_set) + ")"
    return f"the contract's {len(value_set)} values"


def _threshold(check: dict, band: RowCountBand | None = None) -> str:
    kind = check["expectation"]
    kw = check.get("kwargs") or {}
    share = _share(kw.get("mostly"))
    source = f" ({check['threshold_of']}'s threshold)" if check.get("threshold_of") else ""
    if kind == "ExpectColumnValuesToNotBeNull":
        return f"{kw['column']} present on {share}{source}"
    if kind == "ExpectColumnValuesToBeInSet":
        return f"{kw['column']} in {_values(kw['value_set'])} on {share}{source}"
    if kind == "ExpectColumnValuesToNotBeInSet":
        return f"{kw['column']} not in {_values(kw['value_set'])} on {share}{source}"
    if kind == "ExpectColumnValuesToBeBetween":
        return (f"{kw['column']} between {kw.get('min_value', '-inf')} and {kw.get('max_value', 'inf')} "
                f"on {share}{source}")
    if kind == "ExpectColumnValuesToBeUnique":
        return f"{kw['column']} unique"
    if kind == "ExpectCompoundColumnsToBeUnique":
        return f"({', '.join(kw['column_list'])}) unique"
    if kind == "ExpectColumnValuesToMatchRegex":
        return f"{kw['column']} matches {kw['regex']} on {share}{source}"
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        op = ">=" if kw.get("or_equal") else ">"
        where = " where both present" if kw.get("ignore_row_if") == "either_value_is_missing" else ""
        return f"{kw['column_A']} {op} {kw['column_B']} on {share}{where}"
    if kind == "UnexpectedRowsExpectation":
        return "no row"
    if "row_count" in check:
        spec = check["row_count"]
        low, high = spec.get("min_ratio"), spec.get("max_ratio")
        share = (f"between {low:.0%} and {high:.0%}" if low is not None and high is not None
                 else f"at least {low:.0%}" if low is not None else f"at most {high:.0%}")
        known = band is not None and band.not_applicable is None and bool(band.baseline)
        if known:
            bounds = (f"{band.min_value:,} to {band.max_value:,}" if low is not None and high is not None
                      else f"at least {band.min_value:,}" if low is not None else f"at most {band.max_value:,}")
        if spec["baseline"] == "file":
            what = band.baseline if band and band.baseline else "rows the file offered"
            text = (f"rows loaded {share} of the {band.baseline_rows:,} {what}, so {bounds}" if known
                    else f"rows loaded {share} of the {what}")
        else:
            what = band.baseline if band and band.baseline else "previous published load of the same source"
            text = (f"rows {share} of the {band.baseline_rows:,} rows of the {what}, so {bounds}" if known
                    else f"rows {share} of the {what}")
            if spec.get("min_baseline_rows"):
                text += f"; compared when it has at least {spec['min_baseline_rows']:,} rows"
        return text + source
    shown = {k: v for k, v in kw.items() if k not in _COLUMN_KWARGS and k != "value_set"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "as the expectation defines"


# ----------------------------------------------------------------------------------------------------------
# Great Expectations


def _quiet_great_expectations() -> None:
    """No usage statistics, no progress bars, no INFO chatter from GE in the task logs."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    logging.getLogger("posthog").setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations."):
            logger = logging.getLogger(name)
            if logger.level and logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)


def import_great_expectations():
    """Import Great Expectations quietly (it takes a few seconds: done on the first gate, not at import)."""
    _quiet_great_expectations()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations
        import great_expectations.expectations  # noqa: F401
    _quiet_great_expectations()
    return great_expectations


def _sqlalchemy_url(url: str) -> str:
    """The warehouse URL for SQLAlchemy with psycopg2 (which reaches a unix socket through ?host=)."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        scheme = "postgresql+psycopg2"
    return scheme + sep + rest


def build_expectation(check: dict, band: RowCountBand | None = None):
    """The Great Expectations expectation object for a registry rule (with a `row_count` rule's bounds)."""
    gxe = import_great_expectations().expectations

    cls = getattr(gxe, check["expectation"], None)
    if cls is None:
        raise RegistryError(f"{check['id']}: great_expectations.expectations has no {check['expectation']}")
    kwargs = dict(check.get("kwargs") or {})
    if check["expectation"] == "UnexpectedRowsExpectation":
        kwargs["unexpected_rows_query"] = " ".join(kwargs["unexpected_rows_query"].split())
        kwargs.setdefault("description", check["note"])
    if "row_count" in check:
        kwargs["min_value"] = band.min_value if band else 0
        kwargs["max_value"] = band.max_value if band else None
    meta = {"check_id": check["id"], "category": check["category"], "severity": check["severity"],
            "context": check.get("context"), "subcategory": check.get("subcategory")}
    try:
        return cls(**kwargs, severity="critical" if check["severity"] == "error" else "warning",
                   notes=check["note"], meta=meta)
    except Exception as exc:  # pydantic validation: a bad kwarg in the registry
        raise RegistryError(f"{check['id']}: {check['expectation']} rejects its kwargs: {exc}") from None


DOCS_SITE = "quality_gates"


def data_docs_index() -> Path:
    """The Data Docs site of every gate run (Great Expectations' HTML): one page per validation."""
    return config.paths().gate_docs_dir / "index.html"


class _GX:
    """One ephemeral Great Expectations context and SQL data source per warehouse URL, reused between gates."""

    _lock = threading.Lock()
    _run_lock = threading.Lock()  # a GE context is not thread-safe: one validation at a time per process
    _instance: _GX | None = None

    def __init__(self, url: str):
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.url = url
        self.gx = gx
        # In memory, except the validation results, kept on disk so that the Data Docs site lists every
        # validation of every process (each Airflow task is one), and the site itself.
        paths = config.paths()
        project = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites={DOCS_SITE: {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(paths.gate_docs_dir)},
                # GE's DefaultSiteIndexBuilder, reading only what the index shows of each result (gate_docs.py).
                "site_index_builder": {"class_name": "ValidationIndexBuilder", "module_name": "pophealth.quality.gate_docs"},
            }},
        )
        project.stores[project.validation_results_store_name]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(paths.home / "great_expectations" / "validation_results")}
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_sql(name="warehouse", connection_string=url)
        # The Data Docs site's builder, made once per process and kept: Great Expectations' UpdateDataDocsAction
        # makes a new one for every validation, and with it new Jinja environments that compile every page
        # template again (more than half of a small file's gate). Each gate adds its own pages with it.
        from great_expectations.render.renderer.site_builder import SiteBuilder

        site = {k: v for k, v in self.context.variables.data_docs_sites[DOCS_SITE].items()
                if k not in ("class_name", "module_name")}
        self.docs = SiteBuilder(data_context=self.context, site_name=DOCS_SITE,
                                runtime_environment={"root_directory": self.context.root_directory}, **site)

    @classmethod
    def for_url(cls, url: str) -> _GX:
        with cls._lock:
            if cls._instance is None or cls._instance.url != url:
                cls._instance = _GX(url)
            return cls._instance

    def validate(self, schema: str, table: str, suite_name_: str, expectations: list) -> Any:
        with self._run_lock:
            return self._validate(schema, table, suite_name_, expectations)

    #: Inside `data_docs_once()`: the site's index (and its static files) is built once at the end, not after
    #: every validation. Rebuilding the index reads every validation kept, so per file it grew with the files.
    _index_deferred = threading.local()

    def _pages(self, resource_identifiers: list) -> None:
        """This validation's pages of the Data Docs site, then the index unless it is deferred."""
        for section in self.docs.site_section_builders.values():
            section.build(resource_identifiers=resource_identifiers)
        if getattr(self._index_deferred, "depth", 0):
            self._index_deferred.pending = True
        else:
            self.build_index()

    def build_index(self) -> None:
        self.docs.target_store.copy_static_assets()
        self.docs.site_index_builder.build(build_index=True)


    def _validate(self, schema: str, table: str, suite_name_: str, expectations: list) -> Any:
        gx = self.gx
        asset_name = f"{schema}.{table}"
        try:
            self.source.delete_asset(asset_name)
        except Exception:  # noqa: BLE001 - no such asset yet
            pass
        asset = self.source.add_table_asset(name=asset_name, table_name=table, schema_name=schema)
        batch = asset.add_batch_definition_whole_table("whole_table")
        name = f"{suite_name_}:{schema}.{table}"
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        validation = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        # BASIC gives counts; partial_unexpected_count 0 keeps GE's result, and so the Data Docs, free of values.
        checkpoint = gx.Checkpoint(name=name, validation_definitions=[validation], actions=[],
                                   result_format={"result_format": "BASIC", "partial_unexpected_count": 0})
        try:
            run = checkpoint.run(run_id=gx.core.run_identifier.RunIdentifier(run_name=f"{schema}.{table}"))
            result_id, result = next(iter(run.run_results.items()))
            # What UpdateDataDocsAction did, with the builder kept (see __init__): this validation's page and
            # its suite's, and the index listing every validation kept on disk.
            from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

            self._pages([result_id, ExpectationSuiteIdentifier(name=name)])
            return result
        finally:
            for remove in (lambda: self.context.checkpoints.delete(name),  # run() stores the checkpoint
                           lambda: self.context.validation_definitions.delete(name),
                           lambda: self.context.suites.delete(name),
                           lambda: self.source.delete_asset(asset_name)):
                try:
                    remove()
                except Exception:  # noqa: BLE001 - cleaning up an in-memory context
                    pass


@contextmanager
def data_docs_once():
    """Gates run inside build the Data Docs site's index once, when the block ends (a load task's files)."""
    deferred = _GX._index_deferred
    deferred.depth = getattr(deferred, "depth", 0) + 1
    try:
        yield
    finally:
        deferred.depth -= 1
        if deferred.depth == 0 and getattr(deferred, "pending", False):
            deferred.pending = False
            runner = _GX._instance
            if runner is not None:
                with runner._run_lock:
                    runner.build_index()


def _validate(schema: str, table: str, suite: str, checks: list[dict],
              bands: dict[str, RowCountBand]) -> dict[str, Any]:
    """Run the rules as one Great Expectations validation on the table; GE's results by rule id."""
    if not checks:
        return {}
    _quiet_great_expectations()
    with warnings.catch_warnings():
        # GE's deprecation and "use PostgresDatasource" notices: PostgresDatasource rejects socket URLs, and
        # the table asset's schema_name is what reaches a table outside the connection's search path.
        warnings.simplefilter("ignore")
        runner = _GX.for_url(_sqlalchemy_url(db.warehouse_url()))
        _quiet_great_expectations()
        expectations = [build_expectation(c, bands.get(c["id"])) for c in checks]
        run = runner.validate(schema, table, suite, expectations)
    return {r.expectation_config.meta["check_id"]: r for r in run.results}


def _evaluation_problem(info: Any) -> str | None:
    """Why GE could not evaluate a rule, or None. Database messages can quote a value, so only GE's own
    explanation of a missing column is kept; anything else is named by its kind alone."""
    if not isinstance(info, dict):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            message = str(entry.get("exception_message") or "").splitlines()[0] if entry.get("exception_message") else ""
            if "does not exist" in message and len(message) < 200:
                return message
            return "the rule could not be evaluated on this table (check its expectation and kwargs)"
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None


# ----------------------------------------------------------------------------------------------------------
# The gate


def run_load_gate(load_id: int, feed: str, batch_table: str, run_id: str | None = None) -> GateOutcome:
    """Validate a staged load's batch table with its feed's suite, record every result, and say if it passed."""
    started = time.monotonic()
    schema, _, name = batch_table.partition(".")
    table = sql.Identifier(schema, name)
    skipped: dict[str, str] = {}
    bands: dict[str, RowCountBand] = {}
    with db.connect() as conn:
        ctx = LoadContext.of(conn, load_id, feed)
        checks = [_bound(c, ctx) for c in checks_for(feed)]
        columns = sorted({c for check in checks for c in columns_of(check)})
        counts = conn.execute(
            sql.SQL("SELECT count(*){} FROM {}").format(
                sql.SQL("").join(sql.SQL(", count({})").format(sql.Identifier(c)) for c in columns), table)
        ).fetchone()
        row_count, present = counts[0], dict(zip(columns, counts[1:], strict=False))
        for check in checks:
            if "row_count" in check:
                band = bands[check["id"]] = row_count_band(conn, check, ctx)
                if band.not_applicable:
                    skipped[check["id"]] = band.not_applicable
            elif check.get("reads_published"):
                reason = _published_has_values(conn, check)
                if reason:
                    skipped[check["id"]] = reason

    def applicable(check: dict) -> bool:
        if check["id"] in skipped:
            return False
        if "row_count" in check:
            return True  # the number of rows is measured even when no row was loaded
        if not row_count:
            skipped[check["id"]] = "no row loaded"
            return False
        if check["expectation"] in PRESENCE_EXPECTATIONS:
            return True
        read = columns_of(check)
        if not read:
            return True
        if (check.get("kwargs") or {}).get("ignore_row_if") == "both_values_are_missing":
            found = any(present.get(c, 0) > 0 for c in read)
        else:
            found = all(present.get(c, 0) > 0 for c in read)
        if not found:
            skipped[check["id"]] = "column empty in this file"
        return found

    to_run = [c for c in checks if applicable(c)]
    ge_results = _validate(schema, name, suite_name(feed), to_run, bands)

    results: list[CheckResult] = []
    with db.connect() as conn:
        for check in checks:
            band = bands.get(check["id"])
            result = CheckResult(check["id"], check["category"], check["severity"], "not_applicable", check["note"],
                                 row_count=row_count, threshold=_threshold(check, band),
                                 expectation=check["expectation"], subcategory=check.get("subcategory") or "",
                                 context=check.get("context") or "")
            ge = ge_results.get(check["id"])
            if ge is None:
                result.observed = skipped.get(check["id"], "")
            else:
                problem = _evaluation_problem(ge.exception_info)
                if problem:
                    # A rule that could not be evaluated is a failure of that rule, never a silent pass.
                    result.status = "failed"
                    result.observed = "error: " + problem
                    log.warning("gate rule %s could not be evaluated: %s", check["id"], problem)
                else:
                    result.status = "passed" if ge.success else "failed"
                if band is not None:
                    _fill_row_count(conn, check, band, ge, result, ctx)
                else:
                    _fill_counts(conn, check, table, ge, result)
            results.append(result)
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, expectation, severity,
                                                  category, subcategory, context, status, observed, observed_number,
                                                  threshold, unexpected_count, row_count, example_rows, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(load_id, run_id, feed, suite_name(feed), r.check_id, r.expectation, r.severity, r.category,
                  r.subcategory or None, r.context or None, r.status, r.observed, r.observed_number, r.threshold,
                  r.unexpected_count, r.row_count, r.example_rows, r.note) for r in results],
            )
    outcome = GateOutcome(feed, results, seconds=time.monotonic() - started, file_name=ctx.file_name,
                          load_id=load_id)
    log.info("quality gate for load %d ran %d rules in %.1fs: %s", load_id, len(results), outcome.seconds,
             outcome.summary().splitlines()[0])
    return outcome


def _fill_row_count(conn, check: dict, band: RowCountBand, ge: Any, result: CheckResult, ctx: LoadContext) -> None:
    """A `row_count` rule: the rows the batch holds against its baseline; for the file baseline, the rows the
    loader quarantined are the unexpected ones, and their row numbers the examples."""
    observed = _number((ge.result or {}).get("observed_value"))
    loaded = int(observed) if observed is not None else result.row_count
    share = f" ({loaded / band.baseline_rows:.0%} of {band.baseline_rows:,})" if band.baseline_rows else ""
    if not result.observed:
        result.observed = f"{loaded:,} rows{share}"
    result.observed_number = float(loaded)
    if check["row_count"]["baseline"] != "file":
        return
    result.row_count = band.baseline_rows
    result.unexpected_count = max(band.baseline_rows - loaded, 0)
    if result.status == "failed" and result.unexpected_count:  # row numbers are kept in the quarantine for every feed
        where, params = _quarantine_filter(band.quarantined_columns)
        result.example_rows = [r[0] for r in conn.execute(
            "SELECT source_row FROM audit.quarantine WHERE load_id = %s" + where
            + f" ORDER BY source_row LIMIT {EXAMPLE_ROWS}", (ctx.load_id, *params)).fetchall()]


def _fill_counts(conn, check: dict, table: sql.Composable, ge: Any, result: CheckResult) -> None:
    """Unexpected count and observed value from GE's result; example row numbers (never values) by SQL."""
    info = ge.result or {}
    unexpected = info.get("unexpected_count")
    observed = info.get("observed_value")
    if check["expectation"] == "UnexpectedRowsExpectation":
        unexpected, observed = observed, f"{observed} rows returned by the rule's query"
    condition = failing_rows_condition(check, table)
    if unexpected is None and condition is not None and not result.observed.startswith("error"):
        unexpected = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, condition)).fetchone()[0]
    result.unexpected_count = int(unexpected) if unexpected is not None else None
    if not result.observed:
        if isinstance(observed, str) and check["expectation"] == "UnexpectedRowsExpectation":
            result.observed, result.observed_number = observed, _number(unexpected)
        elif _number(observed) is not None:
            # A count, share or statistic. Anything else (a date, a code, a list) could be a value from the
            # file, so it is not recorded.
            result.observed, result.observed_number = str(observed), _number(observed)
        elif observed is not None:
            result.observed = "(a value: not recorded)"
        elif unexpected is not None:
            percent = info.get("unexpected_percent_total", info.get("unexpected_percent"))
            result.observed = f"{int(unexpected):,} unexpected" + (f" ({percent:.2f}%)" if percent is not None else "")
            result.observed_number = float(unexpected)
    if (result.status == "failed" and condition is not None and (result.unexpected_count or 0) > 0
            and has_row_numbers(check["feed"])):
        result.example_rows = [r[0] for r in conn.execute(
            sql.SQL("SELECT source_row FROM {} WHERE {} ORDER BY source_row LIMIT {}").format(
                table, condition, sql.Literal(EXAMPLE_ROWS))).fetchall()]
