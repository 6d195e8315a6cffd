"""The marts gate, and write-audit-publish for the published schemas (issue 5).

The marts DAG builds `marts` and `reporting` with dbt into candidate schemas (`marts__candidate`,
`reporting__candidate`: the dbt var `build_candidates`, read by the project's `generate_schema_name`), then
`run_marts_gate` validates the candidates with the rules of `expectations/marts.yml`, as one Great
Expectations suite (`marts_publish`) run inside PostgreSQL through the same SQL data source as the load gates
(pophealth/quality/gates.py), and records every result in `audit.gate_result` (load_id 0, feed `marts`). Only when no
`error` rule failed does `publish_candidates` swap the candidates in, in one transaction: the current schema is
renamed `<name>__previous`, the candidate takes the name, the previous one is dropped, and the analyst's USAGE on
the schema is granted again (a schema's privileges stay with the schema object; the tables' SELECT grants
come from dbt's `grants` config and moved with the tables). A failed gate leaves the candidates where they are
(for the data engineer to look at) and analysts keep the last good marts.

Builds outside the DAG (tests, `fit-risk-model`, `rotate-key`) pass no var and build straight into the real
schemas; `run_marts_gate(candidates=False)` gates those in place.

Examples of failing rows are row numbers in the mart's key order (1 = the first row by the table's key, as
declared in marts.yml), never values; a rule over columns names the columns (schema metadata), never a value.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import string
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from pophealth.quality import gates
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

RULES_FILE = "marts.yml"
SUITE = "marts_publish"
FEED = "marts"          # audit.gate_result.feed
LOAD_ID = 0             # audit.gate_result.load_id is NOT NULL: the marts gate is not a load, so 0
PUBLISHED = ("marts", "reporting", "direct_care")
#: Who reads each published schema (pophealth/warehouse/access.sql); USAGE is granted again after each swap.
READER = {"marts": "analyst", "reporting": "analyst", "direct_care": "care_team"}
CANDIDATE = "__candidate"
PREVIOUS = "__previous"
PLACEHOLDERS = ("batch",) + PUBLISHED
RULE_KEYS = frozenset({"id", "table", "expectation", "kwargs", "severity", "category", "subcategory", "context",
                       "note", "reports", "scan_text_columns"})
EXAMPLE_COLUMNS = 5
TEXT_TYPES = ("text", "character varying", "character")


class MartsRulesError(ValueError):
    """expectations/marts.yml is malformed; the message names the rule and what is wrong with it."""


class PublishRefused(RuntimeError):
    """There is nothing to publish (no candidate schema)."""


# ----------------------------------------------------------------------------------------------------------
# The rules


def rules_path() -> Path:
    return gates.registry_dir() / RULES_FILE


_cache: dict[tuple[str, float], dict] = {}


def rules() -> dict:
    path = rules_path()
    if not path.is_file():
        raise MartsRulesError(f"the marts rules {path} do not exist")
    key = (str(path), path.stat().st_mtime)
    if key not in _cache:
        data = yaml.safe_load(path.read_text()) or {}
        problems = rule_problems(data)
        if problems:
            raise MartsRulesError(f"{path}: " + "; ".join(problems))
        _cache.clear()
        _cache[key] = data
    return _cache[key]


def _placeholders(query: str) -> list[str] | None:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(query) if name is not None]
    except ValueError:
        return None


def query_problem(query: str, key: list[str], reports: str | None) -> str | None:
    """What is wrong with a rule's SQL, or None: it returns the table's key, or 1, or (reporting columns)
    `found`; never values."""
    query = " ".join(str(query).split())
    starts = ["SELECT found FROM"] if reports == "columns" else [f"SELECT {', '.join(key)} FROM {{batch}}",
                                                                 "SELECT 1 FROM"]
    if not any(query.startswith(s) for s in starts):
        return "unexpected_rows_query must start with " + " or ".join(f"'{s}'" for s in starts)
    if gates.unaliased_batch_in_a_join(query):
        return ("unexpected_rows_query has a JOIN and names {batch} without an alias (Great Expectations aliases "
                "it only in a query without a JOIN; PostgreSQL before 16 refuses a subquery without one)")
    names = _placeholders(query)
    if names is None:
        return "unexpected_rows_query has unpaired braces"
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        return f"unexpected_rows_query names {{{unknown[0]}}}; the placeholders are " + ", ".join(
            "{" + p + "}" for p in PLACEHOLDERS)
    return None


def rule_problems(data: Any) -> list[str]:
    """What is wrong with the marts rules (empty when well formed). Does not import Great Expectations."""
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
        return ["the file needs a top-level list `checks`"]
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables:
        return ["the file needs `tables`: each published table's key"]
    problems: list[str] = []
    for table, key in tables.items():
        if str(table).partition(".")[0] not in PUBLISHED or "." not in str(table):
            problems.append(f"tables: {table} is not <marts|reporting>.<table>")
        if not isinstance(key, list) or not key:
            problems.append(f"tables: {table} needs its key columns")
    seen: set[str] = set()
    for i, check in enumerate(data["checks"]):
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
        table = check.get("table")
        if table not in tables:
            problems.append(f"{name}: table {table!r} is not one of `tables`")
            continue
        if not (name.startswith(table + ".") or name.startswith("published.")):
            problems.append(f"{name}: the id must start with its table ({table}.) or published.")
        if check.get("severity") not in gates.SEVERITIES:
            problems.append(f"{name}: severity must be one of {', '.join(gates.SEVERITIES)}")
        category = check.get("category")
        if category not in gates.CATEGORIES:
            problems.append(f"{name}: category must be one of {', '.join(gates.CATEGORIES)}")
        elif gates.SUBCATEGORIES[category] and check.get("subcategory") not in gates.SUBCATEGORIES[category]:
            problems.append(f"{name}: subcategory of {category} must be one of "
                            f"{', '.join(gates.SUBCATEGORIES[category])}")
        if check.get("context") not in gates.CONTEXTS:
            problems.append(f"{name}: context must be one of {', '.join(gates.CONTEXTS)}")
        if not str(check.get("note") or "").strip():
            problems.append(f"{name}: a one-line note saying why the rule exists is required")
        if not isinstance(check.get("expectation"), str):
            problems.append(f"{name}: expectation (a Great Expectations class name) is required")
        kwargs = check.get("kwargs", {})
        if not isinstance(kwargs, dict):
            problems.append(f"{name}: kwargs must be a mapping")
            continue
        reports = check.get("reports")
        if reports not in (None, "columns"):
            problems.append(f"{name}: reports may only be `columns`")
        if "scan_text_columns" in check:
            if reports != "columns" or check.get("expectation") != "UnexpectedRowsExpectation":
                problems.append(f"{name}: scan_text_columns goes with UnexpectedRowsExpectation and reports: columns")
            if "unexpected_rows_query" in kwargs:
                problems.append(f"{name}: scan_text_columns writes the query; do not set unexpected_rows_query")
            if "{value}" not in str(check["scan_text_columns"]):
                problems.append(f"{name}: scan_text_columns is a condition on {{value}}")
        elif check.get("expectation") == "UnexpectedRowsExpectation":
            query = kwargs.get("unexpected_rows_query")
            problem = query_problem(query, tables[table], reports) if query else "unexpected_rows_query is required"
            if problem:
                problems.append(f"{name}: {problem}")
    return problems


def all_checks() -> list[dict]:
    return list(rules()["checks"])


def table_key(table: str) -> list[str]:
    return list(rules()["tables"][table])


# ----------------------------------------------------------------------------------------------------------
# Schemas


def schema_of(published: str, candidates: bool) -> str:
    return published + (CANDIDATE if candidates else "")


def _schema_exists(conn, schema: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema,)).fetchone()[0]


def candidates_exist() -> bool:
    with db.connect() as conn:
        return all(_schema_exists(conn, schema_of(s, True)) for s in PUBLISHED)


def drop_candidates() -> list[str]:
    """Drop candidate schemas left by an earlier run (a refused build), so that dbt builds them afresh."""
    dropped = []
    with db.connect() as conn:
        for published in PUBLISHED:
            schema = schema_of(published, True)
            if _schema_exists(conn, schema):
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                dropped.append(schema)
    if dropped:
        log.info("dropped the candidate schemas of an earlier build: %s", ", ".join(dropped))
    return dropped


def publish_candidates(lock_timeout: str = "60s", newest_load_id: int | None = None,
                       run_id: str | None = None) -> list[str]:
    """Swap the candidate schemas in, all in one transaction: analysts see the old marts or the new, never a mix.
    The publication is recorded in the same transaction (audit.marts_publication), with the newest load the
    candidates were built on (by default, the newest published now)."""
    with db.connect() as conn:
        missing = [schema_of(s, True) for s in PUBLISHED if not _schema_exists(conn, schema_of(s, True))]
        if missing:
            raise PublishRefused(f"nothing to publish: {', '.join(missing)} does not exist (did dbt build the "
                                 "candidates, with the var build_candidates?)")
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        for published in PUBLISHED:
            real, candidate, previous = (sql.Identifier(published), sql.Identifier(published + CANDIDATE),
                                         sql.Identifier(published + PREVIOUS))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(previous))
            if _schema_exists(conn, published):
                conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(real, previous))
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(candidate, real))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(previous))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(real, sql.Identifier(READER[published])))
        conn.execute("""INSERT INTO audit.marts_publication (run_id, newest_load_id)
                        VALUES (%s, coalesce(%s, (SELECT max(load_id) FROM audit.load
                                                  WHERE published_at IS NOT NULL)))""",
                     (run_id, newest_load_id))
    log.info("published %s", ", ".join(f"{s}{CANDIDATE} as {s}" for s in PUBLISHED))
    return list(PUBLISHED)


# ----------------------------------------------------------------------------------------------------------
# Binding a rule to the schemas being gated


def _bind(text: str, schemas: dict[str, str]) -> str:
    for published, schema in schemas.items():
        text = text.replace("{" + published + "}", schema)
    return text


def _text_columns(conn, schemas: dict[str, str]) -> list[tuple[str, str, str]]:
    return conn.execute(
        """SELECT table_schema, table_name, column_name FROM information_schema.columns
           WHERE table_schema = ANY(%s) AND data_type = ANY(%s)
           ORDER BY table_schema, table_name, ordinal_position""",
        (list(schemas.values()), list(TEXT_TYPES))).fetchall()


def _scan_query(conn, condition: str, schemas: dict[str, str]) -> str:
    """The query a `scan_text_columns` rule runs: for every text column of the gated schemas, the column's
    name when any value meets the condition (one existence test per column, every row: no sample)."""
    parts = []
    for schema, table, column in _text_columns(conn, schemas):
        value = sql.Identifier(column).as_string(conn)
        where = " ".join(condition.split()).replace("{value}", value)
        name = f"{schema}.{table}.{column}".replace("'", "''")
        parts.append(f"SELECT '{name}' AS found WHERE EXISTS (SELECT 1 FROM "
                     f"{sql.Identifier(schema, table).as_string(conn)} WHERE {where})")
    inner = " UNION ALL ".join(parts) if parts else "SELECT CAST(NULL AS text) AS found WHERE false"
    return f"SELECT found FROM ({inner}) AS scanned"


def _bound(conn, check: dict, schemas: dict[str, str]) -> dict:
    check = {**check, "kwargs": dict(check.get("kwargs") or {})}
    if "scan_text_columns" in check:
        check["kwargs"]["unexpected_rows_query"] = _scan_query(conn, check["scan_text_columns"], schemas)
    elif "unexpected_rows_query" in check["kwargs"]:
        check["kwargs"]["unexpected_rows_query"] = _bind(check["kwargs"]["unexpected_rows_query"], schemas)
    return check


def _own_sql(query: str, table: sql.Composable, conn) -> str:
    """A rule's query with {batch} filled as Great Expectations fills it (aliased unless the query joins)."""
    name = table.as_string(conn)
    joins = re.search(r"\bJOIN\b", query, re.IGNORECASE) is not None
    return " ".join(query.split()).replace("{batch}", name if joins else f"{name} AS subselect")


