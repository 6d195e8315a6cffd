"""Quality gates: Great Expectations suites, built from `expectations/registry.yml`, run on each staged load.

A load is staged into its own table (`load_batch.load_<id>`); the gate validates that table inside
PostgreSQL through a Great Expectations SQL data source (nothing is pulled into pandas), records every
result in `audit.gate_result`, and says in one screen what failed: the rule, why it exists, how many
rows, and example row numbers (never values: values may identify someone).

The registry is the single place where rules live. Each rule names a Great Expectations 1.x expectation
class and its keyword arguments, plus a severity (error refuses the load, warn reports it), an OHDSI DQD
category and a one-line reason. A feed with no rules has no gate (`has_suite`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from pophealth import db

log = logging.getLogger("pophealth")

REGISTRY_ENV = "POPHEALTH_EXPECTATIONS_DIR"
REGISTRY_FILE = "registry.yml"
SEVERITIES = ("error", "warn")
CATEGORIES = ("conformance", "completeness", "plausibility")
EXAMPLE_ROWS = 5
ROWS_QUERY_PREFIX = "SELECT source_row FROM {batch}"

# Rules that measure presence itself: an empty column is their failure, never "not applicable".
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
    return Path(override) if override else Path(__file__).resolve().parents[1] / "expectations"


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


def registry_problems(data: dict) -> list[str]:
    """What is wrong with a registry (empty when it is well formed). Does not import Great Expectations."""
    from pophealth.feeds import FEED_SPECS

    problems: list[str] = []
    checks = data.get("checks")
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
        feed = check.get("feed")
        if feed not in FEED_SPECS:
            problems.append(f"{name}: unknown feed {feed!r}")
        elif not name.startswith(feed + "."):
            problems.append(f"{name}: the id must start with its feed ({feed}.)")
        if check.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {', '.join(SEVERITIES)}")
        if check.get("category") not in CATEGORIES:
            problems.append(f"{name}: category must be one of {', '.join(CATEGORIES)}")
        if not str(check.get("note") or "").strip():
            problems.append(f"{name}: a one-line note saying why the rule exists is required")
        if not isinstance(check.get("expectation"), str):
            problems.append(f"{name}: expectation (a Great Expectations class name) is required")
        if not isinstance(check.get("kwargs", {}), dict):
            problems.append(f"{name}: kwargs must be a mapping")
            continue
        query = (check.get("kwargs") or {}).get("unexpected_rows_query")
        if query is not None and not " ".join(str(query).split()).startswith(ROWS_QUERY_PREFIX):
            problems.append(f"{name}: unexpected_rows_query must start with '{ROWS_QUERY_PREFIX}' "
                            "(row numbers only, never values)")
        if feed in FEED_SPECS:
            known = set(FEED_SPECS[feed].table_columns) | {"source_row", "load_id"}
            for column in columns_of(check):
                if column not in known:
                    problems.append(f"{name}: {column} is not a column of {FEED_SPECS[feed].table}")
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


def _column(check: dict) -> str | None:
    """The single column of a one-column rule (None for pair and SQL rules)."""
    return (check.get("kwargs") or {}).get("column")


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


@dataclass
class GateOutcome:
    feed: str
    results: list[CheckResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """False exactly when an error rule failed; warnings and not-applicable rules never stop a load."""
        return not any(r.status == "failed" and r.severity == "error" for r in self.results)

    def failures(self, severity: str | None = None) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed" and (severity is None or r.severity == severity)]

    def summary(self) -> str:
        """One screen: the tally, then each failed rule with its reason, count and example row numbers."""
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("passed", "failed", "not_applicable")}
        lines = [f"{self.feed} suite: {counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['not_applicable']} not applicable"]
        ordered = sorted(self.failures(), key=lambda r: (r.severity != "error", r.check_id))
        for r in ordered:
            examples = ", ".join(str(n) for n in r.example_rows) or "-"
            count = "?" if r.unexpected_count is None else f"{r.unexpected_count:,}"
            lines.append(f"  {'FAILED' if r.severity == 'error' else 'warning'} [{r.severity}] {r.check_id}: {r.note}")
            lines.append(f"      {count} of {r.row_count:,} rows; threshold {r.threshold}; "
                         f"example rows (1 = first data row): {examples}")
        skipped = [r.check_id for r in self.results if r.status == "not_applicable"]
        if skipped:
            lines.append(f"  not applicable (column empty in this file): {', '.join(skipped)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Each rule's failing rows as SQL, for example row numbers (and a count when Great Expectations gives none)


def _literal_list(values: list) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(v) for v in values)


def failing_rows_condition(check: dict, table: sql.Composable) -> sql.Composable | None:
    """A WHERE condition true for the rows the rule rejects, or None when the rule has no row-level meaning."""
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
        pieces = " ".join(kw["unexpected_rows_query"].split()).split("{batch}")
        query = sql.Composed([sql.SQL(pieces[0])] + [part for piece in pieces[1:] for part in (table, sql.SQL(piece))])
        return sql.Composed([sql.SQL("source_row IN ("), query, sql.SQL(")")])
    return None


def _threshold(check: dict) -> str:
    kind = check["expectation"]
    kw = check.get("kwargs") or {}
    mostly = kw.get("mostly")
    share = f"{float(mostly):.0%} of rows" if mostly is not None else "every row"
    if kind == "ExpectColumnValuesToNotBeNull":
        return f"{kw['column']} present on {share}"
    if kind == "ExpectColumnValuesToBeInSet":
        return f"{kw['column']} in the contract's {len(kw['value_set'])} values on {share}"
    if kind == "ExpectColumnValuesToBeBetween":
        return f"{kw['column']} between {kw.get('min_value', '-inf')} and {kw.get('max_value', 'inf')} on {share}"
    if kind == "ExpectColumnPairValuesAToBeGreaterThanB":
        op = ">=" if kw.get("or_equal") else ">"
        where = " where both present" if kw.get("ignore_row_if") == "either_value_is_missing" else ""
        return f"{kw['column_A']} {op} {kw['column_B']} on {share}{where}"
    if kind == "UnexpectedRowsExpectation":
        return "no row"
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


def build_expectation(check: dict):
    """The Great Expectations expectation object for a registry rule."""
    gxe = import_great_expectations().expectations

    cls = getattr(gxe, check["expectation"], None)
    if cls is None:
        raise RegistryError(f"{check['id']}: great_expectations.expectations has no {check['expectation']}")
    kwargs = dict(check.get("kwargs") or {})
    if check["expectation"] == "UnexpectedRowsExpectation":
        kwargs["unexpected_rows_query"] = " ".join(kwargs["unexpected_rows_query"].split())
        kwargs.setdefault("description", check["note"])
    try:
        return cls(**kwargs, severity="critical" if check["severity"] == "error" else "warning",
                   notes=check["note"],
                   meta={"check_id": check["id"], "category": check["category"], "severity": check["severity"]})
    except Exception as exc:  # pydantic validation: a bad kwarg in the registry
        raise RegistryError(f"{check['id']}: {check['expectation']} rejects its kwargs: {exc}") from None


class _GX:
    """One ephemeral Great Expectations context and SQL data source per warehouse URL, reused between gates."""

    _lock = threading.Lock()
    _run_lock = threading.Lock()  # a GE context is not thread-safe: one validation at a time per process
    _instance: "_GX | None" = None

    def __init__(self, url: str):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.url = url
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_sql(name="warehouse", connection_string=url)

    @classmethod
    def for_url(cls, url: str) -> "_GX":
        with cls._lock:
            if cls._instance is None or cls._instance.url != url:
                cls._instance = _GX(url)
            return cls._instance

    def validate(self, schema: str, table: str, suite_name_: str, expectations: list) -> Any:
        with self._run_lock:
            return self._validate(schema, table, suite_name_, expectations)

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
        try:
            # BASIC gives counts; partial_unexpected_count 0 keeps even GE's in-memory result free of values.
            return validation.run(result_format={"result_format": "BASIC", "partial_unexpected_count": 0})
        finally:
            for remove in (lambda: self.context.validation_definitions.delete(name),
                           lambda: self.context.suites.delete(name),
                           lambda: self.source.delete_asset(asset_name)):
                try:
                    remove()
                except Exception:  # noqa: BLE001 - cleaning up an in-memory context
                    pass


def _validate(schema: str, table: str, suite: str, checks: list[dict]) -> dict[str, Any]:
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
        expectations = [build_expectation(c) for c in checks]
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
    checks = checks_for(feed)
    schema, _, name = batch_table.partition(".")
    table = sql.Identifier(schema, name)
    with db.connect() as conn:
        columns = sorted({c for check in checks for c in columns_of(check)})
        counts = conn.execute(
            sql.SQL("SELECT count(*){} FROM {}").format(
                sql.SQL("").join(sql.SQL(", count({})").format(sql.Identifier(c)) for c in columns), table)
        ).fetchone()
    row_count, present = counts[0], dict(zip(columns, counts[1:]))

    def applicable(check: dict) -> bool:
        if check["expectation"] in PRESENCE_EXPECTATIONS:
            return True
        read = columns_of(check)
        if not read:
            return True
        if (check.get("kwargs") or {}).get("ignore_row_if") == "both_values_are_missing":
            return any(present.get(c, 0) > 0 for c in read)
        return all(present.get(c, 0) > 0 for c in read)

    to_run = [c for c in checks if row_count and applicable(c)]
    ge_results = _validate(schema, name, suite_name(feed), to_run)

    results: list[CheckResult] = []
    with db.connect() as conn:
        for check in checks:
            result = CheckResult(check["id"], check["category"], check["severity"], "not_applicable", check["note"],
                                 row_count=row_count, threshold=_threshold(check), expectation=check["expectation"])
            ge = ge_results.get(check["id"])
            if ge is not None:
                problem = _evaluation_problem(ge.exception_info)
                if problem:
                    # A rule that could not be evaluated is a failure of that rule, never a silent pass.
                    result.status = "failed"
                    result.observed = "error: " + problem
                    log.warning("gate rule %s could not be evaluated: %s", check["id"], problem)
                else:
                    result.status = "passed" if ge.success else "failed"
                _fill_counts(conn, check, table, ge, result)
            results.append(result)
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, expectation, severity,
                                                  category, status, observed, observed_number, threshold,
                                                  unexpected_count, row_count, example_rows, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(load_id, run_id, feed, suite_name(feed), r.check_id, r.expectation, r.severity, r.category,
                  r.status, r.observed, r.observed_number, r.threshold, r.unexpected_count, r.row_count,
                  r.example_rows, r.note) for r in results],
            )
    outcome = GateOutcome(feed, results, seconds=time.monotonic() - started)
    log.info("quality gate for load %d ran %d rules in %.1fs: %s", load_id, len(results), outcome.seconds,
             outcome.summary().splitlines()[0])
    return outcome


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
    if result.status == "failed" and condition is not None and (result.unexpected_count or 0) > 0:
        result.example_rows = [r[0] for r in conn.execute(
            sql.SQL("SELECT source_row FROM {} WHERE {} ORDER BY source_row LIMIT {}").format(
                table, condition, sql.Literal(EXAMPLE_ROWS))).fetchall()]
