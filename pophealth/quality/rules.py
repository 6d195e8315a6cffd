"""The quality rules, read once from `expectations/registry.yml` (the load gates) and `expectations/marts.yml` (the
marts gate) into typed, frozen rule objects.

Both files have the same shape, and one validator checks both: the fields every rule has (id, expectation,
kwargs, severity, the OHDSI DQD category, subcategory and context, note) are checked once, then what each file
adds (a load rule's feed, row_count, by_provider, applies_to, reads_published; a marts rule's table, reports,
scan_text_columns). A malformed file is refused with every problem named: the file, the rule and the field, never
a stack trace. Great Expectations is not imported here (the gates import it on their first run), so the files can
be checked in a second.

Each file is parsed once per process, and again only when it changes on disk (its modification time).
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self, TypeVar

import yaml
from psycopg import sql

from pophealth.contract.feeds import FEEDS_BY_NAME

RULES_DIR_ENV = "POPHEALTH_EXPECTATIONS_DIR"
LOAD_RULES_FILE = "registry.yml"
MARTS_RULES_FILE = "marts.yml"

Severity = Literal["error", "warn"]
SEVERITIES: tuple[Severity, ...] = ("error", "warn")
CATEGORIES = ("conformance", "completeness", "plausibility")
# OHDSI DQD (Kahn et al. 2016): subcategories of conformance and plausibility (completeness has none), and
# the context: verification (against the contract and the file itself) or validation (against other data:
# the previous load, another feed already published).
SUBCATEGORIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "conformance": ("value", "relational", "computational"),
        "completeness": (),
        "plausibility": ("uniqueness", "atemporal", "temporal"),
    }
)
CONTEXTS = ("verification", "validation")

COMMON_KEYS = frozenset({"id", "expectation", "kwargs", "severity", "category", "subcategory", "context", "note"})
LOAD_RULE_KEYS = COMMON_KEYS | {"feed", "applies_to", "row_count", "by_provider", "reads_published"}
MARTS_RULE_KEYS = COMMON_KEYS | {"table", "reports", "scan_text_columns"}

ROWS_QUERY_PREFIX = "SELECT source_row FROM {batch}"
# Reference data and the opt-out list keep no row numbers: their SQL rules count rows and return nothing else.
COUNT_QUERY_PREFIX = "SELECT 1 FROM {batch}"
# What a load rule's SQL may name, besides {batch} (which Great Expectations fills): the load being gated.
LOAD_PLACEHOLDERS = ("batch", "load_id", "period_end", "provider")
#: The published schemas the marts gate validates (their candidates in the marts DAG); a marts rule's SQL may
#: name each one ({marts}, ...), filled with the schema being gated.
PUBLISHED = ("marts", "reporting", "direct_care")
MARTS_PLACEHOLDERS = ("batch",) + PUBLISHED
ROW_COUNT_BASELINES = ("file", "previous_load")
ROW_COUNT_KEYS = frozenset({"baseline", "min_ratio", "max_ratio", "min_baseline_rows", "only_quarantined_for"})
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")

# Rules that measure presence itself: an empty column is exactly their failure, never "not applicable".
PRESENCE_EXPECTATIONS = frozenset(
    {
        "ExpectColumnValuesToNotBeNull",
        "ExpectColumnValuesToBeNull",
        "ExpectColumnProportionOfNonNullValuesToBeBetween",
        "ExpectTableRowCountToBeBetween",
        "ExpectTableRowCountToEqual",
        "ExpectTableColumnsToMatchSet",
        "ExpectTableColumnsToMatchOrderedList",
        "ExpectColumnToExist",
    }
)


class RulesError(ValueError):
    """A rules file is missing or malformed; the message names the file, and each rule and field that is wrong."""


# ----------------------------------------------------------------------------------------------------------
# The rule objects


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What every rule has, in either file."""

    id: str
    expectation: str  # a class of great_expectations.expectations
    kwargs: Mapping[str, Any]  # that class's own keyword arguments: the threshold is here (mostly, ...)
    severity: Severity  # error refuses the load (or the marts); warn is recorded and reported
    category: str  # OHDSI DQD: conformance | completeness | plausibility
    subcategory: str | None  # None for completeness
    context: str  # verification | validation
    note: str  # why the rule exists, shown in the gate summary

    @property
    def query(self) -> str | None:
        """The rule's SQL (UnexpectedRowsExpectation), with its whitespace as written; None for other rules."""
        query = self.kwargs.get("unexpected_rows_query")
        return None if query is None else str(query)

    @property
    def one_line_query(self) -> str:
        """The rule's SQL on one line (as the gates compare and run it); empty for a rule without SQL."""
        return " ".join((self.query or "").split())

    def with_kwargs(self, **changes: Any) -> Self:
        """The same rule with some kwargs changed (a query's placeholders filled, a band's bounds set)."""
        return replace(self, kwargs=_frozen({**self.kwargs, **changes}))