# ----------------------------------------------------------------------------------------------------------
# The gate


@dataclass
class MartsGateOutcome(gates.GateOutcome):
    schemas: tuple[str, ...] = field(default_factory=tuple)
    table_level: frozenset[str] = frozenset()   # rules that count tiers or columns, not rows

    def summary(self) -> str:
        """One screen, as the load gates' (gates.GateOutcome.summary): the tally, then each failed rule (errors
        first) with its reason, threshold, how many rows (or tiers, or columns) and example row numbers in the
        table's key order; never a value."""
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("passed", "failed", "not_applicable")}
        errors, warns = len(self.failures("error")), len(self.failures("warn"))
        lines = [f"{' and '.join(self.schemas)}: {SUITE} suite: {counts['passed']} passed, {counts['failed']} failed "
                 f"({errors} error, {warns} warn), {counts['not_applicable']} not applicable"]
        ordered = sorted(self.failures(), key=lambda r: (r.severity != "error", r.check_id))
        for r in ordered[:gates.SUMMARY_FAILURES]:
            lines.append(f"  {'FAILED' if r.severity == 'error' else 'warning'} [{r.severity}] {r.check_id}: {r.note}")
            if r.check_id in self.table_level or r.unexpected_count is None:
                measured = f"observed {r.observed or '?'}"
            else:
                measured = f"{r.unexpected_count:,} of {r.row_count:,} rows"
            examples = ", ".join(str(n) for n in r.example_rows)
            lines.append(f"      {measured}; threshold: {r.threshold}"
                         + (f"; example rows (row numbers in the table's key order): {examples}" if examples else ""))
        if len(ordered) > gates.SUMMARY_FAILURES:
            rest = ordered[gates.SUMMARY_FAILURES:]
            lines.append(f"  ... and {len(rest)} more failed rules (audit.gate_result): "
                         + ", ".join(r.check_id for r in rest))
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == "not_applicable":
                skipped.setdefault(r.observed or "not run", []).append(r.check_id)
        for reason, ids in skipped.items():
            lines.append(f"  not applicable ({reason}): {', '.join(ids)}")
        return "\n".join(lines)


