"""The platform's database roles and their grants (pophealth/warehouse/access.sql), applied with the warehouse DDL.

Passwords come from `POPHEALTH_<ROLE>_PASSWORD` on a real server; the embedded server listens only on a
unix socket in the project's own folder, so its roles need none.
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from pophealth.warehouse.db import role_password

ROLES = ("loader", "analyst", "ig_auditor", "reidentifier", "caldicott_guardian")


def apply_access(conn: psycopg.Connection) -> None:
    conn.execute(resources.files("pophealth.warehouse").joinpath("access.sql").read_text())
    for role in ROLES:
        password = role_password(role)
        if password:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