@dataclass(frozen=True, kw_only=True)
class RowCount:
    """A load rule on the number of rows (`row_count`): the batch's rows as a share of a baseline."""

    baseline: Literal["file", "previous_load"]
    min_ratio: float | None = None
    max_ratio: float | None = None
    min_baseline_rows: int = 0
    only_quarantined_for: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ProviderThreshold:
    """One source's own thresholds for a rule (`by_provider`): only values the rule already sets."""

    kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    row_count: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True, kw_only=True)
class LoadRule(Rule):
    """A rule of `registry.yml`, run on each staged load of its feed."""

    feed: str
    applies_to: tuple[str, ...] = ()  # the columns a rule written as SQL reads
    row_count: RowCount | None = None
    by_provider: Mapping[str, ProviderThreshold] = field(default_factory=lambda: _frozen({}))
    reads_published: tuple[str, ...] = ()  # schema.table.column of published data it compares with
    threshold_of: str | None = None  # the source whose own threshold applies (`for_provider`)

    @property
    def columns(self) -> list[str]:
        """The columns the rule reads: its column kwargs, or `applies_to` for rules written as SQL."""
        return columns_of(self.kwargs, self.applies_to)

    def for_provider(self, provider: str | None) -> LoadRule:
        """The rule as it applies to one source: its `by_provider` thresholds merged in."""
        override = self.by_provider.get(provider) if provider else None
        if override is None:
            return self
        row_count = self.row_count
        if row_count is not None and override.row_count:
            changes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in override.row_count.items()}
            row_count = replace(row_count, **changes)
        return replace(
            self, kwargs=_frozen({**self.kwargs, **override.kwargs}), row_count=row_count, threshold_of=provider
        )


@dataclass(frozen=True, kw_only=True)
class MartsRule(Rule):
    """A rule of `marts.yml`, run on a published table (its candidate) before analysts see it."""

    table: str  # schema.table, as published
    reports: Literal["columns"] | None = None  # the query returns column names (`found`), not rows
    scan_text_columns: str | None = None  # a condition on {value}, applied to every text column

    @property
    def is_table_level(self) -> bool:
        """A rule that counts something other than rows: tiers of the wrong size, identifiable columns."""
        return self.reports == "columns" or self.one_line_query.startswith("SELECT 1 FROM")


@dataclass(frozen=True)
class MartsRules:
    """`marts.yml`: each published table's key (its grain, in whose order example rows are numbered), and the rules."""

    tables: Mapping[str, tuple[str, ...]]
    rules: tuple[MartsRule, ...]


def columns_of(kwargs: Mapping[str, Any], applies_to: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The columns named by an expectation's kwargs, then those of `applies_to` not among them."""
    columns: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str):
            columns.append(value)
        elif isinstance(value, list):
            columns.extend(value)
    return columns + [c for c in applies_to if c not in columns]


# ----------------------------------------------------------------------------------------------------------
# Reading the files, once


