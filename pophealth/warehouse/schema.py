"""Making the warehouse what schema.sql and access.sql say, and the few facts about it every room reads.

`prepare_warehouse` is idempotent and runs before anything touches the warehouse (setup, every load, the
command line): the DDL, the roles' grants, and the re-identification rules the vault's database functions
read (the purposes from the data sharing register, and the limits from the settings).
"""

from __future__ import annotations

import os
from datetime import date
from importlib import resources

import psycopg

from pophealth import config
from pophealth.contract.agreements import reidentification_purposes
from pophealth.warehouse import db
from pophealth.warehouse.access import apply_access

#: The raw tables that hold a person's records (each row keyed by the transit pseudonym).
PERSONAL_TABLES = ("raw.gp_register", "raw.apc_episode", "raw.cld_event")


class SettingError(RuntimeError):
    """A setting of the warehouse that cannot be used as given; the message says which and why."""


def prepare_warehouse() -> None:
    ddl = resources.files("pophealth.warehouse").joinpath("schema.sql").read_text()
    with db.connect() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pophealth schema'))")
        conn.execute(ddl)
        apply_access(conn)
        apply_reidentification_rules(conn)


def optout_list_in_force(conn: psycopg.Connection) -> tuple[int, date] | None:
    """(load_id, period_end) of the published opt-out list, the one in force; None before the first."""
    return conn.execute(
        """SELECT load_id, period_end FROM audit.load WHERE feed = 'optouts' AND status = 'published'
           ORDER BY period_end DESC, load_id DESC LIMIT 1"""
    ).fetchone()


def warehouse_key_version(conn: psycopg.Connection) -> str | None:
    """The linkage key the warehouse's pseudonyms are made with: the last rotation's, else the first load's."""
    rotated = conn.execute(
        "SELECT new_key_version FROM audit.key_rotation WHERE purpose = 'linkage' ORDER BY rotation_id DESC LIMIT 1"
    ).fetchone()
    if rotated:
        return rotated[0]
    first = conn.execute(
        """SELECT key_version FROM audit.load WHERE status IN ('published', 'superseded') AND key_version IS NOT NULL
           ORDER BY load_id LIMIT 1"""
    ).fetchone()
    return first[0] if first else None


#: The re-identification limits' defaults (settings POPHEALTH_REIDENTIFY_MAX_PEOPLE, _DAILY_PEOPLE): beyond them a
#: Caldicott guardian approves; beyond MOST_PEOPLE_WITH_APPROVAL a request is refused outright.
PEOPLE_PER_REQUEST = 10
PEOPLE_PER_LOGIN_PER_DAY = 30
MOST_PEOPLE_WITH_APPROVAL = 500


def _positive_setting(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SettingError(f"{name} must be a whole number of people, at least 1 (it is {value!r})")
    return int(value)


def apply_reidentification_rules(conn: psycopg.Connection) -> None:
    """Write the closed list of purposes (from the data sharing register) and the limits where the database's
    re-identification functions read them; run by prepare_warehouse as the warehouse owner."""
    purposes = reidentification_purposes()
    conn.execute("DELETE FROM vault.reidentification_purpose WHERE NOT (purpose = ANY(%s))", (list(purposes),))
    for code, description in purposes.items():
        conn.execute(
            """INSERT INTO vault.reidentification_purpose (purpose, description) VALUES (%s, %s)
                        ON CONFLICT (purpose) DO UPDATE SET description = EXCLUDED.description""",
            (code, description),
        )
    per_request = _positive_setting(config.ENV_REIDENTIFY_MAX_PEOPLE, PEOPLE_PER_REQUEST)
    per_day = _positive_setting(config.ENV_REIDENTIFY_DAILY_PEOPLE, PEOPLE_PER_LOGIN_PER_DAY)
    conn.execute(
        """INSERT INTO vault.reidentification_limit (people_per_request, people_per_login_per_day,
                                                              most_people_with_approval) VALUES (%s, %s, %s)
                    ON CONFLICT (only_row) DO UPDATE SET people_per_request = EXCLUDED.people_per_request,
                        people_per_login_per_day = EXCLUDED.people_per_login_per_day,
                        most_people_with_approval = EXCLUDED.most_people_with_approval""",
        (per_request, per_day, max(MOST_PEOPLE_WITH_APPROVAL, per_request)),
    )
