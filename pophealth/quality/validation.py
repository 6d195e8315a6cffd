"""The rules of a gate on a table, inside PostgreSQL, for both gates: every rule counted in one query (`measure`),
or one Great Expectations validation of the table with its pages on the Data Docs site; and what a gate's
results say.

The load gates (pophealth/quality/gates.py) and the marts gate (pophealth/quality/marts_gate.py) judge their rules
the same way (`judge`): when every rule passes in the one query, its results are kept as GE's validation result
with their page by pophealth/quality/data_docs.py, and GE is not imported; otherwise the rules run through the same
ephemeral GE context and SQL data source (nothing is pulled into pandas), each rule object
(pophealth/quality/rules.py) made into an expectation the same way. Both report in the same shape: one
`CheckResult` per rule, a `GateOutcome` and its one-screen summary.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from psycopg import sql

from pophealth import config
from pophealth.quality import data_docs
from pophealth.quality.rules import Rule, RulesError, expectation_arguments, failing_rows_condition
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

EXAMPLE_ROWS = 5
SUMMARY_FAILURES = 12  # failed rules listed in full in the summary; the rest by id (all are in audit.gate_result)


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class CheckResult:
    check_id: str
    category: str
    severity: str
    status: str  # passed, failed, not_applicable
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


def record_results(conn, load_id: int, run_id: str | None, feed: str, suite: str, results: list[CheckResult]) -> None:
    """Keep every rule's result of one validation in audit.gate_result (both gates: the marts gate's load is 0)."""
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, expectation, severity,
                                              category, subcategory, context, status, observed, observed_number,
                                              threshold, unexpected_count, row_count, example_rows, note)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                (
                    load_id,
                    run_id,
                    feed,
                    suite,
                    r.check_id,
                    r.expectation,
                    r.severity,
                    r.category,
                    r.subcategory or None,
                    r.context or None,
                    r.status,
                    r.observed,
                    r.observed_number,
                    r.threshold,
                    r.unexpected_count,
                    r.row_count,
                    r.example_rows,
                    r.note,
                )
                for r in results
            ],
        )


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

    #: How a failed rule's example rows are numbered, and why a rule did not apply when it does not say.
    examples_are: ClassVar[str] = "1 = first data row"
    not_applicable_reason: ClassVar[str] = "column empty in this file"

    def heading(self) -> str:
        where = f"{self.file_name} (load {self.load_id}): " if self.file_name else ""
        return f"{where}{self.feed} suite"

    def measured(self, r: CheckResult) -> str:
        """What a failed rule found: how many rows, or what it observed when it counts no rows."""
        if r.unexpected_count is not None:
            return f"{r.unexpected_count:,} of {r.row_count:,} rows"
        return f"observed {r.observed or '?'}"

    def footer(self) -> list[str]:
        return [f"  Data Docs (Great Expectations): {data_docs.data_docs_index()}"]

    def summary(self) -> str:
        """One screen: the file (or schemas) and the tally, then each failed rule (errors first) with its reason,
        threshold, how many rows and example row numbers; never a value."""
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("passed", "failed", "not_applicable")}
        errors, warns = len(self.failures("error")), len(self.failures("warn"))
        lines = [
            f"{self.heading()}: {counts['passed']} passed, {counts['failed']} failed "
            f"({errors} error, {warns} warn), {counts['not_applicable']} not applicable"
        ]
        ordered = sorted(self.failures(), key=lambda r: (r.severity != "error", r.check_id))
        for r in ordered[:SUMMARY_FAILURES]:
            lines.append(f"  {'FAILED' if r.severity == 'error' else 'warning'} [{r.severity}] {r.check_id}: {r.note}")
            examples = ", ".join(str(n) for n in r.example_rows)
            lines.append(
                f"      {self.measured(r)}; threshold: {r.threshold}"
                + (f"; example rows ({self.examples_are}): {examples}" if examples else "")
            )
        if len(ordered) > SUMMARY_FAILURES:
            rest = ordered[SUMMARY_FAILURES:]
            lines.append(
                f"  ... and {len(rest)} more failed rules (audit.gate_result): " + ", ".join(r.check_id for r in rest)
            )
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == "not_applicable":
                skipped.setdefault(r.observed or self.not_applicable_reason, []).append(r.check_id)
        for reason, ids in skipped.items():
            lines.append(f"  not applicable ({reason}): {', '.join(ids)}")
        lines.extend(self.footer())
        return "\n".join(lines)


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
    imported = sys.modules.get("great_expectations.expectations")
    if imported is not None:
        # Imported and quieted already: quieting walks every logger, and this is called for each rule of each gate.
        return sys.modules["great_expectations"]
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


def build_expectation(rule: Rule):
    """The Great Expectations expectation object for a rule. A load rule on the number of rows (`row_count`) has its
    bounds set by the load gate for each load (pophealth/quality/gates.py); without them it accepts any count."""
    gxe = import_great_expectations().expectations

    cls = getattr(gxe, rule.expectation, None)
    if cls is None:
        raise RulesError(f"{rule.id}: great_expectations.expectations has no {rule.expectation}")
    try:
        return cls(**expectation_arguments(rule))
    except Exception as exc:  # pydantic validation: a bad kwarg in the rules file
        raise RulesError(f"{rule.id}: {rule.expectation} rejects its kwargs: {exc}") from None


DOCS_SITE = "quality_gates"


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
            data_docs_sites={
                DOCS_SITE: {
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(paths.gate_docs_dir),
                    },
                }
            },
        )
        project.stores[project.validation_results_store_name]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(data_docs.results_dir()),
        }
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_sql(name=data_docs.DATASOURCE, connection_string=url)
        # The Data Docs site's builder, made once per process and kept: Great Expectations' UpdateDataDocsAction
        # makes a new one for every validation, and with it new Jinja environments that compile every page
        # template again (more than half of a small file's gate). Each validation GE runs adds its pages with it.
        from great_expectations.render.renderer.site_builder import SiteBuilder

        sites = self.context.variables.data_docs_sites
        assert sites is not None  # the project configuration above declares the site
        site = {k: v for k, v in sites[DOCS_SITE].items() if k not in ("class_name", "module_name")}
        self._static_copied = False
        self.docs = SiteBuilder(
            data_context=self.context,
            site_name=DOCS_SITE,
            runtime_environment={"root_directory": self.context.root_directory},
            **site,
        )

    @classmethod
    def for_url(cls, url: str) -> _GX:
        with cls._lock:
            if cls._instance is None or cls._instance.url != url:
                cls._instance = _GX(url)
            return cls._instance

    def validate(self, schema: str, table: str, suite_name_: str, expectations: list) -> Any:
        with self._run_lock:
            return self._validate(schema, table, suite_name_, expectations)

    def _pages(self, resource_identifiers: list) -> None:
        """This validation's pages of the Data Docs site, then the index unless it is deferred.

        Each page as Great Expectations' section builders make it (render, view, write), without their `build`: it
        lists every key of its store first (each section, the profiling one too), and the validation results kept
        on disk grow with every file ever gated: that listing was more than the pages themselves at 50 files."""
        from great_expectations.core import ExpectationSuite
        from great_expectations.data_context.store.html_site_store import SiteSectionIdentifier
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        sections = self.docs.site_section_builders
        for key in resource_identifiers:
            suite = isinstance(key, ExpectationSuiteIdentifier)
            section = sections["expectations" if suite else "validations"]
            resource = section.source_store.get(key)
            if suite:
                resource = ExpectationSuite(**resource)
            view = section.view_class.render(
                section.renderer_class.render(resource),
                data_context_id=section.data_context_id,
                show_how_to_buttons=section.show_how_to_buttons,
            )
            section.target_store.set(
                SiteSectionIdentifier(site_section_name=section.name, resource_identifier=key), view
            )
        if not self._static_copied:
            # The styles and images GE's pages link (the index and the gates' own pages need none).
            self.docs.target_store.copy_static_assets()
            self._static_copied = True
        data_docs.index_changed()

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
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        # BASIC gives counts; partial_unexpected_count 0 keeps GE's result, and so the Data Docs, free of values.
        checkpoint = gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[],
            result_format={"result_format": "BASIC", "partial_unexpected_count": 0},
        )
        try:
            run = checkpoint.run(run_id=gx.core.run_identifier.RunIdentifier(run_name=f"{schema}.{table}"))
            result_id, result = next(iter(run.run_results.items()))
            # What UpdateDataDocsAction did, with the builder kept (see __init__): this validation's page and
            # its suite's, and the index listing every validation kept on disk.
            from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

            self._pages([result_id, ExpectationSuiteIdentifier(name=name)])
            return result
        finally:
            for remove in (
                lambda: self.context.checkpoints.delete(name),  # run() stores the checkpoint
                lambda: self.context.validation_definitions.delete(name),
                lambda: self.context.suites.delete(name),
                lambda: self.source.delete_asset(asset_name),
            ):
                try:
                    remove()
                except Exception:  # noqa: BLE001 - cleaning up an in-memory context
                    pass


def validate(schema: str, table: str, suite: str, rules: Sequence[Rule]) -> dict[str, Any]:
    """Run the rules as one Great Expectations validation on the table; GE's results by rule id."""
    if not rules:
        return {}
    _quiet_great_expectations()
    with warnings.catch_warnings():
        # GE's deprecation and "use PostgresDatasource" notices: PostgresDatasource rejects socket URLs, and
        # the table asset's schema_name is what reaches a table outside the connection's search path.
        warnings.simplefilter("ignore")
        runner = _GX.for_url(_sqlalchemy_url(db.warehouse_url()))
        _quiet_great_expectations()
        expectations = [build_expectation(r) for r in rules]
        run = runner.validate(schema, table, suite, expectations)
    return {r.expectation_config.meta["check_id"]: r for r in run.results}


