"""Passwords as files (Docker secrets): a URL is put together from its password file, the warehouse's and the
roles' passwords are read from `..._FILE` settings, and a named file that cannot be used stops everything
with a message that names the file and never a value."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import unquote, urlparse

import pytest

from pophealth import config
from pophealth.operate.secret_url import SecretMissing, fill
from pophealth.warehouse import db

PASSWORD = "p@ss:w/rd #1%"  # every character that would break a URL written by hand


@pytest.fixture
def secrets(tmp_path):
    (tmp_path / "airflow_db_password").write_text(PASSWORD + "\n")
    (tmp_path / "empty").write_text("\n")
    return tmp_path


def test_a_url_is_filled_from_its_password_file_and_parses_back_to_the_same_password(secrets):
    url = fill("postgresql+psycopg2://airflow:{airflow_db_password}@airflow-metadata-db:5432/airflow", secrets)
    parsed = urlparse(url)
    assert (parsed.username, unquote(parsed.password), parsed.hostname, parsed.port, parsed.path) == (
        "airflow",
        PASSWORD,
        "airflow-metadata-db",
        5432,
        "/airflow",
    )


@pytest.mark.parametrize(
    "template, message",
    [
        ("redis://:{redis_password}@redis:6379/0", "redis_password does not exist"),
        ("redis://:{empty}@redis:6379/0", "empty is empty"),
        ("redis://:{../airflow_db_password}@redis:6379/0", "is not a secret's name"),
    ],
)
def test_a_missing_empty_or_outside_secret_is_refused_naming_the_file_only(secrets, template, message):
    with pytest.raises(SecretMissing, match=message) as refused:
        fill(template, secrets)
    assert PASSWORD not in str(refused.value)


def test_the_command_airflow_runs_prints_the_url_or_fails_with_one_line(secrets):
    env = {"POPHEALTH_SECRETS_DIR": str(secrets), "PATH": "/usr/bin:/bin"}
    template = "db+postgresql://airflow:{airflow_db_password}@h/airflow"
    good = subprocess.run(
        [sys.executable, "-m", "pophealth.operate.secret_url", template],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0 and unquote(urlparse(good.stdout).password) == PASSWORD
    # Airflow takes the output as it is (it does not strip it): the URL must not end in a line end.
    assert good.stdout.endswith("@h/airflow")
    bad = subprocess.run(
        [sys.executable, "-m", "pophealth.operate.secret_url", "redis://:{redis_password}@redis:6379/0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "redis_password does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_warehouse_password_comes_from_its_file_when_the_url_has_none(secrets):
    with config.environment(
        POPHEALTH_DATABASE_URL="postgresql://pophealth@warehouse:5432/pophealth",
        POPHEALTH_DATABASE_PASSWORD_FILE=str(secrets / "airflow_db_password"),
    ):
        parts = db.warehouse()
        assert (parts.user, parts.password, parts.host) == ("pophealth", PASSWORD, "warehouse")
        assert db.dbt_env()["POPHEALTH_DB_PASSWORD"] == PASSWORD  # dbt's profile gets it too
        assert PASSWORD not in db.warehouse_shown()


def test_a_role_s_password_comes_from_its_file(secrets):
    with config.environment(
        POPHEALTH_REIDENTIFIER_PASSWORD=None, POPHEALTH_REIDENTIFIER_PASSWORD_FILE=str(secrets / "airflow_db_password")
    ):
        assert db.role_password("reidentifier") == PASSWORD


@pytest.mark.parametrize("name, message", [("nowhere", "which cannot be read"), ("empty", "which is empty")])
def test_a_password_file_that_cannot_be_used_is_an_error_not_an_empty_password(secrets, name, message):
    with config.environment(
        POPHEALTH_DATABASE_URL="postgresql://pophealth@warehouse:5432/pophealth",
        POPHEALTH_DATABASE_PASSWORD_FILE=str(secrets / name),
    ):
        with pytest.raises(db.DatabaseError, match=f"POPHEALTH_DATABASE_PASSWORD_FILE names .*{name}, {message}"):
            db.warehouse()


def test_setup_gives_airflow_s_metadata_database_to_a_command_when_the_deployment_does(monkeypatch):
    from pophealth.operate.airflow_runner import airflow_env

    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "python -m pophealth.operate.secret_url x")
    monkeypatch.setenv("POPHEALTH_DATABASE_URL", "postgresql://pophealth:x@warehouse:5432/pophealth")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in airflow_env()
