"""The marts gate, and write-audit-publish for the published schemas (issue 5).

The marts DAG builds `marts` and `reporting` with dbt into candidate schemas (`marts__candidate`,
`reporting__candidate`: the dbt var `build_candidates`, read by the project's `generate_schema_name`), then
`run_marts_gate` validates the candidates with the rules of `expectations/marts.yml`, as one Great
Expectations suite (`marts_publish`) run inside PostgreSQL through the same SQL data source as the load gates
(pophealth/quality/validation.py), and records every result in `audit.gate_result` (load_id 0, feed `marts`). Only
when no `error` rule failed does `publish_candidates` swap the candidates in, in one transaction: the current schema is
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
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from psycopg import sql

from pophealth.quality import validation
from pophealth.quality.rules import PUBLISHED, MartsRule, failing_rows_condition, has_join, marts_rules, threshold
from pophealth.quality.validation import EXAMPLE_ROWS, CheckResult, GateOutcome, record_results
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

SUITE = "marts_publish"
FEED = "marts"  # audit.gate_result.feed
LOAD_ID = 0  # audit.gate_result.load_id is NOT NULL: the marts gate is not a load, so 0
#: Who reads each published schema (pophealth/warehouse/access.sql); USAGE is granted again after each swap.
READER = {"marts": "analyst", "reporting": "analyst", "direct_care": "care_team"}
CANDIDATE = "__candidate"
PREVIOUS = "__previous"
EXAMPLE_COLUMNS = 5
TEXT_TYPES = ("text", "character varying", "character")


class PublishRefused(RuntimeError):
    """There is nothing to publish (no candidate schema)."""


# ----------------------------------------------------------------------------------------------------------
# Schemas


def schema_of(published: str, candidates: bool) -> str:
    return published + (CANDIDATE if candidates else "")


def _schema_exists(conn, schema: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema,)).fetchone()[0]


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


def publish_candidates(
    lock_timeout: str = "60s", newest_load_id: int | None = None, run_id: str | None = None
) -> list[str]:
    """Swap the candidate schemas in, all in one transaction: analysts see the old marts or the new, never a mix.
    The publication is recorded in the same transaction (audit.marts_publication), with the newest load the
    candidates were built on (by default, the newest published now)."""
    with db.connect() as conn:
        missing = [schema_of(s, True) for s in PUBLISHED if not _schema_exists(conn, schema_of(s, True))]
        if missing:
            raise PublishRefused(
                f"nothing to publish: {', '.join(missing)} does not exist (did dbt build the "
                "candidates, with the var build_candidates?)"
            )
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        for published in PUBLISHED:
            real, candidate, previous = (
                sql.Identifier(published),
                sql.Identifier(published + CANDIDATE),
                sql.Identifier(published + PREVIOUS),
            )
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(previous))
            if _schema_exists(conn, published):
                conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(real, previous))
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(candidate, real))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(previous))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(real, sql.Identifier(READER[published])))
        conn.execute(
            """INSERT INTO audit.marts_publication (run_id, newest_load_id)
                        VALUES (%s, coalesce(%s, (SELECT max(load_id) FROM audit.load
                                                  WHERE published_at IS NOT NULL)))""",
            (run_id, newest_load_id),
        )
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
        (list(schemas.values()), list(TEXT_TYPES)),
    ).fetchall()


def _scan_query(conn, condition: str, schemas: dict[str, str]) -> str:
    """The query a `scan_text_columns` rule runs: for every text column of the gated schemas, the column's
    name when any value meets the condition (one existence test per column, every row: no sample)."""
    parts = []
    for schema, table, column in _text_columns(conn, schemas):
        value = sql.Identifier(column).as_string(conn)
        where = " ".join(condition.split()).replace("{value}", value)
        name = f"{schema}.{table}.{column}".replace("'", "''")
        parts.append(
            f"SELECT '{name}' AS found WHERE EXISTS (SELECT 1 FROM "
            f"{sql.Identifier(schema, table).as_string(conn)} WHERE {where})"
        )
    inner = " UNION ALL ".join(parts) if parts else "SELECT CAST(NULL AS text) AS found WHERE false"
    return f"SELECT found FROM ({inner}) AS scanned"


def _bound(conn, rule: MartsRule, schemas: dict[str, str]) -> MartsRule:
    if rule.scan_text_columns is not None:
        return rule.with_kwargs(unexpected_rows_query=_scan_query(conn, rule.scan_text_columns, schemas))
    if rule.query is not None:
        return rule.with_kwargs(unexpected_rows_query=_bind(rule.query, schemas))
    return rule


def _own_sql(query: str, table: sql.Composable, conn) -> str:
    """A rule's query with {batch} filled as Great Expectations fills it (aliased unless the query joins)."""
    name = table.as_string(conn)
    return " ".join(query.split()).replace("{batch}", name if has_join(query) else f"{name} AS subselect")


