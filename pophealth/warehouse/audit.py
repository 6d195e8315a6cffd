"""Reading the audit schema: what was loaded, refused, quarantined and removed, for people and for tasks."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from pophealth.warehouse import db


def load_record(load_id: int) -> dict:
    with db.connect() as conn:
        conn.row_factory = dict_row
        record = conn.execute("SELECT * FROM audit.load WHERE load_id = %s", (load_id,)).fetchone()
    if record is None:
        raise LookupError(f"load {load_id} does not exist")
    return record


#: Loads that are not (yet) the outcome of a delivery: under way, or cut off before they were staged.
UNDECIDED = ["loading", "interrupted"]
#: Loads that stop the marts until a later good delivery of the same period: refused, or crashed (`failed`).
REFUSED = ["gate_failed", "rejected", "failed"]


def latest_refusals(conn: psycopg.Connection, feed: str | None = None) -> list[dict]:
    """Per feed, provider and period, the latest delivery when it was refused (gate failed, rejected) or crashed
    (failed): a later good or duplicate delivery resolves it. Of one feed, or of all."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """
        WITH latest AS (
            SELECT DISTINCT ON (feed, provider, period_end) load_id, feed, provider, period_end, file_name, status,
                   message
            FROM audit.load
            WHERE status <> ALL (%s) AND (%s::text IS NULL OR feed = %s)
            ORDER BY feed, provider, period_end, load_id DESC
        )
        SELECT * FROM latest WHERE status = ANY(%s) ORDER BY load_id
        """,
            (UNDECIDED, feed, feed, REFUSED),
        )
        .fetchall()
    )


def blocking_loads() -> list[dict]:
    """Files whose latest load was refused (gate failed, rejected) or crashed (failed), not replaced by a good one."""
    with db.connect() as conn:
        return latest_refusals(conn)


def newest_published_load() -> int | None:
    """The newest load that was ever published (a later one superseding it keeps it counted): what a build of
    the marts takes in."""
    with db.connect() as conn:
        return db.one_row(conn.execute("SELECT max(load_id) FROM audit.load WHERE published_at IS NOT NULL"))[0]


def last_marts_publication() -> dict | None:
    """The latest publication of the marts (audit.marts_publication): when, by which run, built on which load."""
    with db.connect() as conn:
        return (
            conn.cursor(row_factory=dict_row)
            .execute("SELECT * FROM audit.marts_publication ORDER BY publication_id DESC LIMIT 1")
            .fetchone()
        )