def _is_table_level(check: dict) -> bool:
    """A rule that counts something other than rows: tiers of the wrong size, identifiable columns."""
    query = " ".join(str((check.get("kwargs") or {}).get("unexpected_rows_query", "")).split())
    return check.get("reports") == "columns" or query.startswith("SELECT 1 FROM")


def _examples(conn, check: dict, table: sql.Composable, key: list[str]) -> list[int]:
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    bad: sql.Composable | None
    if check["expectation"] == "UnexpectedRowsExpectation":
        query = _own_sql(check["kwargs"]["unexpected_rows_query"], table, conn)
        bad = sql.SQL("({}) IN ({})").format(keys, sql.SQL(query))
    else:
        bad = gates.failing_rows_condition({**check, "feed": FEED}, table)
        if bad is None:
            return []
    return [r[0] for r in conn.execute(sql.SQL(
        "SELECT n FROM (SELECT row_number() OVER (ORDER BY {k}) AS n, ({bad}) AS bad FROM {t}) AS r "
        "WHERE bad ORDER BY n LIMIT {limit}").format(k=keys, bad=bad, t=table,
                                                     limit=sql.Literal(gates.EXAMPLE_ROWS))).fetchall()]


def run_marts_gate(candidates: bool = True, run_id: str | None = None) -> MartsGateOutcome:
    """Validate the (candidate) marts and reporting schemas with the marts suite; record every result."""
    started = time.monotonic()
    schemas = {p: schema_of(p, candidates) for p in PUBLISHED}
    checks_by_table: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    row_counts: dict[str, int] = {}
    with db.connect() as conn:
        missing = [s for s in schemas.values() if not _schema_exists(conn, s)]
        if missing:
            raise PublishRefused(f"there is nothing to gate: {', '.join(missing)} does not exist")
        for check in all_checks():
            published = check["table"]
            schema, _, name = published.partition(".")
            if published not in row_counts:
                exists = db.one_row(conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                                 (sql.Identifier(schemas[schema], name).as_string(conn),)))[0]
                row_counts[published] = (db.one_row(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(schemas[schema], name))))[0] if exists else -1)
            if row_counts[published] < 0:
                skipped[check["id"]] = f"error: {schemas[schema]}.{name} does not exist"
                continue
            if row_counts[published] == 0 and not _is_table_level(check):
                skipped[check["id"]] = "the table has no row"
                continue
            checks_by_table.setdefault(published, []).append(_bound(conn, check, schemas))

    ge_results: dict[str, Any] = {}
    for published, checks in checks_by_table.items():
        schema, _, name = published.partition(".")
        # GE prints (to stdout) a notice for a query that reads more than {batch}: the rules that read the
        # schema's metadata or another mart do so on purpose.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            ge_results.update(gates._validate(schemas[schema], name, SUITE, checks, {}))

    bound = {c["id"]: c for checks in checks_by_table.values() for c in checks}
    results: list[gates.CheckResult] = []
    with db.connect() as conn:
        for check in all_checks():
            published = check["table"]
            schema, _, name = published.partition(".")
            table = sql.Identifier(schemas[schema], name)
            result = gates.CheckResult(
                check["id"], check["category"], check["severity"], "not_applicable", check["note"],
                row_count=max(row_counts.get(published, 0), 0), threshold=_threshold(check),
                expectation=check["expectation"], subcategory=check.get("subcategory") or "",
                context=check.get("context") or "")
            ge = ge_results.get(check["id"])
            reason = skipped.get(check["id"], "")
            if reason.startswith("error: "):
                result.status, result.observed = "failed", reason  # a published table missing is a failure
            elif ge is None:
                result.observed = reason or "not run"
            else:
                _fill(conn, bound[check["id"]], ge, result, table, published)
            results.append(result)
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, expectation, severity,
                                                  category, status, observed, observed_number, threshold,
                                                  unexpected_count, row_count, example_rows, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(LOAD_ID, run_id, FEED, SUITE, r.check_id, r.expectation, r.severity, r.category, r.status,
                  r.observed, r.observed_number, r.threshold, r.unexpected_count, r.row_count, r.example_rows,
                  r.note) for r in results])
    outcome = MartsGateOutcome(FEED, results, seconds=time.monotonic() - started, schemas=tuple(schemas.values()),
                               table_level=frozenset(c["id"] for c in all_checks() if _is_table_level(c)))
    log.info("marts gate ran %d rules in %.1fs: %s", len(results), outcome.seconds,
             outcome.summary().splitlines()[0])
    return outcome


