"""The embedded PostgreSQL is started with an environment that holds no key and no password.

Whoever starts it (a developer, `pophealth run`, a test) may hold every key of the platform in its environment;
a PostgreSQL superuser can read the postmaster's environment as a file. So the server is given an allow-list
of variables only (pophealth/warehouse/db.py: SERVER_ENVIRONMENT), and one found running with a secret is restarted.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from pophealth import config
from pophealth.warehouse import db

#: What an operator's shell might hold when it starts the server: each must stay out of the server.
SECRETS = {
    "POPHEALTH_LINKAGE_KEY": "5a" * 32,
    "POPHEALTH_SECONDARY_USE_KEY": "e7" * 32,
    "POPHEALTH_DIRECT_CARE_KEY": "d4" * 32,
    "POPHEALTH_VAULT_PRIVATE_KEY_FILE": "/keys/vault-private-key-file-path",
    "POPHEALTH_ANALYST_PASSWORD": "analyst-password-value",
    "AIRFLOW__CORE__FERNET_KEY": "fernet-key-value-0123456789",
    "PGPASSWORD": "libpq-password-value",
    "SOME_TOOL_API_TOKEN": "token-value-abcdef",
}


@pytest.fixture
def own_embedded_server(tmp_path):
    """A server of the test's own, in a fresh home, started and stopped here (not the shared one)."""
    saved = db._cached
    db._cached = None
    with config.environment(POPHEALTH_HOME=str(tmp_path / "home"), POPHEALTH_DATABASE_URL=None, **SECRETS):
        try:
            yield
        finally:
            db.stop_embedded()
            db._cached = saved


def _environ_as_superuser(pid: int) -> bytes:
    """The postmaster's environment as a superuser of the warehouse reads it: the attack of issue 17."""
    with psycopg.connect(db.warehouse().url()) as conn:
        return bytes(conn.execute("SELECT pg_read_binary_file(%s)", (f"/proc/{pid}/environ",)).fetchone()[0])


def _names(environ: bytes) -> list[str]:
    return [entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry]


def _assert_holds_no_secret(environ: bytes) -> None:
    assert "PATH" in _names(environ)  # the environment was read at all
    for value in SECRETS.values():
        assert value.encode() not in environ
    assert [n for n in _names(environ) if re.search(r"KEY|PASSW|SECRET|TOKEN|^POPHEALTH|^AIRFLOW", n)] == []


def test_the_embedded_postgresql_starts_with_no_key_or_password_in_its_environment(own_embedded_server):
    db.warehouse()
    pid = db._postmaster_pid()
    assert pid is not None
    _assert_holds_no_secret(Path(f"/proc/{pid}/environ").read_bytes())
    _assert_holds_no_secret(_environ_as_superuser(pid))
    # The process that started it keeps its own environment: only the server's is cut down.
    import os

    assert {name: os.environ.get(name) for name in SECRETS} == SECRETS


def test_a_server_found_running_with_a_key_in_its_environment_is_started_again_without_it(own_embedded_server):
    import pgserver  # the server as an older version started it: with the caller's whole environment

    config.paths().pgdata.parent.mkdir(parents=True)
    pgserver.get_server(config.paths().pgdata, cleanup_mode=None)
    tainted = db._postmaster_pid()
    assert "POPHEALTH_LINKAGE_KEY" in db.secrets_in_server_environment(tainted)

    db.warehouse()
    pid = db._postmaster_pid()
    assert pid != tainted
    assert db.secrets_in_server_environment(pid) == []
    _assert_holds_no_secret(_environ_as_superuser(pid))


def test_the_allow_list_passes_the_locale_and_path_and_nothing_secret():
    given = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/home/x",
        **SECRETS,
        "POPHEALTH_HOME": "/srv/pophealth",
        "DATABASE_URL": "postgresql://u:p@h/d",
        "EDITOR": "vi",
    }
    assert db.server_environment(given) == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/home/x",
    }