def rules_dir() -> Path:
    override = os.environ.get(RULES_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "expectations"


_T = TypeVar("_T")
_cache: dict[tuple[str, int], Any] = {}


def _read(name: str, parse: Callable[[Any], tuple[_T, list[str]]]) -> _T:
    path = rules_dir() / name
    if not path.is_file():
        raise RulesError(f"the quality rules {path} do not exist (set {RULES_DIR_ENV} to their folder)")
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _cache:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            # The parser's own account: the line and column (it quotes the file, which holds rules, not data).
            raise RulesError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        parsed, problems = parse(data)
        if problems:
            raise RulesError(f"{path}: " + "; ".join(problems))
        for old in [k for k in _cache if k[0] == key[0]]:
            del _cache[old]
        _cache[key] = parsed
    return _cache[key]


def load_rules() -> tuple[LoadRule, ...]:
    """The rules of the load gates (`registry.yml`), validated: RulesError when the file is malformed."""
    return _read(LOAD_RULES_FILE, parse_load_rules)


def marts_rules() -> MartsRules:
    """The rules of the marts gate (`marts.yml`), validated: RulesError when the file is malformed."""
    return _read(MARTS_RULES_FILE, parse_marts_rules)


def load_rule_problems(data: Any) -> list[str]:
    """What is wrong with the contents of a `registry.yml` (empty when it is well formed)."""
    return parse_load_rules(data)[1]


def marts_rule_problems(data: Any) -> list[str]:
    """What is wrong with the contents of a `marts.yml` (empty when it is well formed)."""
    return parse_marts_rules(data)[1]


# ----------------------------------------------------------------------------------------------------------
# The validator: what every rule has, then what each file adds


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _common(entry: dict, name: str, keys: frozenset[str]) -> list[str]:
    problems: list[str] = []
    unknown = sorted(str(k) for k in set(entry) - keys)
    if unknown:
        problems.append(f"{name}: unknown keys {', '.join(unknown)}")
    if entry.get("severity") not in SEVERITIES:
        problems.append(f"{name}: severity must be one of {', '.join(SEVERITIES)}")
    category, subcategory = entry.get("category"), entry.get("subcategory")
    if not isinstance(category, str) or category not in CATEGORIES:
        problems.append(f"{name}: category must be one of {', '.join(CATEGORIES)}")
    elif SUBCATEGORIES[category] and subcategory not in SUBCATEGORIES[category]:
        problems.append(f"{name}: subcategory of {category} must be one of {', '.join(SUBCATEGORIES[category])}")
    elif not SUBCATEGORIES[category] and subcategory is not None:
        problems.append(f"{name}: {category} has no subcategory")
    if entry.get("context") not in CONTEXTS:
        problems.append(f"{name}: context must be one of {', '.join(CONTEXTS)}")
    note = entry.get("note")
    if not isinstance(note, str) or not note.strip():
        problems.append(f"{name}: a one-line note saying why the rule exists is required")
    if not isinstance(entry.get("expectation"), str):
        problems.append(f"{name}: expectation (a Great Expectations class name) is required")
    return problems


def _common_fields(entry: dict) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "expectation": entry["expectation"],
        "kwargs": _frozen(entry.get("kwargs") or {}),
        "severity": entry["severity"],
        "category": entry["category"],
        "subcategory": entry.get("subcategory"),
        "context": entry["context"],
        "note": entry["note"],
    }


