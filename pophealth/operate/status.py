"""`pophealth status`: the latest period loaded of each source, the marts' freshness, the next delivery due of each
feed (from its declared arrival schedule) and what is waiting in the landing folder (the one given,
else POPHEALTH_LANDING_DIR, else the one the last run used); `--json` gives the same as one document for monitoring.

Everything comes from the audit schema (and dbt's last run results for builds outside Airflow), so the command is
quick and never touches personal data. It is unhealthy (exit code 1) when a load is refused and not yet replaced
by a good file, when the last marts build failed, or when the marts gate refused the last candidate marts: the
same conditions that stop `build_marts` or keep the analysts on older marts.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from psycopg.rows import dict_row

from pophealth import config
from pophealth.contract.feeds import FEEDS, LOAD_ORDER, PERSONAL_FEEDS
from pophealth.warehouse import db

#: audit.load.status -> what the user reads (the refusals in capitals, so they stand out in a list).
VERDICTS = {
    "published": "published",
    "superseded": "published, since replaced",
    "validated": "passed, not yet published",
    "loading": "loading",
    "interrupted": "INTERRUPTED (nothing stored; the next run loads it again)",
    "gate_failed": "GATE FAILED",
    "rejected": "REFUSED",
    "stale": "STALE (older than the list in force; never published)",
    "rekeyed": "made under a rotated key: load it again",
    "failed": "FAILED (a crash; needs a person)",
}


#: Red on a terminal (or with FORCE_COLOR set), plain text otherwise (logs, files).
_COLOUR = sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))
RED, RESET = ("\033[31m", "\033[0m") if _COLOUR else ("", "")


@dataclass
class Status:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # said under the verdict, but not a failure
    data: dict = field(default_factory=dict)  # the same facts for `--json`

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict:
        return {"healthy": self.healthy, "problems": self.problems, "notices": self.notices, **self.data}

    def text(self) -> str:
        verdict = (
            "Healthy: nothing has failed."
            if self.healthy
            else f"{RED}NEEDS ATTENTION: {len(self.problems)} problem(s){RESET}\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )
        return "\n".join(self.lines + ["", verdict] + [f"Note: {n}" for n in self.notices])


def age(then: datetime | None, now: datetime) -> str:
    """How long ago, in the unit a person reads at a glance."""
    if then is None:
        return "-"
    seconds = max((now - then).total_seconds(), 0)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _when(then: datetime | None, now: datetime) -> str:
    return f"{then:%Y-%m-%d %H:%M} UTC ({age(then, now)} ago)" if then else "never"


def collect(landing: Path | None = None) -> Status:
    now = datetime.now(UTC)
    status = Status([f"Warehouse: {db.warehouse_shown()}"])
    status.data["warehouse"] = db.warehouse_shown()
    with db.connect() as conn:
        conn.row_factory = dict_row
        if db.one_row(conn.execute("SELECT to_regclass('audit.load') AS t"))["t"] is None:
            status.lines += ["", "Nothing has been loaded yet (run: pophealth setup, then pophealth run)."]
            return status
        _sources(conn, status, now)
        _next_deliveries(status, now)
        _coverage(conn, status)
        _marts(conn, status, now)
        _audit_logs(conn, status)
        _geographies(conn, status)
    if landing is not None:
        _waiting(landing, status, "given")
    elif config.landing_dir() is not None:
        _waiting(config.landing_dir(), status, config.ENV_LANDING_DIR)
    else:
        _waiting(config.remembered_landing(), status, "the folder the last run used")
    return status


def _audit_logs(conn, status: Status) -> None:
    """The re-identification and key-rotation logs' hash chains, and who could rewrite them."""
    from pophealth.governance.chain import summary_lines, verify

    if conn.execute("SELECT to_regclass('audit.reidentification_approval') AS t").fetchone()["t"] is None:
        return
    checks = verify(conn, config.paths().home / "audit_chain_heads.json")
    keepers = [
        r["rolname"]
        for r in conn.execute(
            """SELECT m.rolname FROM pg_auth_members a JOIN pg_roles k ON k.oid = a.roleid
           JOIN pg_roles m ON m.oid = a.member WHERE k.rolname = 'audit_keeper' AND m.rolcanlogin ORDER BY 1"""
        )
    ]
    supers = [
        r["rolname"] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper AND rolcanlogin ORDER BY 1")
    ]
    status.lines += ["", "Audit logs (re-identification, approvals, key rotations):"]
    for ok, line in summary_lines(checks):
        status.lines.append(("  " if ok else "  " + RED) + line + ("" if ok else RESET))
    status.problems += [f"{c.table}: the hash chain is broken ({c.breaks[0]})" for c in checks if not c.intact]
    status.notices.append(
        "logins that could rewrite the audit logs (and must not be used by any process): "
        + ", ".join(supers + keepers)
        + " (superusers, and members of audit_keeper)"
    )