@dataclass
class Measured:
    """A rule's result measured by a gate's own SQL, in the shape of Great Expectations' (success, its result)."""

    success: bool
    result: dict[str, Any]
    exception_info: Any = None


#: The built-in expectations one query measures (their failing rows: rules.failing_rows_condition), with the kwargs
#: it understands; a rule with any other is left to Great Expectations.
_MEASURED_KWARGS = {
    "ExpectColumnValuesToNotBeNull": {"column", "mostly"},
    "ExpectColumnValuesToBeInSet": {"column", "value_set", "mostly"},
    "ExpectColumnValuesToNotBeInSet": {"column", "value_set", "mostly"},
    "ExpectColumnValuesToBeBetween": {"column", "min_value", "max_value", "strict_min", "strict_max", "mostly"},
    "ExpectColumnValuesToBeUnique": {"column", "mostly"},
    "ExpectCompoundColumnsToBeUnique": {"column_list"},
    "ExpectColumnValuesToMatchRegex": {"column", "regex", "mostly"},
    "ExpectColumnPairValuesAToBeGreaterThanB": {"column_A", "column_B", "or_equal", "ignore_row_if", "mostly"},
    "ExpectTableRowCountToBeBetween": {"min_value", "max_value"},
    "UnexpectedRowsExpectation": {"unexpected_rows_query"},
}
#: Whose `mostly` is a share of the column's non-null values (Great Expectations' column map expectations); a
#: rule on presence counts every row.
_SHARE_OF_PRESENT = frozenset(
    {
        "ExpectColumnValuesToBeInSet",
        "ExpectColumnValuesToNotBeInSet",
        "ExpectColumnValuesToBeBetween",
        "ExpectColumnValuesToBeUnique",
        "ExpectColumnValuesToMatchRegex",
    }
)