def _threshold(check: dict) -> str:
    if check.get("reports") == "columns":
        return "no column"
    query = " ".join(str((check.get("kwargs") or {}).get("unexpected_rows_query", "")).split())
    if check["expectation"] == "UnexpectedRowsExpectation" and query.startswith("SELECT 1 FROM"):
        return "nothing returned by the rule's query"
    return gates._threshold(check)


def _fill(conn, check: dict, ge: Any, result: gates.CheckResult, table: sql.Composable, published: str) -> None:
    problem = gates._evaluation_problem(ge.exception_info)
    if problem:
        result.status, result.observed = "failed", "error: " + problem
        log.warning("marts gate rule %s could not be evaluated: %s", check["id"], problem)
        return
    result.status = "passed" if ge.success else "failed"
    info = ge.result or {}
    if check["expectation"] == "UnexpectedRowsExpectation":
        count = gates._number(info.get("observed_value"))
        result.unexpected_count = int(count) if count is not None else None
        result.observed_number = count
        if check.get("reports") == "columns":
            result.observed = f"{result.unexpected_count or 0} column(s)"
            if result.unexpected_count:
                found = [r[0] for r in conn.execute(
                    f"{_own_sql(check['kwargs']['unexpected_rows_query'], table, conn)} "
                    f"LIMIT {EXAMPLE_COLUMNS}").fetchall()]
                result.observed += ": " + ", ".join(_published_name(f) for f in found)
            return
        result.observed = f"{result.unexpected_count} rows returned by the rule's query"
        if _is_table_level(check):
            result.observed = f"{result.unexpected_count} returned by the rule's query (each one thing wrong)"
    else:
        unexpected = info.get("unexpected_count")
        result.unexpected_count = int(unexpected) if unexpected is not None else None
        observed = gates._number(info.get("observed_value"))
        if observed is not None:
            result.observed, result.observed_number = str(info.get("observed_value")), observed
        elif unexpected is not None:
            result.observed, result.observed_number = f"{int(unexpected):,} unexpected", float(unexpected)
    query = " ".join(str(check["kwargs"].get("unexpected_rows_query", "")).split())
    if result.status == "failed" and (result.unexpected_count or 0) > 0 and not query.startswith("SELECT 1 FROM"):
        result.example_rows = _examples(conn, check, table, table_key(published))


def _published_name(found: str) -> str:
    """A candidate column's name as it will be published (marts__candidate.x.y -> marts.x.y)."""
    schema, _, rest = found.partition(".")
    return schema.removesuffix(CANDIDATE) + "." + rest