def _sources(conn, status: Status, now: datetime) -> None:
    from pophealth.warehouse.audit import latest_refusals

    latest = conn.execute(
        """SELECT DISTINCT ON (l.feed, l.provider) l.load_id, l.feed, l.provider, l.period_end, l.file_name, l.status,
                  l.rows_read,
                  l.rows_loaded, l.rows_quarantined, l.rows_opted_out, coalesce(l.finished_at, l.started_at) AS at,
                  g.errors, g.warnings, g.rules
           FROM audit.load l
           LEFT JOIN (SELECT load_id, count(*) AS rules,
                             count(*) FILTER (WHERE status = 'failed' AND severity = 'error') AS errors,
                             count(*) FILTER (WHERE status = 'failed' AND severity = 'warn') AS warnings
                      FROM audit.gate_result WHERE feed <> 'marts' GROUP BY load_id) g USING (load_id)
           -- a file delivered again unchanged: its first load is the one to show; a stale opt-out list is listed below
           -- the latest period, not the latest load: a past period delivered again is not what the source is up to;
           -- a refused load that a later unchanged delivery of the published file resolved is not shown over it
           WHERE l.status NOT IN ('duplicate', 'stale')
           ORDER BY l.feed, l.provider, l.period_end DESC NULLS LAST,
                    EXISTS (SELECT FROM audit.load d WHERE d.status = 'duplicate' AND d.feed = l.feed
                              AND d.provider IS NOT DISTINCT FROM l.provider
                              AND d.period_end IS NOT DISTINCT FROM l.period_end AND d.load_id > l.load_id)
                    AND l.status IN ('gate_failed', 'rejected', 'failed'),
                    l.load_id DESC"""
    ).fetchall()
    status.lines += ["", "Latest period loaded of each source:"]
    header = (
        f"  {'source':<24} {'period end':<10} {'file':<30} {'verdict':<26} {'read':>8} {'loaded':>8} "
        f"{'quarant.':>8} {'opted out':>9} {'age':>8}"
    )
    status.lines.append(header)
    order = {feed: i for i, feed in enumerate(LOAD_ORDER)}
    for load in sorted(latest, key=lambda r: (order.get(r["feed"], 99), r["provider"] or "")):
        source = load["feed"] + (f" {load['provider']}" if load["provider"] else "")
        verdict = VERDICTS.get(load["status"], load["status"])
        if load["rules"] and load["status"] != "gate_failed":
            plural = "s" if load["warnings"] != 1 else ""
            verdict += f" ({load['warnings']} warning{plural})" if load["warnings"] else ""
        period = load["period_end"].isoformat() if load["period_end"] else "-"
        status.lines.append(
            f"  {source:<24} {period:<10} {load['file_name']:<30} {verdict:<26} {load['rows_read']:>8,} "
            f"{load['rows_loaded']:>8,} {load['rows_quarantined']:>8,} {load['rows_opted_out']:>9,} "
            f"{age(load['at'], now):>8}"
        )
        status.data.setdefault("sources", []).append(
            {
                "feed": load["feed"],
                "provider": load["provider"],
                "period_end": load["period_end"],
                "file_name": load["file_name"],
                "status": load["status"],
                "load_id": load["load_id"],
                "rows_read": load["rows_read"],
                "rows_loaded": load["rows_loaded"],
                "rows_quarantined": load["rows_quarantined"],
                "rows_opted_out": load["rows_opted_out"],
                "gate_warnings": load["warnings"] or 0,
                "at": load["at"],
            }
        )
    if not latest:
        status.lines.append("  nothing has been loaded yet")
    in_force = conn.execute(
        "SELECT count(*) AS n FROM audit.load WHERE feed = 'optouts' AND status = 'published'"
    ).fetchone()["n"]
    for stale in conn.execute("""SELECT file_name, message FROM audit.load WHERE status = 'stale'
                                 AND load_id > coalesce((SELECT max(load_id) FROM audit.load
                                                         WHERE feed = 'optouts' AND status = 'published'), 0)
                                 ORDER BY load_id"""):
        status.lines.append(f"  optouts: {stale['file_name']} refused as {stale['message']}")
    if not in_force and any(load["feed"] in PERSONAL_FEEDS for load in latest):
        status.problems.append(
            "no national data opt-out list is in force (after a key rotation it must be loaded "
            "again): every personal load is refused until it is (docs/runbook.md)"
        )
    for refused in latest_refusals(conn):
        message = (refused["message"] or "").strip().splitlines()
        status.problems.append(
            f"{refused['file_name']}: {VERDICTS.get(refused['status'], refused['status'])} (load {refused['load_id']})"
            + (f": {message[0]}" if message else "")
            + "; the marts are not rebuilt until a good file for that period is delivered (docs/runbook.md)"
        )


