"""The warehouse connection: an embedded PostgreSQL the project starts itself, or a real server by URL.

`POPHEALTH_DATABASE_URL` points everything at another server. Without it, a PostgreSQL 16 server from the
`pgserver` wheel runs from `.pophealth/pgdata`, listening only on a unix socket in that folder (no TCP
port, so nothing else on the machine can reach it). It is left running between commands so that
`pophealth db url` stays valid; `pophealth db stop` stops it.

The embedded server is started with an environment that holds no key and no password (`server_environment`):
whoever starts it may hold the platform's keys, and a PostgreSQL superuser can read the postmaster's
environment with `pg_read_binary_file('/proc/<pid>/environ')`. A server found running with a secret in its
environment (started by an older version) is stopped and started again without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
from psycopg import sql
from psycopg._copy_base import format_row_text as _format_row_text
from psycopg.adapt import Transformer
from psycopg.rows import Row

from pophealth import config

WAREHOUSE_DB = "pophealth"
AIRFLOW_DB = "airflow"


class DatabaseError(RuntimeError):
    """A database problem explained in one sentence, for the user."""


@dataclass(frozen=True)
class ConnectionParts:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def url(self, driver: str = "postgresql") -> str:
        auth = self.user + (f":{self.password}" if self.password else ":")
        if self.host.startswith("/"):
            return f"{driver}://{auth}@/{self.dbname}?host={self.host}&port={self.port}"
        return f"{driver}://{auth}@{self.host}:{self.port}/{self.dbname}"

    def shown(self) -> str:
        """user@host:port/database, for people to read: never the password (a real server's URL carries one)."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def with_db(self, dbname: str) -> ConnectionParts:
        return ConnectionParts(self.host, self.port, self.user, self.password, dbname)

    def with_user(self, user: str, password: str = "") -> ConnectionParts:
        """The same server and database as one of the platform's roles (pophealth/warehouse/access.sql)."""
        return ConnectionParts(self.host, self.port, user, password or role_password(user), self.dbname)


def role_password(role: str) -> str:
    """A role's password from `POPHEALTH_<ROLE>_PASSWORD`, or the file `POPHEALTH_<ROLE>_PASSWORD_FILE` names (a
    Docker secret: docker-compose.yml); empty on the embedded server (socket only)."""
    name = f"POPHEALTH_{role.upper()}_PASSWORD"
    return os.environ.get(name) or _password_from_file(name + "_FILE")


def _password_from_file(setting: str) -> str:
    """The password in the file a `..._FILE` setting names ("" when the setting is not set); a named file that
    cannot be read is an error (fail closed), which names the setting and the file, never a value."""
    path = os.environ.get(setting)
    if not path:
        return ""
    try:
        password = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        raise DatabaseError(f"{setting} names {path}, which cannot be read") from None
    if not password:
        raise DatabaseError(f"{setting} names {path}, which is empty")
    return password


def _configured_parts(url: str) -> ConnectionParts:
    """POPHEALTH_DATABASE_URL, with the password from POPHEALTH_DATABASE_PASSWORD_FILE when the URL has none (so
    that a deployment's environment holds where the warehouse is, and a file holds the password)."""
    parts = parse_url(url)
    if parts.password:
        return parts
    password = _password_from_file(config.ENV_DATABASE_PASSWORD_FILE)
    return ConnectionParts(parts.host, parts.port, parts.user, password, parts.dbname) if password else parts


def parse_url(url: str) -> ConnectionParts:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or "localhost"])[0]
    port = int(query.get("port", [parsed.port or 5432])[0])
    return ConnectionParts(
        host=host,
        port=port,
        user=unquote(parsed.username or "postgres"),
        password=unquote(parsed.password or ""),
        dbname=(parsed.path or "/postgres").lstrip("/") or "postgres",
    )


def is_embedded() -> bool:
    return not os.environ.get(config.ENV_DATABASE_URL)


#: The only variables the embedded PostgreSQL (and the initdb, pg_ctl and psql runs that start it) is given:
#: what a server needs to find its programs, its locale and a temporary folder. An allow-list, so that a new
#: key or password variable is left out without anyone having to remember to name it.
SERVER_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR")
#: Names that mark a variable as a secret, or a setting of the platform or Airflow (which may carry one).
SECRET_NAME = re.compile(r"KEY|PASSW|SECRET|TOKEN|CREDENTIAL|_CONN|DATABASE_URL|^POPHEALTH_|^AIRFLOW", re.IGNORECASE)


def server_environment(environ: dict[str, str]) -> dict[str, str]:
    """What of `environ` the embedded server may see: the allow-list and the locale, never a secret."""
    return {
        name: value
        for name, value in environ.items()
        if (name in SERVER_ENVIRONMENT or name.startswith("LC_")) and not SECRET_NAME.search(name)
    }