def measure(
    conn, table: sql.Composable, rules: Sequence[Rule], row_count: int, present: dict[str, int]
) -> list[Measured] | None:
    """Every rule's result on the batch table in one query (a scan shared by all the rules), judged as Great
    Expectations judges it; None when a rule is of a kind this does not measure or the query fails, and for a rule
    whose verdict needs GE's finer accounting (a pair or compound rule with failing rows), measured as failed."""
    columns: list[sql.Composable] = []
    for rule in rules:
        allowed = _MEASURED_KWARGS.get(rule.expectation)
        if allowed is None or set(rule.kwargs) - allowed:
            return None
        if rule.expectation == "ExpectTableRowCountToBeBetween":
            continue
        if rule.expectation == "UnexpectedRowsExpectation":
            pieces = rule.one_line_query.split("{batch}")
            query = sql.Composed([sql.SQL(pieces[0])] + [p for piece in pieces[1:] for p in (table, sql.SQL(piece))])
            columns.append(sql.SQL("(SELECT count(*) FROM ({}) AS returned)").format(query))
            continue
        if rule.expectation == "ExpectCompoundColumnsToBeUnique":
            # Great Expectations groups the rows by the columns, NULL with NULL, leaving out a row whose columns are all
            # NULL: counted the same way here (an IN would miss a repeat with a NULL in it).
            names = sql.SQL(", ").join(sql.Identifier(c) for c in rule.kwargs["column_list"])
            none = sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in rule.kwargs["column_list"]
            )
            columns.append(
                sql.SQL(
                    "(SELECT count(*) FROM (SELECT count(*) OVER (PARTITION BY {c}) AS n, {none} AS none FROM {t}) AS "
                    "grouped WHERE n > 1 AND NOT none)"
                ).format(c=names, none=none, t=table)
            )
            continue
        if rule.expectation == "ExpectColumnValuesToBeUnique":
            # The rows whose value is repeated, counted from one grouping (linear whatever the data: a hash
            # aggregate spills to disk), not by looking each row up among the repeated values.
            columns.append(
                sql.SQL(
                    "(SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {t} WHERE {c} IS NOT NULL "
                    "GROUP BY {c} HAVING count(*) > 1) AS repeated)"
                ).format(c=sql.Identifier(rule.kwargs["column"]), t=table)
            )
            continue
        condition = failing_rows_condition(rule, table)
        if condition is None:
            return None
        columns.append(sql.SQL("count(*) FILTER (WHERE {})").format(condition))
    try:
        with conn.transaction():
            counts = (
                list(conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), table)).fetchone())
                if columns
                else []
            )
    except Exception:  # noqa: BLE001 - a rule that cannot be evaluated: Great Expectations says which and why
        return None
    measured: list[Measured] = []
    for rule in rules:
        kw = rule.kwargs
        if rule.expectation == "ExpectTableRowCountToBeBetween":
            low, high = kw.get("min_value"), kw.get("max_value")
            ok = (low is None or row_count >= low) and (high is None or row_count <= high)
            measured.append(Measured(ok, {"observed_value": row_count}))
            continue
        unexpected = int(counts.pop(0))
        if rule.expectation == "UnexpectedRowsExpectation":
            measured.append(Measured(unexpected == 0, {"observed_value": unexpected}))
            continue
        if rule.expectation in _SHARE_OF_PRESENT:
            considered = present.get(kw["column"], 0)
        elif rule.expectation == "ExpectColumnValuesToNotBeNull":
            considered = row_count
        else:
            considered = 0  # a pair or compound rule: only no failing row at all is measured as a pass
        mostly = float(kw.get("mostly", 1.0))
        ok = unexpected == 0 or (considered > 0 and (considered - unexpected) / considered >= mostly)
        measured.append(
            Measured(
                ok,
                {
                    "element_count": row_count,
                    "unexpected_count": unexpected,
                    "unexpected_percent": 100.0 * unexpected / considered if considered else None,
                    "unexpected_percent_total": 100.0 * unexpected / row_count if row_count else None,
                    "partial_unexpected_list": [],
                },
            )
        )
    return measured


