"""Quality gates: Great Expectations suites, built from `expectations/registry.yml`, run on each staged load.

A load is staged into its own table (`load_batch.load_<id>`); the gate validates that table inside
PostgreSQL through a Great Expectations SQL data source (nothing is pulled into pandas), records every
result in `audit.gate_result`, and says in one screen what failed: the file, the rule, its threshold, how
many rows, and example row numbers (never values: values may identify someone).

The registry is the single place where rules live (read into rule objects by pophealth/quality/rules.py). Each
rule names a Great Expectations 1.x expectation class and its keyword arguments, plus a severity (error refuses
the load, warn reports it), its place in the OHDSI Data Quality Dashboard taxonomy (category, subcategory,
verification or validation) and a one-line reason. Thresholds are the rules' own kwargs (`mostly`, `min_value`,
...), with per-source overrides (`by_provider`); a rule on the number of rows compares the batch with the file it
came from or with the previous load of the same source (`row_count`: published, or an earlier period staged in
the same backfill). A feed with no rules has no gate (`has_suite`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from psycopg import sql

from pophealth.quality import validation
from pophealth.quality.rules import (
    PRESENCE_EXPECTATIONS,
    LoadRule,
    RowCount,
    failing_rows_condition,
    has_row_numbers,
    load_rules,
    published_column,
    threshold,
)
from pophealth.quality.validation import EXAMPLE_ROWS, CheckResult, GateOutcome, record_results
from pophealth.warehouse import db

log = logging.getLogger("pophealth")


# ----------------------------------------------------------------------------------------------------------
# The rules of a feed


def checks_for(feed: str) -> list[LoadRule]:
    return [rule for rule in load_rules() if rule.feed == feed]


def has_suite(feed: str) -> bool:
    """Whether the registry has rules for the feed (a feed without rules is not gated)."""
    return bool(checks_for(feed))


def suite_name(feed: str) -> str:
    return f"{feed}_load"


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
            (load_id,),
        ).fetchone()
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


def _bound(rule: LoadRule, ctx: LoadContext) -> LoadRule:
    """The rule for this load: per-source thresholds applied and its SQL placeholders filled."""
    rule = rule.for_provider(ctx.provider)
    if rule.query is not None:
        rule = rule.with_kwargs(unexpected_rows_query=bind_query(rule.query, ctx))
    return rule


@dataclass
class RowCountBand:
    """A `row_count` rule's bounds for this load, or why it does not apply."""

    min_value: int | None = None
    max_value: int | None = None
    baseline_rows: int = 0
    baseline: str = ""  # what the bounds are relative to, in words
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
        {"load": ctx.load_id, "feed": ctx.feed, "provider": ctx.provider, "period": ctx.period_end},
    ).fetchone()


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
                 AND l.run_id = this.run_id AND l.period_end < this.period_end""",
            (ctx.load_id,),
        ).fetchone()[0]
        if not staging:
            return
        conn.commit()  # a fresh snapshot on the next look
        time.sleep(1)
    log.warning(
        "%s: an earlier period was still staging after %s; the volume rule compares with what is staged",
        ctx.describe(),
        EARLIER_STAGING_WAIT,
    )


def row_count_band(conn, spec: RowCount, ctx: LoadContext) -> RowCountBand:
    """The bounds of a `row_count` rule for this load: its ratios times the rows of its baseline (the rows the
    file offered, or the previous load of the same feed and provider: previous_load), or why it does not apply."""
    minimum = spec.min_baseline_rows
    band = RowCountBand()
    if spec.baseline == "file":
        band.quarantined_columns = spec.only_quarantined_for
        offered = ctx.rows_read - ctx.rows_opted_out
        if band.quarantined_columns:
            # Rows quarantined for another reason are left out: the rule measures this reason alone.
            where, params = _quarantine_filter(band.quarantined_columns)
            other = conn.execute(
                "SELECT count(*) FROM audit.quarantine WHERE load_id = %s AND NOT (column_name IS NOT NULL"
                + where
                + ")",
                (ctx.load_id, *params),
            ).fetchone()[0]
            offered -= int(other)
        band.baseline_rows = offered
        band.baseline = (
            "rows the file offered"
            + (" (opted-out people apart)" if ctx.rows_opted_out else "")
            + (
                f" that were not quarantined for another column than {', '.join(band.quarantined_columns)}"
                if band.quarantined_columns
                else ""
            )
        )
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
        band.baseline = (
            f"previous published load of {ctx.describe()}"
            if previous[5] == "published"
            else f"previous load of {ctx.describe()} staged in this run"
        )
        band.baseline += f" (load {previous[0]}{period})"
        # Like with like: a file covering a month after one covering a year is compared with a month's share of it.
        this = conn.execute(
            "SELECT covers_from, covers_to FROM audit.load WHERE load_id = %s", (ctx.load_id,)
        ).fetchone()
        these, those = months_covered(*(this or (None, None))), months_covered(previous[3], previous[4])
        if these and those and these != those:
            band.baseline_rows = round(band.baseline_rows * these / those)
            band.baseline += f", {those} months, scaled to the {these} month{'s' if these > 1 else ''} this file covers"
        if band.baseline_rows < minimum:
            band.not_applicable = (
                f"the previous load has {band.baseline_rows:,} rows, "
                f"fewer than the {minimum:,} a volume comparison needs"
            )
            return band
    if spec.min_ratio is not None:
        band.min_value = math.ceil(spec.min_ratio * band.baseline_rows - 1e-9)
    if spec.max_ratio is not None:
        band.max_value = math.floor(spec.max_ratio * band.baseline_rows + 1e-9)
    return band


def _published_has_values(conn, rule: LoadRule) -> str | None:
    """Why a rule that reads published data does not apply (that data has no value yet), or None."""
    for reference in rule.reads_published:
        found_column = published_column(reference)
        assert found_column is not None, reference  # the registry's validator checked it
        table, column = found_column
        schema, _, name = table.partition(".")
        found = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)").format(
                sql.Identifier(schema, name), sql.Identifier(column)
            )
        ).fetchone()[0]
        if not found:
            return f"nothing published in {reference} yet"
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
        rules = [_bound(rule, ctx) for rule in checks_for(feed)]
        columns = sorted({c for rule in rules for c in rule.columns})
        counts = db.one_row(
            conn.execute(
                sql.SQL("SELECT count(*){} FROM {}").format(
                    sql.SQL("").join(sql.SQL(", count({})").format(sql.Identifier(c)) for c in columns), table
                )
            )
        )
        row_count, present = counts[0], dict(zip(columns, counts[1:], strict=False))
        for rule in rules:
            if rule.row_count is not None:
                band = bands[rule.id] = row_count_band(conn, rule.row_count, ctx)
                if band.not_applicable:
                    skipped[rule.id] = band.not_applicable
            elif rule.reads_published:
                reason = _published_has_values(conn, rule)
                if reason:
                    skipped[rule.id] = reason

    def applicable(rule: LoadRule) -> bool:
        if rule.id in skipped:
            return False
        if rule.row_count is not None:
            return True  # the number of rows is measured even when no row was loaded
        if not row_count:
            skipped[rule.id] = "no row loaded"
            return False
        if rule.expectation in PRESENCE_EXPECTATIONS:
            return True
        read = rule.columns
        if not read:
            return True
        if rule.kwargs.get("ignore_row_if") == "both_values_are_missing":
            found = any(present.get(c, 0) > 0 for c in read)
        else:
            found = all(present.get(c, 0) > 0 for c in read)
        if not found:
            skipped[rule.id] = "column empty in this file"
        return found

    to_run = [_with_band(rule, bands.get(rule.id)) for rule in rules if applicable(rule)]
    with db.connect() as conn:
        ge_results = validation.judge(
            conn,
            schema,
            name,
            suite_name(feed),
            to_run,
            row_count,
            present,
            about=f"{ctx.file_name} (load {load_id})",
            thresholds={rule.id: _threshold(rule, bands.get(rule.id)) for rule in rules},
        )

        results: list[CheckResult] = []
        for rule in rules:
            rule_band = bands.get(rule.id)
            result = CheckResult(
                rule.id,
                rule.category,
                rule.severity,
                "not_applicable",
                rule.note,
                row_count=row_count,
                threshold=_threshold(rule, rule_band),
                expectation=rule.expectation,
                subcategory=rule.subcategory or "",
                context=rule.context,
            )
            ge = ge_results.get(rule.id)
            if ge is None:
                result.observed = skipped.get(rule.id, "")
            else:
                problem = validation.evaluation_problem(ge.exception_info)
                if problem:
                    # A rule that could not be evaluated is a failure of that rule, never a silent pass.
                    result.status = "failed"
                    result.observed = "error: " + problem
                    log.warning("gate rule %s could not be evaluated: %s", rule.id, problem)
                else:
                    result.status = "passed" if ge.success else "failed"
                if rule_band is not None and rule.row_count is not None:
                    _fill_row_count(conn, rule.row_count, rule_band, ge, result, ctx)
                else:
                    _fill_counts(conn, rule, table, ge, result)
            results.append(result)
        record_results(conn, load_id, run_id, feed, suite_name(feed), results)
    outcome = GateOutcome(feed, results, seconds=time.monotonic() - started, file_name=ctx.file_name, load_id=load_id)
    log.info(
        "quality gate for load %d ran %d rules in %.1fs: %s",
        load_id,
        len(results),
        outcome.seconds,
        outcome.summary().splitlines()[0],
    )
    return outcome


def _with_band(rule: LoadRule, band: RowCountBand | None) -> LoadRule:
    """A `row_count` rule with this load's bounds as the expectation's own (min_value, max_value)."""
    if band is None:
        return rule
    return rule.with_kwargs(min_value=band.min_value, max_value=band.max_value)


def _fill_row_count(conn, spec: RowCount, band: RowCountBand, ge: Any, result: CheckResult, ctx: LoadContext) -> None:
    """A `row_count` rule: the rows the batch holds against its baseline; for the file baseline, the rows the
    loader quarantined are the unexpected ones, and their row numbers the examples."""
    observed = validation.number((ge.result or {}).get("observed_value"))
    loaded = int(observed) if observed is not None else result.row_count
    share = f" ({loaded / band.baseline_rows:.0%} of {band.baseline_rows:,})" if band.baseline_rows else ""
    if not result.observed:
        result.observed = f"{loaded:,} rows{share}"
    result.observed_number = float(loaded)
    if spec.baseline != "file":
        return
    result.row_count = band.baseline_rows
    result.unexpected_count = max(band.baseline_rows - loaded, 0)
    if result.status == "failed" and result.unexpected_count:  # row numbers are kept in the quarantine for every feed
        where, params = _quarantine_filter(band.quarantined_columns)
        result.example_rows = [
            r[0]
            for r in conn.execute(
                "SELECT source_row FROM audit.quarantine WHERE load_id = %s"
                + where
                + f" ORDER BY source_row LIMIT {EXAMPLE_ROWS}",
                (ctx.load_id, *params),
            ).fetchall()
        ]


def _fill_counts(conn, rule: LoadRule, table: sql.Composable, ge: Any, result: CheckResult) -> None:
    """Unexpected count and observed value from GE's result; example row numbers (never values) by SQL."""
    info = ge.result or {}
    unexpected = info.get("unexpected_count")
    observed = info.get("observed_value")
    if rule.expectation == "UnexpectedRowsExpectation":
        unexpected, observed = observed, f"{observed} rows returned by the rule's query"
    condition = _failing_rows_condition(rule, table)
    if unexpected is None and condition is not None and not result.observed.startswith("error"):
        unexpected = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, condition)).fetchone()[0]
    result.unexpected_count = int(unexpected) if unexpected is not None else None
    if not result.observed:
        if isinstance(observed, str) and rule.expectation == "UnexpectedRowsExpectation":
            result.observed, result.observed_number = observed, validation.number(unexpected)
        elif validation.number(observed) is not None:
            # A count, share or statistic. Anything else (a date, a code, a list) could be a value from the
            # file, so it is not recorded.
            result.observed, result.observed_number = str(observed), validation.number(observed)
        elif observed is not None:
            result.observed = "(a value: not recorded)"
        elif unexpected is not None:
            percent = info.get("unexpected_percent_total", info.get("unexpected_percent"))
            result.observed = f"{int(unexpected):,} unexpected" + (f" ({percent:.2f}%)" if percent is not None else "")
            result.observed_number = float(unexpected)
    if (
        result.status == "failed"
        and condition is not None
        and (result.unexpected_count or 0) > 0
        and has_row_numbers(rule.feed)
    ):
        result.example_rows = [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT source_row FROM {} WHERE {} ORDER BY source_row LIMIT {}").format(
                    table, condition, sql.Literal(EXAMPLE_ROWS)
                )
            ).fetchall()
        ]