# ----------------------------------------------------------------------------------------------------------
# The gate


@dataclass
class MartsGateOutcome(GateOutcome):
    schemas: tuple[str, ...] = field(default_factory=tuple)
    table_level: frozenset[str] = frozenset()  # rules that count tiers or columns, not rows

    # One screen, as the load gates' (validation.GateOutcome.summary): each failed rule with how many rows (or
    # tiers, or columns) and example row numbers in the table's key order; never a value.
    examples_are: ClassVar[str] = "row numbers in the table's key order"
    not_applicable_reason: ClassVar[str] = "not run"

    def heading(self) -> str:
        return f"{' and '.join(self.schemas)}: {SUITE} suite"

    def measured(self, r: CheckResult) -> str:
        if r.check_id in self.table_level or r.unexpected_count is None:
            return f"observed {r.observed or '?'}"
        return f"{r.unexpected_count:,} of {r.row_count:,} rows"

    def footer(self) -> list[str]:
        return []


def _examples(conn, rule: MartsRule, table: sql.Composable, key: tuple[str, ...]) -> list[int]:
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    bad: sql.Composable | None
    if rule.expectation == "UnexpectedRowsExpectation":
        bad = sql.SQL("({}) IN ({})").format(keys, sql.SQL(_own_sql(rule.query or "", table, conn)))
    else:
        bad = failing_rows_condition(rule, table)
        if bad is None:
            return []
    return [
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT n FROM (SELECT row_number() OVER (ORDER BY {k}) AS n, ({bad}) AS bad FROM {t}) AS r "
                "WHERE bad ORDER BY n LIMIT {limit}"
            ).format(k=keys, bad=bad, t=table, limit=sql.Literal(EXAMPLE_ROWS))
        ).fetchall()
    ]


