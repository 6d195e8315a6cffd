"""Where each source's data starts and ends, and the periods the metrics cannot be computed for.

A file's name says only where its period ends (contract v2, "Files"): the loader records what its rows cover
(audit.load.covers_from/covers_to, pophealth.ingest.load.COVERAGE_START). A sender's published loads join into unbroken
stretches; a month that no load covers is a gap. dbt does the same in int_source_coverage, and names every period it
cannot compute, with the reason, in reporting.period_coverage. `pophealth status` and the run summary print both, so
that no period is ever left out in silence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise

from psycopg.rows import dict_row, tuple_row

from pophealth.contract.feeds import FEEDS

#: The feeds whose files cover a period (the metrics need them); the register is a snapshot on its date.
PERIOD_FEEDS = tuple(feed.name for feed in FEEDS if feed.period_months)


def stretches(covered: Iterable[tuple[date, date]]) -> list[tuple[date, date]]:
    """The unbroken stretches of days that the (from, to) intervals cover, in order: overlapping intervals and ones
    that end the day before the next begins join into one."""
    joined: list[list[date]] = []
    for start, end in sorted(covered):
        if joined and start <= joined[-1][1] + timedelta(days=1):
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return [(start, end) for start, end in joined]


def gaps(parts: list[tuple[date, date]]) -> list[tuple[date, date]]:
    """The days between consecutive stretches."""
    return [(before[1] + timedelta(days=1), after[0] - timedelta(days=1)) for before, after in pairwise(parts)]


@dataclass(frozen=True)
class SourceCoverage:
    feed: str
    provider: str | None
    files: int
    stretches: list[tuple[date, date]]

    @property
    def source(self) -> str:
        return self.feed + (f" {self.provider}" if self.provider else "")


def source_coverage(conn) -> list[SourceCoverage]:
    """Each sender's published coverage (the loads in force), hospital trusts and councils."""
    rows = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT feed, provider, covers_from, covers_to FROM audit.load
           WHERE status = 'published' AND feed = ANY(%s) AND covers_from IS NOT NULL AND covers_to IS NOT NULL
           ORDER BY feed, provider""",
            (list(PERIOD_FEEDS),),
        )
        .fetchall()
    )
    senders: dict[tuple[str, str | None], list[tuple[date, date]]] = {}
    for row in rows:
        senders.setdefault((row["feed"], row["provider"]), []).append((row["covers_from"], row["covers_to"]))
    return [
        SourceCoverage(feed, provider, len(loads), stretches(loads))
        for (feed, provider), loads in sorted(senders.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]


def register_snapshots(conn) -> list[date]:
    return [
        r[0]
        for r in conn.cursor(row_factory=tuple_row).execute(
            """SELECT DISTINCT period_end FROM audit.load WHERE feed = 'gp_register' AND status = 'published'
           AND period_end IS NOT NULL ORDER BY 1"""
        )
    ]


def periods_not_computed(conn) -> list[dict]:
    """The periods reporting.period_coverage says cannot be computed, with why; [] before the marts are built."""
    if (
        conn.cursor(row_factory=tuple_row)
        .execute("SELECT to_regclass('reporting.period_coverage') IS NULL")
        .fetchone()[0]
    ):
        return []
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT period_type, period_start, period_end, reason_not_computed FROM reporting.period_coverage
           WHERE NOT is_computed ORDER BY period_start, period_end"""
        )
        .fetchall()
    )


def _span(parts: list[tuple[date, date]]) -> str:
    return ", ".join(f"{start} to {end}" for start, end in parts)


def coverage_lines(conn, limit: int = 20) -> tuple[list[str], list[str]]:
    """(lines, notices): what each source covers and the periods not computed, as `status` and the run summary
    print them; a notice for each gap and for the periods not computed."""
    lines = ["What the data covers (from the rows of the published files):"]
    notices: list[str] = []
    covered = source_coverage(conn)
    for source in covered:
        holes = gaps(source.stretches)
        files = f"{source.files} file{'s' if source.files != 1 else ''}"
        lines.append(
            f"  {source.source:<24} {_span(source.stretches)} ({files})"
            + (f"; GAP: nothing covers {_span(holes)}" if holes else "")
        )
        if holes:
            notices.append(
                f"{source.source}: no published file covers {_span(holes)}; the periods there are not "
                "computed until one does"
            )
    snapshots = register_snapshots(conn)
    if snapshots:
        lines.append(
            f"  {'gp_register':<24} snapshot{'s' if len(snapshots) > 1 else ''} "
            f"{', '.join(str(d) for d in snapshots)} (the latest says who is registered now)"
        )
    if not covered and not snapshots:
        lines.append("  nothing published yet")
    missing = periods_not_computed(conn)
    if missing:
        lines.append(f"Periods NOT computed ({len(missing)}; reporting.period_coverage):")
        lines += [
            f"  {m['period_type']:<15} {m['period_start']} to {m['period_end']}: {m['reason_not_computed']}"
            for m in missing[:limit]
        ]
        if len(missing) > limit:
            lines.append(f"  ... and {len(missing) - limit} more")
        notices.append(
            f"{len(missing)} period(s) are not computed because the data does not cover them wholly (listed above)"
        )
    return lines, notices