def _threshold(rule: LoadRule, band: RowCountBand | None = None) -> str:
    """The rule's threshold in words: a rule on the number of rows says its band for this load (when known)."""
    source = f" ({rule.threshold_of}'s threshold)" if rule.threshold_of else ""
    spec = rule.row_count
    if spec is None:
        return threshold(rule, source)
    low, high = spec.min_ratio, spec.max_ratio
    share = (
        f"between {low:.0%} and {high:.0%}"
        if low is not None and high is not None
        else f"at least {low:.0%}"
        if low is not None
        else f"at most {high:.0%}"
    )
    known = band is not None and band.not_applicable is None and bool(band.baseline)
    if band is not None and known:
        bounds = (
            f"{band.min_value:,} to {band.max_value:,}"
            if low is not None and high is not None
            else f"at least {band.min_value:,}"
            if low is not None
            else f"at most {band.max_value:,}"
        )
    if spec.baseline == "file":
        what = band.baseline if band and band.baseline else "rows the file offered"
        text = (
            f"rows loaded {share} of the {band.baseline_rows:,} {what}, so {bounds}"
            if band is not None and known
            else f"rows loaded {share} of the {what}"
        )
    else:
        what = band.baseline if band and band.baseline else "previous published load of the same source"
        text = (
            f"rows {share} of the {band.baseline_rows:,} rows of the {what}, so {bounds}"
            if band is not None and known
            else f"rows {share} of the {what}"
        )
        if spec.min_baseline_rows:
            text += f"; compared when it has at least {spec.min_baseline_rows:,} rows"
    return text + source


def _failing_rows_condition(rule: LoadRule, table: sql.Composable) -> sql.Composable | None:
    """A WHERE condition true for the rows the rule rejects, or None when the rule has no row-level meaning. A
    rule written as SQL (its placeholders other than {batch} filled: `bind_query`) rejects the rows whose numbers
    its query returns."""
    if rule.expectation != "UnexpectedRowsExpectation":
        return failing_rows_condition(rule, table)
    if not has_row_numbers(rule.feed):
        return None  # its query counts rows of a table without row numbers
    pieces = rule.one_line_query.split("{batch}")
    query = sql.Composed([sql.SQL(pieces[0])] + [part for piece in pieces[1:] for part in (table, sql.SQL(piece))])
    return sql.Composed([sql.SQL("source_row IN ("), query, sql.SQL(")")])
