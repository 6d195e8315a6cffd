"""Verifying the hash chains of the re-identification and key-rotation logs (pophealth/warehouse/schema.sql).

Each chained row holds `row_hash = sha256(previous_hash || the row as jsonb text without its two hashes)` and
its `chain_position`. This module recomputes every hash from the rows alone, in Python, with PostgreSQL's
built-in `to_jsonb` rendering the row (never a function of the warehouse, which whoever owns it could
replace), and says where the chain breaks: a deleted row (a gap), a changed row (its hash), a row written
around the trigger (no position), a row put in out of turn (its previous hash).

A superuser who rewrites a log and recomputes every hash after the change leaves a chain that verifies. The
head (last position and hash) is therefore printed by `pophealth ig-report` and `pophealth status` for the IG
officer to keep outside the database, and remembered in POPHEALTH_HOME/audit_chain_heads.json: a later head
that does not extend a remembered one is reported as a rewrite.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

#: The chained tables and each one's id column.
CHAINED = (
    ("reidentification", "request_id"),
    ("reidentification_approval", "approval_id"),
    ("key_rotation", "rotation_id"),
)
GENESIS = "0" * 64


@dataclass
class ChainCheck:
    table: str
    rows: int = 0
    before_chain: int = 0  # rows written before the chain existed (an older warehouse)
    head_position: int = 0
    head_hash: str = GENESIS
    breaks: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks


def row_hash(previous_hash: str, canonical: str) -> str:
    return hashlib.sha256((previous_hash + canonical).encode("utf-8")).hexdigest()


def _check_table(conn: psycopg.Connection, table: str, id_column: str) -> ChainCheck:
    check = ChainCheck(f"audit.{table}")
    rows = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            sql.SQL(
                "SELECT t.{id}, t.chain_position, t.previous_hash, t.row_hash, "
                "(pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) 'row_hash'::text "
                " OPERATOR(pg_catalog.-) 'previous_hash'::text)::text "
                "FROM audit.{t} t ORDER BY t.chain_position NULLS FIRST, t.{id}"
            ).format(id=sql.Identifier(id_column), t=sql.Identifier(table))
        )
        .fetchall()
    )
    check.rows = len(rows)
    chained_ids = [r[0] for r in rows if r[1] is not None]
    first_chained = min(chained_ids) if chained_ids else None
    expected_position, expected_previous = 1, GENESIS
    for row_id, position, previous, stored, canonical in rows:
        if position is None:
            if first_chained is None or row_id < first_chained:
                check.before_chain += 1
            else:
                check.breaks.append(
                    f"{id_column} {row_id} was written around the chain (no position: its trigger "
                    "was disabled, dropped or replaced)"
                )
            continue
        if position != expected_position:
            check.breaks.append(
                f"position {expected_position} to {position - 1} missing before {id_column} "
                f"{row_id} (position {position}): rows were deleted"
                if position > expected_position
                else f"position {position} ({id_column} {row_id}) is out of order"
            )
        elif previous != expected_previous:
            check.breaks.append(
                f"position {position} ({id_column} {row_id}) does not follow the row before it: "
                "a row was replaced or put in out of turn"
            )
        if stored != row_hash(previous or "", canonical):
            check.breaks.append(
                f"position {position} ({id_column} {row_id}) does not match its hash: the row was changed or forged"
            )
        expected_position, expected_previous = position + 1, stored
        check.head_position, check.head_hash = position, stored
    return check


def verify(conn: psycopg.Connection, anchor_file: Path | None = None) -> list[ChainCheck]:
    """Check every chained log; with `anchor_file`, also that each remembered head is still in its chain, and
    remember the heads of the chains that verify."""
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")  # how to_jsonb writes a timestamptz: as the trigger did
        checks = [_check_table(conn, table, id_column) for table, id_column in CHAINED]
        remembered = _read_anchor(anchor_file)
        for check in checks:
            head = remembered.get(check.table)
            if head and head["position"] <= check.head_position:
                query = sql.SQL("SELECT (SELECT row_hash FROM audit.{} WHERE chain_position = %s)").format(
                    sql.Identifier(check.table.split(".")[1])
                )
                ((found,),) = conn.cursor(row_factory=tuple_row).execute(query, (head["position"],)).fetchall()
                if found != head["hash"]:
                    check.breaks.append(
                        f"position {head['position']} is no longer the row seen on {head['seen_at']} "
                        "(its hash differs): the log was rewritten and its chain recomputed"
                    )
            elif head and head["position"] > check.head_position:
                check.breaks.append(
                    f"the chain ends at position {check.head_position}, but position "
                    f"{head['position']} was seen on {head['seen_at']}: rows were deleted from the end"
                )
    if anchor_file is not None and all(c.intact for c in checks):
        _write_anchor(anchor_file, conn, checks)
    return checks


def _read_anchor(anchor_file: Path | None) -> dict:
    if anchor_file is None or not anchor_file.exists():
        return {}
    try:
        return json.loads(anchor_file.read_text())
    except (OSError, ValueError):
        return {}


def _write_anchor(anchor_file: Path, conn: psycopg.Connection, checks: list[ChainCheck]) -> None:
    ((now,),) = (
        conn.cursor(row_factory=tuple_row)
        .execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI UTC')")
        .fetchall()
    )
    heads = {
        c.table: {"position": c.head_position, "hash": c.head_hash, "seen_at": now} for c in checks if c.head_position
    }
    anchor_file.parent.mkdir(parents=True, exist_ok=True)
    anchor_file.write_text(json.dumps(heads, indent=2) + "\n")


def summary_lines(checks: list[ChainCheck]) -> list[tuple[bool, str]]:
    """One line per log (intact?, text), then one per break."""
    lines = []
    for c in checks:
        if c.intact:
            lines.append(
                (
                    True,
                    f"{c.table}: hash chain intact, {c.rows:,} rows; head position {c.head_position} "
                    f"{c.head_hash[:16]}"
                    + (f" ({c.before_chain} rows from before the chain)" if c.before_chain else ""),
                )
            )
        else:
            lines.append((False, f"{c.table}: HASH CHAIN BROKEN"))
            lines += [(False, f"  {b}") for b in c.breaks]
    return lines
