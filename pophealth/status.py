"""`pophealth status`: the latest period loaded from each source, the marts' freshness, and what is waiting."""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg.rows import dict_row

from pophealth import config, db
from pophealth.landing import LOAD_ORDER


def status_text() -> tuple[str, bool]:
    healthy = True
    now = datetime.now(timezone.utc)
    lines = [f"Warehouse: {db.warehouse_url()}", "", "Latest period loaded from each source:"]
    with db.connect() as conn:
        conn.row_factory = dict_row
        if conn.execute("SELECT to_regclass('audit.load') AS t").fetchone()["t"] is None:
            return "\n".join(lines + ["  nothing has been loaded yet (run: pophealth run)"]), True
        latest = conn.execute(
            """SELECT DISTINCT ON (feed, provider) feed, provider, file_name, status, rows_read, rows_loaded,
                      rows_quarantined, rows_opted_out, coalesce(finished_at, started_at) AS at
               FROM audit.load WHERE status <> 'duplicate'
               ORDER BY feed, provider, period_end DESC NULLS LAST, load_id DESC"""
        ).fetchall()
        lines.append(f"  {'source':<28} {'file':<34} {'verdict':<12} {'rows loaded':>12} {'age':>8}")
        by_feed = {f: i for i, f in enumerate(LOAD_ORDER)}
        for load in sorted(latest, key=lambda r: (by_feed.get(r["feed"], 99), r["provider"] or "")):
            source = load["feed"] + (f" {load['provider']}" if load["provider"] else "")
            age_days = (now - load["at"]).total_seconds() / 86400
            verdict = load["status"].upper() if load["status"] in ("rejected", "gate_failed") else load["status"]
            healthy &= load["status"] in ("published", "superseded")
            lines.append(f"  {source:<28} {load['file_name']:<34} {verdict:<12} {load['rows_loaded']:>12,} "
                         f"{age_days:>6.1f} d")
        marts = conn.execute(
            """SELECT max(recorded_at) AS at, count(*) FILTER (WHERE status IN ('error', 'fail')) AS failed
               FROM audit.dbt_result
               WHERE run_id = (SELECT run_id FROM audit.dbt_result ORDER BY recorded_at DESC LIMIT 1)"""
        ).fetchone()  # audit.dbt_result comes with audit.load (schema.sql)
    lines.append("")
    if marts and marts["at"]:
        verdict = "FAILED" if marts["failed"] else "built"
        healthy &= not marts["failed"]
        lines.append(f"Marts: {verdict} {(now - marts['at']).total_seconds() / 3600:.1f} h ago")
    else:
        lines.append("Marts: never built")
    landing = config.landing_dir()
    if landing:
        from pophealth.load import pending_extracts

        waiting = [p for feed in LOAD_ORDER for p in pending_extracts(landing, feed)]
        lines.append(f"Waiting in {landing}: {len(waiting)} file(s)")
        lines += [f"  {p}" for p in waiting[:20]]
    return "\n".join(lines), healthy