@contextmanager
def _environment_for_the_server() -> Iterator[None]:
    """os.environ cut down to `server_environment` while pgserver runs initdb, pg_ctl and psql (it passes
    its own process's environment to them and has no setting for another), then put back exactly."""
    saved = dict(os.environ)
    kept = server_environment(saved)
    try:
        os.environ.clear()
        os.environ.update(kept)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _postmaster_pid() -> int | None:
    try:
        return int((config.paths().pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def secrets_in_server_environment(pid: int) -> list[str]:
    """The names (never the values) of the variables in a running server's environment that look secret."""
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return []
    names = (entry.split(b"=", 1)[0].decode(errors="replace") for entry in environ.split(b"\0") if entry)
    return sorted(name for name in names if SECRET_NAME.search(name))


def _start_embedded() -> ConnectionParts:
    import logging
    import warnings

    # pgserver asks platformdirs for a runtime folder it does not need here; the warning is noise.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver  # imported here: starting a server is never done at import time

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata = config.paths().pgdata
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    running = _postmaster_pid()
    if running is not None and secrets_in_server_environment(running):
        stop_embedded()  # started with a key or password in its environment: started again without
        # pgserver keeps one handle per data folder and would hand back the stopped server's
        PostgresServer = pgserver.postgres_server.PostgresServer
        PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
    with _environment_for_the_server():
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        parts = parse_url(server.get_uri())
        for name in (WAREHOUSE_DB, AIRFLOW_DB):
            exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
            if "1 row" not in exists:
                server.psql(f"CREATE DATABASE {name};")
    return parts.with_db(WAREHOUSE_DB)


_cached: ConnectionParts | None = None


def warehouse() -> ConnectionParts:
    """The warehouse's connection parts, starting the embedded server if it is the one in use."""
    global _cached
    url = os.environ.get(config.ENV_DATABASE_URL)
    if url:
        return _configured_parts(url)
    if _cached is None:
        _cached = _start_embedded()
    return _cached


def warehouse_url() -> str:
    return warehouse().url()


def warehouse_shown() -> str:
    """The warehouse as printed in summaries and status: without its password."""
    return warehouse().shown()


def airflow_metadata_url() -> str:
    """Airflow's metadata database: POPHEALTH_AIRFLOW_DATABASE_URL, else the embedded server's `airflow` database,
    else (a real warehouse and no setting) SQLite beside Airflow's home, enough for `pophealth run` and `dag`."""
    url = os.environ.get(config.ENV_AIRFLOW_DATABASE_URL)
    if url:
        return parse_url(url).url("postgresql+psycopg2")
    if is_embedded():
        return warehouse().with_db(AIRFLOW_DB).url("postgresql+psycopg2")
    return f"sqlite:///{config.paths().airflow_home / 'airflow.db'}"


def _expected_parts() -> ConnectionParts:
    """Where the warehouse is, without starting anything (for configuration written ahead of a run)."""
    url = os.environ.get(config.ENV_DATABASE_URL)
    if url:
        return _configured_parts(url)
    return ConnectionParts(str(config.paths().pgdata), 5432, "postgres", "", WAREHOUSE_DB)


def dbt_env() -> dict[str, str]:
    """The variables `dbt_project/profiles.yml` reads. Does not start the embedded server."""
    parts = _cached or _expected_parts()
    return {
        "POPHEALTH_DB_HOST": parts.host,
        "POPHEALTH_DB_PORT": str(parts.port),
        "POPHEALTH_DB_USER": parts.user,
        "POPHEALTH_DB_PASSWORD": parts.password,
        "POPHEALTH_DB_NAME": parts.dbname,
    }


def one_row(cursor: psycopg.Cursor[Row]) -> Row:
    """The row of a query that always returns exactly one (an aggregate, a function call, a to_regclass)."""
    row = cursor.fetchone()
    if row is None:
        raise DatabaseError("a query that always returns a row returned none")
    return row


@contextmanager
def connect(autocommit: bool = False, role: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A warehouse connection; with `role`, it works with that role's grants only (pophealth/warehouse/access.sql)."""
    try:
        conn = psycopg.connect(warehouse().url(), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the warehouse: {str(exc).splitlines()[0]}") from None
    try:
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            conn.rollback()
        raise
    finally:
        conn.close()


def stop_embedded(timeout: float = 30.0) -> bool:
    """Stop the embedded server if it runs; True when one was stopped.

    The postmaster is asked for a fast shutdown by signal (SIGINT) rather than through `pg_ctl`, which
    refuses to run as root, the user pgserver is started by on these machines.
    """
    import signal
    import time

    pid = _postmaster_pid()
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    raise DatabaseError(f"the embedded PostgreSQL (pid {pid}) did not stop within {timeout:.0f} s")


def copy_transformer(conn: psycopg.Connection[Any]) -> Any:  # psycopg's Transformer: C or Python, by build
    """The adapters `copy_line` uses: the connection's, as its COPY's own (a Transformer without one formatted a row
    12% slower). A forked staging worker uses its parent's, for formatting only: the connection is never used there."""
    return Transformer.from_context(conn)


def copy_line(row: tuple[object, ...], tx: Any, out: bytearray) -> None:
    """One row of a `COPY ... FROM STDIN` in text form, newline included, added to `out`, by psycopg's own formatter
    (the one `Copy.write_row` calls): a row formatted away from a connection (a staging worker's, ingest/pieces.py)
    is byte for byte what the connection would send. Private in psycopg, whose version is pinned; tests/robustness/
    test_staging_pieces.py round-trips every type staging writes."""
    _format_row_text(row, tx, out)