def run_marts_gate(candidates: bool = True, run_id: str | None = None) -> MartsGateOutcome:
    """Validate the (candidate) marts and reporting schemas with the marts suite; record every result."""
    started = time.monotonic()
    schemas = {p: schema_of(p, candidates) for p in PUBLISHED}
    marts = marts_rules()
    rules_by_table: dict[str, list[MartsRule]] = {}
    skipped: dict[str, str] = {}
    row_counts: dict[str, int] = {}
    with db.connect() as conn:
        missing = [s for s in schemas.values() if not _schema_exists(conn, s)]
        if missing:
            raise PublishRefused(f"there is nothing to gate: {', '.join(missing)} does not exist")
        for rule in marts.rules:
            published = rule.table
            schema, _, name = published.partition(".")
            if published not in row_counts:
                exists = db.one_row(
                    conn.execute(
                        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schemas[schema], name).as_string(conn),)
                    )
                )[0]
                row_counts[published] = (
                    db.one_row(
                        conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schemas[schema], name)))
                    )[0]
                    if exists
                    else -1
                )
            if row_counts[published] < 0:
                skipped[rule.id] = f"error: {schemas[schema]}.{name} does not exist"
                continue
            if row_counts[published] == 0 and not rule.is_table_level:
                skipped[rule.id] = "the table has no row"
                continue
            rules_by_table.setdefault(published, []).append(_bound(conn, rule, schemas))

    ge_results: dict[str, Any] = {}
    with db.connect() as conn:
        for published, rules in rules_by_table.items():
            schema, _, name = published.partition(".")
            # GE prints (to stdout) a notice for a query that reads more than {batch} when it makes the expectation:
            # the rules that read the schema's metadata or another mart do so on purpose.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                ge_results.update(
                    validation.judge(
                        conn,
                        schemas[schema],
                        name,
                        SUITE,
                        rules,
                        max(row_counts[published], 0),
                        {},
                        about=f"The marts gate on {schemas[schema]}.{name} ({published} as published)",
                        thresholds={rule.id: _threshold(rule) for rule in rules},
                    )
                )

    bound = {rule.id: rule for rules in rules_by_table.values() for rule in rules}
    results: list[CheckResult] = []
    with db.connect() as conn:
        for rule in marts.rules:
            published = rule.table
            schema, _, name = published.partition(".")
            table = sql.Identifier(schemas[schema], name)
            result = CheckResult(
                rule.id,
                rule.category,
                rule.severity,
                "not_applicable",
                rule.note,
                row_count=max(row_counts.get(published, 0), 0),
                threshold=_threshold(rule),
                expectation=rule.expectation,
                subcategory=rule.subcategory or "",
                context=rule.context,
            )
            ge = ge_results.get(rule.id)
            reason = skipped.get(rule.id, "")
            if reason.startswith("error: "):
                result.status, result.observed = "failed", reason  # a published table missing is a failure
            elif ge is None:
                result.observed = reason or "not run"
            else:
                _fill(conn, bound[rule.id], ge, result, table, marts.tables[published])
            results.append(result)
        record_results(conn, LOAD_ID, run_id, FEED, SUITE, results)
    outcome = MartsGateOutcome(
        FEED,
        results,
        seconds=time.monotonic() - started,
        schemas=tuple(schemas.values()),
        table_level=frozenset(rule.id for rule in marts.rules if rule.is_table_level),
    )
    log.info("marts gate ran %d rules in %.1fs: %s", len(results), outcome.seconds, outcome.summary().splitlines()[0])
    return outcome


def _threshold(rule: MartsRule) -> str:
    if rule.reports == "columns":
        return "no column"
    if rule.expectation == "UnexpectedRowsExpectation" and rule.one_line_query.startswith("SELECT 1 FROM"):
        return "nothing returned by the rule's query"
    return threshold(rule)


def _fill(conn, rule: MartsRule, ge: Any, result: CheckResult, table: sql.Composable, key: tuple[str, ...]) -> None:
    problem = validation.evaluation_problem(ge.exception_info)
    if problem:
        result.status, result.observed = "failed", "error: " + problem
        log.warning("marts gate rule %s could not be evaluated: %s", rule.id, problem)
        return
    result.status = "passed" if ge.success else "failed"
    info = ge.result or {}
    if rule.expectation == "UnexpectedRowsExpectation":
        count = validation.number(info.get("observed_value"))
        result.unexpected_count = int(count) if count is not None else None
        result.observed_number = count
        if rule.reports == "columns":
            result.observed = f"{result.unexpected_count or 0} column(s)"
            if result.unexpected_count:
                found = [
                    r[0]
                    for r in conn.execute(
                        f"{_own_sql(rule.query or '', table, conn)} LIMIT {EXAMPLE_COLUMNS}"
                    ).fetchall()
                ]
                result.observed += ": " + ", ".join(_published_name(f) for f in found)
            return
        result.observed = f"{result.unexpected_count} rows returned by the rule's query"
        if rule.is_table_level:
            result.observed = f"{result.unexpected_count} returned by the rule's query (each one thing wrong)"
    else:
        unexpected = info.get("unexpected_count")
        result.unexpected_count = int(unexpected) if unexpected is not None else None
        observed = validation.number(info.get("observed_value"))
        if observed is not None:
            result.observed, result.observed_number = str(info.get("observed_value")), observed
        elif unexpected is not None:
            result.observed, result.observed_number = f"{int(unexpected):,} unexpected", float(unexpected)
    if (
        result.status == "failed"
        and (result.unexpected_count or 0) > 0
        and not rule.one_line_query.startswith("SELECT 1 FROM")
    ):
        result.example_rows = _examples(conn, rule, table, key)


def _published_name(found: str) -> str:
    """A candidate column's name as it will be published (marts__candidate.x.y -> marts.x.y)."""
    schema, _, rest = found.partition(".")
    return schema.removesuffix(CANDIDATE) + "." + rest