#: Months between two periods of a feed that sends one file per period: the period after the latest is the one due.
PERIOD_MONTHS = {feed.name: feed.period_months for feed in FEEDS if feed.period_months}
#: A latest load in one of these states has to be delivered again: that period is still the one due.
DUE_AGAIN = ("gate_failed", "rejected", "failed", "interrupted", "rekeyed")


def _month_end_after(period_end: date, months: int) -> date:
    first = date(period_end.year + (period_end.month - 1 + months) // 12, (period_end.month - 1 + months) % 12 + 1, 1)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return following - timedelta(days=1)


def next_deliveries(latest: list[dict], now: datetime) -> list[dict]:
    """Per feed, when its scheduled run next looks for files (its declared arrival, Europe/London), until when it
    waits, and, for a feed of periods, the period end due next of each provider: the one after its latest period
    loaded, or that period again when its file was refused. `latest`: one row per source (status.data["sources"])."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    london = ZoneInfo("Europe/London")
    due = []
    for declared in FEEDS:
        feed, arrival = declared.name, declared.arrival
        looks = croniter(arrival.cron, now.astimezone(london)).get_next(datetime)
        expected = {}
        if feed in PERIOD_MONTHS:
            for r in latest:  # one row per source: its latest period
                if r["feed"] == feed and r["period_end"]:
                    # A refused file is due again; after a good one, the next period.
                    expected[r["provider"]] = (
                        r["period_end"]
                        if r["status"] in DUE_AGAIN
                        else _month_end_after(r["period_end"], PERIOD_MONTHS[feed])
                    )
        due.append(
            {
                "feed": feed,
                "schedule": arrival.described,
                "next_look": looks,
                "waits_until": looks + arrival.wait,
                "expected": [{"provider": p, "period_end": d} for p, d in sorted(expected.items())],
            }
        )
    return due


def _next_deliveries(status: Status, now: datetime) -> None:
    due = next_deliveries(status.data.get("sources", []), now)
    status.data["next_deliveries"] = due
    status.lines += ["", "Next delivery due of each feed (the arrival schedule):"]
    for d in due:
        expected = ", ".join(f"{e['provider']} {e['period_end']}" for e in d["expected"])
        status.lines.append(
            f"  {d['feed']:<24} next looks {d['next_look']:%Y-%m-%d %H:%M %Z}"
            + (
                f", waits until {d['waits_until']:%Y-%m-%d %H:%M}"
                if d["waits_until"] - d["next_look"] > timedelta(hours=1)
                else ""
            )
            + (f"; due: period ending {expected}" if expected else f"; {d['schedule']}")
        )


def _coverage(conn, status: Status) -> None:
    from pophealth.reports.coverage import coverage_lines

    lines, notices = coverage_lines(conn)
    status.lines += [""] + lines
    status.notices += notices  # said under the verdict: a period not computed is never silent


def _last_cli_build() -> tuple[datetime, int] | None:
    """dbt's own record of the last build run outside Airflow (the CLI's target folder): when, and how many failed."""
    from pophealth.marts.build import manifest_path

    run_results = manifest_path().parent / "run_results.json"
    try:
        data = json.loads(run_results.read_text())
    except (OSError, ValueError):
        return None
    if (data.get("args") or {}).get("which") not in ("build", "run"):
        return None
    at = datetime.fromisoformat(data["metadata"]["generated_at"].replace("Z", "+00:00"))
    return at, sum(1 for r in data.get("results", []) if r.get("status") in ("error", "fail"))


def _marts(conn, status: Status, now: datetime) -> None:
    from pophealth.quality.marts_gate import CANDIDATE, FEED, PUBLISHED

    builds = []
    dag_build = conn.execute(
        """SELECT max(recorded_at) AS at, count(*) FILTER (WHERE status IN ('error', 'fail')) AS failed
           FROM audit.dbt_result
           WHERE run_id IS NOT DISTINCT FROM (SELECT run_id FROM audit.dbt_result ORDER BY recorded_at DESC LIMIT 1)"""
    ).fetchone()
    if dag_build["at"]:
        builds.append((dag_build["at"], dag_build["failed"]))
    if (cli_build := _last_cli_build()) is not None:
        builds.append(cli_build)
    built_at, build_failures = max(builds) if builds else (None, 0)

    gate = conn.execute(
        """SELECT checked_at AS at, count(*) FILTER (WHERE status = 'failed' AND severity = 'error') AS errors
           FROM audit.gate_result WHERE feed = %s GROUP BY checked_at ORDER BY checked_at DESC LIMIT 1""",
        (FEED,),
    ).fetchone()
    passed_gate = conn.execute(
        """SELECT max(checked_at) AS at FROM (
                                      SELECT checked_at FROM audit.gate_result WHERE feed = %s GROUP BY checked_at
                                      HAVING count(*) FILTER (WHERE status = 'failed' AND severity = 'error') = 0) g""",
        (FEED,),
    ).fetchone()["at"]
    candidates = [
        s + CANDIDATE
        for s in PUBLISHED
        if conn.execute(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s) AS e", (s + CANDIDATE,)
        ).fetchone()["e"]
    ]
    has_marts = conn.execute("SELECT to_regclass('marts.risk_stratification') IS NOT NULL AS e").fetchone()["e"]
    as_of = (
        conn.execute("SELECT max(as_of_date) AS d FROM marts.risk_stratification").fetchone()["d"]
        if has_marts
        else None
    )
    # The publish itself is a schema swap with no record of its own: the marts were last published when the
    # marts gate last passed (the DAG swaps them in right after), or by the last build if it built straight into
    # `marts` (outside the DAG: no candidates, and after every gate).
    published_at = passed_gate
    if built_at and not build_failures and not candidates and (published_at is None or built_at > published_at):
        published_at = built_at
    newer_loads = (
        conn.execute(
            "SELECT count(*) AS n FROM audit.load WHERE status = 'published' AND published_at > %s", (published_at,)
        ).fetchone()["n"]
        if published_at
        else 0
    )

    status.data["marts"] = {
        "last_build": built_at,
        "build_failures": build_failures,
        "marts_gate": ({"at": gate["at"], "errors": gate["errors"]} if gate else None),
        "last_publish": published_at if has_marts else None,
        "as_of_date": as_of,
        "loads_not_in_marts": newer_loads,
        "candidates": candidates,
    }
    status.lines += ["", "Marts:"]
    status.lines.append(
        f"  last build    {_when(built_at, now)}"
        + (f": FAILED ({build_failures} model(s) or test(s) failed)" if build_failures else "")
    )
    if gate:
        status.lines.append(
            f"  marts gate    {_when(gate['at'], now)}: "
            + (f"FAILED ({gate['errors']} rule(s)), the build was refused" if gate["errors"] else "passed")
        )
    status.lines.append(
        f"  last publish  {_when(published_at, now) if has_marts else 'never'}"
        + (f"; the marts describe the data as of {as_of}" if as_of else "")
    )
    if newer_loads:
        status.lines.append(
            f"  {newer_loads} file(s) published since then are not in the marts yet "
            "(build_marts runs when its inputs change)"
        )
    if candidates:
        status.lines.append(f"  candidates kept for inspection: {', '.join(candidates)}")
    if build_failures:
        status.problems.append(
            f"the last marts build failed ({build_failures} model(s) or test(s)); analysts keep the last good marts"
        )
    if gate and gate["errors"] and candidates:
        status.problems.append(
            f"the marts gate refused the last build ({gate['errors']} rule(s) failed); analysts "
            f"keep the last good marts; the refused build is in {', '.join(candidates)}"
        )


def _geographies(conn, status: Status) -> None:
    """The councils and localities the metrics are reported for, and any that cannot be computed (said, never
    left out in silence: issue 18)."""
    from pophealth.reports.geographies import default_la_code, geography_problems

    if conn.execute("SELECT to_regclass('raw.ref_lsoa') IS NOT NULL AS e").fetchone()["e"]:
        places = conn.execute(
            """SELECT coalesce(la_code, CASE WHEN (SELECT count(la_code) FROM raw.ref_lsoa) = 0 THEN %s END)
                      AS council, count(DISTINCT locality_code) AS localities, count(DISTINCT lsoa_code) AS lsoas
               FROM raw.ref_lsoa GROUP BY 1 ORDER BY 1 NULLS LAST""",
            (default_la_code(),),
        ).fetchall()
        if places:
            status.lines += ["", "Geographies of the Better Care Fund metrics (the area, each council, each locality):"]
            status.lines += [
                f"  {p['council'] or 'NO COUNCIL':<12} {p['localities']:>4} localities {p['lsoas']:>6,} LSOAs"
                for p in places
            ]
    status.problems += geography_problems(conn)


def _waiting(landing: Path | None, status: Status, source: str = "given") -> None:
    from pophealth.ingest import landing as landing_rules
    from pophealth.ingest import load

    status.lines.append("")
    status.data["waiting"] = {
        "landing": landing,
        "landing_from": source if landing else None,
        "files": [],
        "being_written": [],
        "not_extracts": [],
    }
    if landing is None:
        status.lines.append(
            f"Waiting: no landing folder given (--landing PATH or {config.ENV_LANDING_DIR}) and no run has used one yet"
        )
        return
    if not landing.is_dir():
        status.problems.append(f"the landing folder does not exist: {landing}")
        return
    waiting = [(feed, Path(p).name) for feed in LOAD_ORDER for p in load.pending_extracts(landing, feed)]
    # Files still being written wait too, but are not loaded yet: temporary names (.part, .tmp, hidden), and
    # extracts that changed while the landing rules looked at them (landing.settled).
    extracts = landing_rules.scan(landing).extracts
    complete = {e.path for e in landing_rules.settled(extracts)}
    writing = sorted(
        [p.name for p in landing.iterdir() if p.is_file() and landing_rules.is_temporary(p) and ".csv" in p.name]
        + [e.name for e in extracts if e.path not in complete]
    )
    status.data["waiting"].update(files=[{"feed": f, "file_name": n} for f, n in waiting], being_written=writing)
    status.lines.append(
        f"Waiting in {landing}"
        + (f" ({source})" if source != "given" else "")
        + f": {len(waiting)} file(s) to load"
        + (f", {len(writing)} still being written" if writing else "")
    )
    status.lines += [f"  {feed:<24} {name}" for feed, name in waiting[:30]]
    if len(waiting) > 30:
        status.lines.append(f"  ... and {len(waiting) - 30} more")
    status.lines += [f"  {'(still being written)':<24} {name}" for name in writing]
    not_extracts = landing_rules.scan(landing).not_extracts()
    status.data["waiting"]["not_extracts"] = [{"file_name": n, "why": w} for n, w in not_extracts]
    if not_extracts:
        status.lines.append(f"Not extracts of the contract ({len(not_extracts)}; never loaded):")
        status.lines += [f"  {name}: {why}" for name, why in not_extracts[:30]]
        if len(not_extracts) > 30:
            status.lines.append(f"  ... and {len(not_extracts) - 30} more")
        # Not a failure (nothing was loaded or refused; the exit code stays 0), but never silent: said under the
        # verdict.
        status.notices.append(
            f"{len(not_extracts)} file(s) in the landing folder are not extracts of the contract and "
            "are NOT LOADED (listed above): rename, decompress or remove them"
        )
