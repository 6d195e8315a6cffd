"""Quality gates: Great Expectations suites, built from `expectations/registry.yml`, run on each staged load.

A load is staged into its own table (`load_batch.load_<id>`); the gate validates that table inside
PostgreSQL through a Great Expectations SQL data source and checkpoint (nothing is pulled into pandas),
records every result in `audit.gate_result`, and says in one screen what failed: the rule, why it
exists, how many rows, and example row numbers (never values: values may identify someone).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml
from psycopg import sql

from pophealth import db

log = logging.getLogger("pophealth")

REGISTRY_ENV = "POPHEALTH_EXPECTATIONS_DIR"

GATE_DDL = """
CREATE TABLE IF NOT EXISTS audit.gate_result (
    load_id          bigint NOT NULL,
    run_id           text,
    feed             text NOT NULL,
    suite            text NOT NULL,
    check_id         text NOT NULL,
    category         text NOT NULL,
    severity         text NOT NULL,     -- error | warn
    status           text NOT NULL,     -- passed | failed | not_applicable
    observed         text,
    threshold        text,
    unexpected_count bigint,
    row_count        bigint,
    example_rows     bigint[] NOT NULL DEFAULT '{}',
    note             text,
    checked_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gate_result_load ON audit.gate_result (load_id);
"""


def registry_dir() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or Path(__file__).resolve().parents[1] / "expectations")


@lru_cache(maxsize=1)
def registry() -> dict:
    return yaml.safe_load((registry_dir() / "registry.yml").read_text())


def checks_for(feed: str) -> list[dict]:
    return (registry().get("feeds") or {}).get(feed, {}).get("checks", [])


def has_suite(feed: str) -> bool:
    return bool(checks_for(feed))


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


@dataclass
class GateOutcome:
    feed: str
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return not any(r.status == "failed" and r.severity == "error" for r in self.results)

    def summary(self) -> str:
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("passed", "failed", "not_applicable")}
        lines = [f"{self.feed} suite: {counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['not_applicable']} not applicable"]
        for r in self.results:
            if r.status != "failed":
                continue
            examples = ", ".join(str(n) for n in r.example_rows) or "-"
            lines.append(f"  {'FAILED' if r.severity == 'error' else 'warning'} [{r.severity}] {r.check_id}: {r.note}")
            lines.append(f"      {r.unexpected_count:,} of {r.row_count:,} rows; threshold {r.threshold}; "
                         f"example rows (1 = first data row): {examples}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Each registry rule as (the Great Expectations expectation, the SQL condition that marks a failing row).


def _failing_rows_condition(check: dict) -> sql.Composable:
    if "rows_where" in check:
        return sql.SQL(check["rows_where"])
    if "not_null" in check:
        return sql.SQL("{} IS NULL").format(sql.Identifier(check["not_null"]["column"]))
    if "in_set" in check:
        spec = check["in_set"]
        return sql.SQL("{col} IS NOT NULL AND {col}::text NOT IN ({values})").format(
            col=sql.Identifier(spec["column"]), values=sql.SQL(", ").join(sql.Literal(str(v)) for v in spec["values"]))
    if "between" in check:
        spec = check["between"]
        return sql.SQL("{col} < {lo} OR {col} > {hi}").format(
            col=sql.Identifier(spec["column"]), lo=sql.Literal(spec["min"]), hi=sql.Literal(spec["max"]))
    raise ValueError(f"registry rule {check.get('id')} has no check")


def _column(check: dict) -> str | None:
    for kind in ("not_null", "in_set", "between"):
        if kind in check:
            return check[kind]["column"]
    return None


def _threshold(check: dict) -> str:
    if "not_null" in check:
        return f"present in at least {float(check['not_null'].get('mostly', 1)):.0%} of rows"
    if "in_set" in check:
        return "every value in the contract's list"
    if "between" in check:
        return f"between {check['between']['min']} and {check['between']['max']}"
    return "no row"


def _expectation(check: dict, table: str):
    import great_expectations.expectations as gxe

    meta = {"id": check["id"], "severity": check["severity"], "category": check["category"]}
    if "rows_where" in check:
        return gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=f"SELECT source_row FROM {{batch}} WHERE {check['rows_where']}",
            description=check["note"], meta=meta)
    if "not_null" in check:
        spec = check["not_null"]
        return gxe.ExpectColumnValuesToNotBeNull(column=spec["column"], mostly=float(spec.get("mostly", 1)), meta=meta)
    if "in_set" in check:
        spec = check["in_set"]
        return gxe.ExpectColumnValuesToBeInSet(column=spec["column"], value_set=[str(v) for v in spec["values"]],
                                               meta=meta)
    spec = check["between"]
    return gxe.ExpectColumnValuesToBeBetween(column=spec["column"], min_value=spec["min"], max_value=spec["max"],
                                             meta=meta)


def _quiet_great_expectations() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in task logs
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _validate(table: str, checks: list[dict]) -> dict[str, object]:
    """Run the checks as one Great Expectations checkpoint on the table; results by check id."""
    _quiet_great_expectations()
    import great_expectations as gx

    schema, _, name = table.partition(".")
    context = gx.get_context(mode="ephemeral")
    url = db.warehouse_url().replace("postgresql://", "postgresql+psycopg2://", 1)
    source = context.data_sources.add_sql(name="warehouse", connection_string=url)
    asset = source.add_table_asset(name=name, table_name=name, schema_name=schema)
    batch = asset.add_batch_definition_whole_table("whole_file")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for check in checks:
        suite.add_expectation(_expectation(check, table))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_gate", data=batch,
                                                                            suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(name=f"{name}_checkpoint",
                                                       validation_definitions=[validation],
                                                       result_format={"result_format": "SUMMARY"}))
    run = checkpoint.run()
    results = {}
    for validation_result in run.run_results.values():
        for result in validation_result.results:
            results[result.expectation_config.meta["id"]] = result
    return results


def run_load_gate(load_id: int, feed: str, batch_table: str, run_id: str | None = None) -> GateOutcome:
    checks = checks_for(feed)
    schema, _, name = batch_table.partition(".")
    table = sql.Identifier(schema, name)
    with db.connect() as conn:
        conn.execute(GATE_DDL)
        row_count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        present = {}
        for column in {c for c in (_column(check) for check in checks) if c}:
            present[column] = conn.execute(
                sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(column), table)).fetchone()[0]
    applicable = [c for c in checks if _column(c) is None or present.get(_column(c), 0) > 0]
    ge_results = _validate(batch_table, applicable) if applicable and row_count else {}
    results = []
    with db.connect() as conn:
        for check in checks:
            result = CheckResult(check["id"], check["category"], check["severity"], "not_applicable",
                                 check["note"], row_count=row_count, threshold=_threshold(check))
            ge = ge_results.get(check["id"])
            if ge is not None:
                condition = _failing_rows_condition(check)
                failing = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, condition)).fetchone()[0]
                result.status = "passed" if ge.success else "failed"
                result.unexpected_count = failing
                observed = ge.result.get("observed_value")
                result.observed = str(observed if observed is not None else
                                      f"{ge.result.get('unexpected_percent') or 0:.2f}% unexpected")
                if failing:
                    result.example_rows = [r[0] for r in conn.execute(
                        sql.SQL("SELECT source_row FROM {} WHERE {} ORDER BY source_row LIMIT 5").format(
                            table, condition)).fetchall()]
            results.append(result)
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, category, severity, status,
                                                  observed, threshold, unexpected_count, row_count, example_rows, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(load_id, run_id, feed, f"{feed}_load", r.check_id, r.category, r.severity, r.status, r.observed,
                  r.threshold, r.unexpected_count, r.row_count, r.example_rows, r.note) for r in results],
            )
    outcome = GateOutcome(feed, results)
    log.info("quality gate for load %d:\n%s", load_id, outcome.summary())
    return outcome