def judge(
    conn,
    schema: str,
    table: str,
    suite: str,
    rules: Sequence[Rule],
    row_count: int,
    present: dict[str, int],
    about: str = "",
    thresholds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Each rule's result on the table by rule id, for both gates. Every rule measured in one query (`measure`);
    when all pass, those are the results, kept as Great Expectations' validation result with their Data Docs page
    (pophealth/quality/data_docs.py: `about` says what was gated and `thresholds` each rule's threshold in words,
    for the page) without GE validating the table again or even being imported (its fixed costs, most of a small
    file's gate). When a rule fails, or one query cannot tell, GE validates the table as it always did, and its
    results name the rule, its rows and example row numbers."""
    if not rules:
        return {}
    measured = measure(conn, sql.Identifier(schema, table), rules, row_count, present)
    if measured is not None and all(m.success for m in measured):
        data_docs.keep(schema, table, suite, rules, measured, about, thresholds)
        return {rule.id: m for rule, m in zip(rules, measured, strict=True)}
    return validate(schema, table, suite, rules)


def evaluation_problem(info: Any) -> str | None:
    """Why GE could not evaluate a rule, or None. Database messages can quote a value, so only GE's own
    explanation of a missing column is kept; anything else is named by its kind alone."""
    if not isinstance(info, dict):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            text = str(entry.get("exception_message") or "")
            message = text.splitlines()[0] if text else ""
            if "does not exist" in message and len(message) < 200:
                return message
            return "the rule could not be evaluated on this table (check its expectation and kwargs)"
    return None


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None
