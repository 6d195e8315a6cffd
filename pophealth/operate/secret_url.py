"""A connection URL put together from secret files, for settings that want a whole URL with its password.

Airflow reads a sensitive setting from a command's output (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD`, the
Celery broker and result backend the same), so docker-compose.yml never holds a password: it holds the URL
with a named hole, and the password stays in its own file (a Docker secret), the one file the database
service reads too:

    python -m pophealth.operate.secret_url 'postgresql+psycopg2://airflow:{airflow_db_password}@airflow-metadata-db:5432/airflow'

prints the URL with `{airflow_db_password}` replaced by the contents of /run/secrets/airflow_db_password
(`POPHEALTH_SECRETS_DIR` names another folder), percent-encoded, so a password may hold any character.
An error names the file, never a value, and exits 2.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import quote

ENV_SECRETS_DIR = "POPHEALTH_SECRETS_DIR"
DEFAULT_SECRETS_DIR = "/run/secrets"
_HOLE = re.compile(r"\{([^{}]*)\}")
_SECRET_NAME = re.compile(r"^[a-z0-9_]+$")


class SecretMissing(RuntimeError):
    """A secret file named by a template cannot be used; the message names the file, never its contents."""


def secrets_dir() -> Path:
    return Path(os.environ.get(ENV_SECRETS_DIR) or DEFAULT_SECRETS_DIR)


def read_secret(name: str, folder: Path | None = None) -> str:
    """One secret file's contents without the line end; refused when missing, unreadable or empty."""
    if not _SECRET_NAME.match(name):
        raise SecretMissing(f"{{{name}}} is not a secret's name (lower-case letters, digits and _ only)")
    path = (folder or secrets_dir()) / name
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise SecretMissing(f"the secret file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SecretMissing(f"the secret file {path} cannot be read ({why})") from None
    if not value:
        raise SecretMissing(f"the secret file {path} is empty")
    return value


def fill(template: str, folder: Path | None = None) -> str:
    """The template with every `{name}` replaced by the percent-encoded contents of the secret file `name`."""
    return _HOLE.sub(lambda m: quote(read_secret(m.group(1), folder), safe=""), template)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m pophealth.operate.secret_url 'scheme://user:{secret_name}@host:port/database'",
            file=sys.stderr,
        )
        return 2
    try:
        # No line end: Airflow uses a `_CMD` setting's output as it is, and a URL ending in a newline names a
        # database "airflow\n" that does not exist.
        sys.stdout.write(fill(args[0]))
    except SecretMissing as exc:
        print(f"pophealth.operate.secret_url: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