def _entries(data: Any, what: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """The rules of a file as (id, entry), with the problems of ids and shapes: the rest is checked by kind."""
    checks = data.get("checks") if isinstance(data, dict) else None
    if not isinstance(checks, list):
        return [], [f"{what} needs a top-level list `checks`"]
    entries: list[tuple[str, dict]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(checks):
        name = entry.get("id") if isinstance(entry, dict) else None
        if not name:
            problems.append(f"check #{i + 1} has no id")
            continue
        if not isinstance(name, str):
            problems.append(f"check #{i + 1}: its id must be text, <feed or table>.<what>")
            continue
        if name in seen:
            problems.append(f"{name}: the id is used twice")
        seen.add(name)
        entries.append((name, entry))
    return entries, problems


def _names(value: Any) -> bool:
    """Whether a value is a list of names (columns, references)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# ---- registry.yml


def has_row_numbers(feed: str) -> bool:
    """Whether the feed's batch table keeps each row's number in the file (`source_row`): the personal feeds.
    Reference data and the opt-out list are stored without it (pophealth/ingest/load.py)."""
    return feed in FEEDS_BY_NAME and FEEDS_BY_NAME[feed].personal


def parse_load_rules(data: Any) -> tuple[tuple[LoadRule, ...], list[str]]:
    """The rules of a `registry.yml`'s contents, and what is wrong with it (when anything is, use no rule)."""
    entries, problems = _entries(data, "the registry")
    rules: list[LoadRule] = []
    for name, entry in entries:
        found = _common(entry, name, LOAD_RULE_KEYS)
        feed = entry.get("feed")
        if not isinstance(feed, str) or feed not in FEEDS_BY_NAME:
            found.append(f"{name}: unknown feed {feed!r}")
            feed = None
        elif not name.startswith(feed + "."):
            found.append(f"{name}: the id must start with its feed ({feed}.)")
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            problems.extend(found + [f"{name}: kwargs must be a mapping"])
            continue
        applies_to = entry.get("applies_to") or []
        if not _names(applies_to):
            found.append(f"{name}: applies_to must be a list of the columns the rule reads")
            applies_to = []
        if "row_count" in entry:
            found.extend(_row_count_problems(name, feed, entry, entry["row_count"]))
        if "by_provider" in entry:
            found.extend(_override_problems(name, feed, entry))
        reads_published = entry.get("reads_published") or []
        if not _names(reads_published):
            found.append(f"{name}: reads_published must be a list of schema.table.column")
            reads_published = []
        for reference in reads_published:
            if published_column(reference) is None:
                found.append(f"{name}: reads_published {reference!r} is not schema.table.column of a published table")
        query = kwargs.get("unexpected_rows_query")
        if query is not None and feed is not None:
            problem = load_query_problem(feed, query)
            if problem:
                found.append(f"{name}: {problem}")
        if feed is not None:
            known = set(FEEDS_BY_NAME[feed].table_columns) | {"load_id"}
            if has_row_numbers(feed):
                known.add("source_row")
            for column in columns_of(kwargs, applies_to):
                if column not in known:
                    found.append(f"{name}: {column} is not a column of {FEEDS_BY_NAME[feed].table}")
        problems.extend(found)
        if not found:
            rules.append(_load_rule(entry))
    return tuple(rules), problems


def _load_rule(entry: dict) -> LoadRule:
    """The rule object of an entry the validator found well formed."""
    spec = entry.get("row_count")
    row_count = (
        None
        if spec is None
        else RowCount(
            baseline=spec["baseline"],
            min_ratio=spec.get("min_ratio"),
            max_ratio=spec.get("max_ratio"),
            min_baseline_rows=spec.get("min_baseline_rows", 0),
            only_quarantined_for=tuple(spec.get("only_quarantined_for") or ()),
        )
    )
    by_provider = {
        str(provider): ProviderThreshold(
            kwargs=_frozen(override.get("kwargs") or {}), row_count=_frozen(override.get("row_count") or {})
        )
        for provider, override in (entry.get("by_provider") or {}).items()
    }
    return LoadRule(
        **_common_fields(entry),
        feed=entry["feed"],
        applies_to=tuple(entry.get("applies_to") or ()),
        row_count=row_count,
        by_provider=_frozen(by_provider),
        reads_published=tuple(entry.get("reads_published") or ()),
    )


def _row_count_problems(name: str, feed: str | None, check: dict, spec: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(spec, dict):
        return [f"{name}: row_count must be a mapping"]
    if check.get("expectation") != "ExpectTableRowCountToBeBetween":
        problems.append(f"{name}: row_count goes with ExpectTableRowCountToBeBetween")
    unknown = sorted(str(k) for k in set(spec) - ROW_COUNT_KEYS)
    if unknown:
        problems.append(f"{name}: row_count has unknown keys {', '.join(unknown)}")
    if spec.get("baseline") not in ROW_COUNT_BASELINES:
        problems.append(f"{name}: row_count baseline must be one of {', '.join(ROW_COUNT_BASELINES)}")
    ratios: list[Any] = [spec.get(k) for k in ("min_ratio", "max_ratio") if spec.get(k) is not None]
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
        if not _names(only) or not only:
            problems.append(f"{name}: only_quarantined_for must be a list of the file's columns")
        elif feed is not None:
            for column in only:
                if column not in FEEDS_BY_NAME[feed].contract_columns:
                    problems.append(
                        f"{name}: only_quarantined_for names {column}, not a column of an extract of {feed}"
                    )
    if {"min_value", "max_value"} & set(check.get("kwargs") or {}):
        problems.append(f"{name}: with row_count, min_value and max_value are computed; do not set them")
    return problems


def _override_problems(name: str, feed: str | None, check: dict) -> list[str]:
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
                if not isinstance(base, dict) or key not in base:
                    problems.append(
                        f"{name}: by_provider {provider} overrides {part}.{key}, which the rule does not set"
                    )
                elif _is_number(base[key]) != _is_number(value):
                    problems.append(f"{name}: by_provider {provider} {part}.{key} must be a number like the rule's")
    return problems


def published_column(reference: Any) -> tuple[str, str] | None:
    """`schema.table.column` of a feed's published table, as (table, column); None when it is not one."""
    if not isinstance(reference, str) or reference.count(".") != 2:
        return None
    table, _, column = reference.rpartition(".")
    for spec in FEEDS_BY_NAME.values():
        if spec.table == table and column in spec.table_columns:
            return table, column
    return None


# ---- marts.yml


def parse_marts_rules(data: Any) -> tuple[MartsRules, list[str]]:
    """The rules of a `marts.yml`'s contents, and what is wrong with it (when anything is, use no rule)."""
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
        return MartsRules(_frozen({}), ()), ["the file needs a top-level list `checks`"]
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables:
        return MartsRules(_frozen({}), ()), ["the file needs `tables`: each published table's key"]
    problems: list[str] = []
    for table, key in tables.items():
        if str(table).partition(".")[0] not in PUBLISHED or "." not in str(table):
            problems.append(f"tables: {table} is not <marts|reporting>.<table>")
        if not _names(key) or not key:
            problems.append(f"tables: {table} needs its key columns")
    entries, found_in_ids = _entries(data, "the file")
    problems.extend(found_in_ids)
    rules: list[MartsRule] = []
    for name, entry in entries:
        found = _common(entry, name, MARTS_RULE_KEYS)
        table = entry.get("table")
        if not isinstance(table, str) or table not in tables:
            problems.extend(found + [f"{name}: table {table!r} is not one of `tables`"])
            continue
        if not (name.startswith(table + ".") or name.startswith("published.")):
            found.append(f"{name}: the id must start with its table ({table}.) or published.")
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            problems.extend(found + [f"{name}: kwargs must be a mapping"])
            continue
        reports = entry.get("reports")
        if reports not in (None, "columns"):
            found.append(f"{name}: reports may only be `columns`")
        if "scan_text_columns" in entry:
            if reports != "columns" or entry.get("expectation") != "UnexpectedRowsExpectation":
                found.append(f"{name}: scan_text_columns goes with UnexpectedRowsExpectation and reports: columns")
            if "unexpected_rows_query" in kwargs:
                found.append(f"{name}: scan_text_columns writes the query; do not set unexpected_rows_query")
            if not isinstance(entry["scan_text_columns"], str) or "{value}" not in entry["scan_text_columns"]:
                found.append(f"{name}: scan_text_columns is a condition on {{value}}")
        elif entry.get("expectation") == "UnexpectedRowsExpectation":
            query = kwargs.get("unexpected_rows_query")
            key = tables[table] if _names(tables[table]) else []
            problem = marts_query_problem(query, key, reports) if query else "unexpected_rows_query is required"
            if problem:
                found.append(f"{name}: {problem}")
        problems.extend(found)
        if not found:
            rules.append(
                MartsRule(
                    **_common_fields(entry),
                    table=table,
                    reports=reports,
                    scan_text_columns=entry.get("scan_text_columns"),
                )
            )
    if problems:
        return MartsRules(_frozen({}), ()), problems
    return MartsRules(_frozen({str(t): tuple(k) for t, k in tables.items()}), tuple(rules)), problems


# ----------------------------------------------------------------------------------------------------------
# A rule written as SQL


_ROWS_QUERY = re.compile(r"^SELECT (?:(?P<alias>\w+)\.)?source_row FROM \{batch\}(?: (?P<as>\w+))?")
_BATCH_FOLLOWED_BY = re.compile(r"\{batch\}\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
_AFTER_TABLE = frozenset(
    {
        "where",
        "group",
        "order",
        "union",
        "limit",
        "except",
        "intersect",
        "join",
        "on",
        "left",
        "right",
        "inner",
        "full",
        "cross",
        "having",
        "window",
        "fetch",
        "offset",
    }
)


def has_join(query: str) -> bool:
    return re.search(r"\bJOIN\b", query, re.IGNORECASE) is not None


def unaliased_batch_in_a_join(query: str) -> bool:
    """Whether a query with a JOIN names {batch} without an alias somewhere. Great Expectations leaves {batch}
    unaliased in a query with a JOIN (the rule aliases it), and PostgreSQL before 16 refuses a subquery in FROM
    without an alias: such a rule passes on PostgreSQL 16 and cannot be evaluated on 15 (Debian 12's)."""
    if not has_join(query):
        return False
    return any(
        alias is None or alias.lower() in _AFTER_TABLE
        for alias in (m.group(1) for m in re.finditer(r"\{batch\}(?:\s+(?:AS\s+)?(\w+))?", query, re.IGNORECASE))
    )


def _placeholder_problem(query: str, allowed: tuple[str, ...]) -> str | None:
    """Unpaired braces, or a {name} the gate does not fill."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(query) if name is not None]
    except ValueError:
        return "unexpected_rows_query has unpaired braces"
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        return f"unexpected_rows_query names {{{unknown[0]}}}; the placeholders are " + ", ".join(
            "{" + p + "}" for p in allowed
        )
    return None


def load_query_problem(feed: str, query: Any) -> str | None:
    """What is wrong with a load rule's SQL, or None. It returns row numbers (`SELECT source_row FROM {batch}`;
    with a join, `SELECT b.source_row FROM {batch} b JOIN ...`), or for a feed without row numbers counts
    rows (`SELECT 1 FROM {batch}`). Great Expectations aliases {batch} itself unless the query has a JOIN,
    so only a query with a JOIN may alias it."""
    query = " ".join(str(query).split())
    if has_row_numbers(feed):
        match = _ROWS_QUERY.match(query)
        if match is None or (match.group("alias") and match.group("alias") != match.group("as")):
            return (
                f"unexpected_rows_query must start with '{ROWS_QUERY_PREFIX}' (or, joining, "
                "'SELECT b.source_row FROM {batch} b JOIN ...'): row numbers only, never values"
            )
    elif not query.startswith(COUNT_QUERY_PREFIX):
        return (
            f"unexpected_rows_query must start with '{COUNT_QUERY_PREFIX}' "
            f"({feed} keeps no row numbers: count rows, never return values)"
        )
    aliased = [w for w in _BATCH_FOLLOWED_BY.findall(query) if w.lower() not in _AFTER_TABLE]
    if aliased and not has_join(query):
        return "unexpected_rows_query aliases {batch} without a JOIN (Great Expectations aliases it itself then)"
    return _placeholder_problem(query, LOAD_PLACEHOLDERS)


def marts_query_problem(query: Any, key: list[str] | tuple[str, ...], reports: str | None) -> str | None:
    """What is wrong with a marts rule's SQL, or None: it returns the table's key, or 1, or (reporting columns)
    `found`; never values."""
    query = " ".join(str(query).split())
    starts = (
        ["SELECT found FROM"] if reports == "columns" else [f"SELECT {', '.join(key)} FROM {{batch}}", "SELECT 1 FROM"]
    )
    if not any(query.startswith(s) for s in starts):
        return "unexpected_rows_query must start with " + " or ".join(f"'{s}'" for s in starts)
    if unaliased_batch_in_a_join(query):
        return (
            "unexpected_rows_query has a JOIN and names {batch} without an alias (Great Expectations aliases "
            "it only in a query without a JOIN; PostgreSQL before 16 refuses a subquery without one)"
        )
    return _placeholder_problem(query, MARTS_PLACEHOLDERS)


# ----------------------------------------------------------------------------------------------------------
# What a rule means, in words and as SQL (both gates)


def _share(mostly: Any) -> str:
    return f"at least {float(mostly):.0%} of rows" if mostly is not None else "every row"


def _values(value_set: list) -> str:
    """A rule's value set as the summary shows it: the registry's own values (never the file's), or their number."""
    if len(value_set) <= 6:
        return "(" + ", ".join(str(v) for v in value_set) + ")"
    return f"the contract's {len(value_set)} values"


def threshold(rule: Rule, source: str = "") -> str:
    """The rule's threshold in words, for the summary and audit.gate_result (a load rule on the number of rows
    says its band itself: pophealth/quality/gates.py). `source` names whose threshold it is, when a source's own."""
    kind = rule.expectation
    kw = rule.kwargs
    share = _share(kw.get("mostly"))
    if kind == "ExpectColumnValuesToNotBeNull":
        return f"{kw['column']} present on {share}{source}"
    if kind == "ExpectColumnValuesToBeInSet":
        return f"{kw['column']} in {_values(kw['value_set'])} on {share}{source}"
    if kind == "ExpectColumnValuesToNotBeInSet":
        return f"{kw['column']} not in {_values(kw['value_set'])} on {share}{source}"
    if kind == "ExpectColumnValuesToBeBetween":
        return (
            f"{kw['column']} between {kw.get('min_value', '-inf')} and {kw.get('max_value', 'inf')} on {share}{source}"
        )
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
    shown = {k: v for k, v in kw.items() if k not in _COLUMN_KWARGS and k != "value_set"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "as the expectation defines"


def expectation_arguments(rule: Rule) -> dict[str, Any]:
    """Everything the rule's Great Expectations expectation is made with (both gates, and the results a gate keeps
    itself: pophealth/quality/data_docs.py): its kwargs, the rule's SQL on one line, a load rule on the number of
    rows (`row_count`) accepting any count until the load gate sets its bounds for the load
    (pophealth/quality/gates.py); its severity, the rule's note, and the rule's own fields as `meta`."""
    arguments = dict(rule.kwargs)
    if rule.expectation == "UnexpectedRowsExpectation":
        arguments["unexpected_rows_query"] = rule.one_line_query
        arguments.setdefault("description", rule.note)
    if isinstance(rule, LoadRule) and rule.row_count is not None:
        arguments.setdefault("min_value", 0)
        arguments.setdefault("max_value", None)
    arguments["severity"] = "critical" if rule.severity == "error" else "warning"
    arguments["notes"] = rule.note
    arguments["meta"] = {
        "check_id": rule.id,
        "category": rule.category,
        "severity": rule.severity,
        "context": rule.context,
        "subcategory": rule.subcategory,
    }
    return arguments


def _literal_list(values: list) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(v) for v in values)


def failing_rows_condition(rule: Rule, table: sql.Composable) -> sql.Composable | None:
    """A WHERE condition true for the rows a built-in expectation rejects, or None when it has no row-level
    meaning. (A rule written as SQL names its rows itself: each gate turns its query into rows its own way.)"""
    kind = rule.expectation
    kw = rule.kwargs
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
        # The repeated values gathered once, then looked up: `IN (SELECT ...)` was planned, under PostgreSQL's
        # default work_mem, as a subquery scanned again for every row, which did not end within 90 s on the
        # 1,438,682 rows of all Essex's risk_stratification (this: 1.1 s; issue 19).
        return sql.SQL("{c} = ANY (ARRAY(SELECT {c} FROM {t} GROUP BY {c} HAVING count(*) > 1))").format(c=col, t=table)
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
    return None
