"""One source of truth for the deployment: infra/deployment.yml, which docker-compose.yml (containers) and
pophealth/cluster.py (`./dev.sh cluster`, the same topology on this machine's servers) both follow.

These read both files and the environments the cluster gives its processes; nothing is started.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pophealth import cluster
from pophealth.keys import ALL_KEYS

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DEPLOYMENT = cluster.deployment()
AIRFLOW_SERVICES = list(DEPLOYMENT["services"])


def compose_environment(service: str) -> dict[str, str]:
    """A compose service's environment, its anchors merged (yaml does), as name -> value."""
    env = COMPOSE["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_every_airflow_service_of_compose_has_the_shared_settings(service):
    env = compose_environment(service)
    for setting, value in DEPLOYMENT["airflow"]["settings"].items():
        assert env.get(setting) == str(value), f"{service}: {setting} is {env.get(setting)!r}, not {value!r}"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_every_secret_setting_of_compose_comes_from_outside_the_file(service):
    # A secret is never a value written in the file: `<setting>_CMD` or `_SECRET` (a file, a secrets backend),
    # or the setting filled in from .env (${VAR}) until the file moves to Docker secrets.
    env = compose_environment(service)
    for setting in DEPLOYMENT["airflow"]["secrets"]:
        forms = {f: env[f] for f in (setting, f"{setting}_CMD", f"{setting}_SECRET") if f in env}
        assert forms, f"{service} does not set {setting} in any form"
        if setting in forms:
            value = forms[setting]
            assert "${" in value or not re.search(r"://[^@/]*:[^@/]+@", value), \
                f"{service}: {setting} holds a password written in the file"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_compose_runs_the_same_airflow_command_for_each_service(service):
    assert COMPOSE["services"][service]["command"] == ["airflow", *DEPLOYMENT["services"][service]]


def test_the_workers_of_compose_are_given_every_key_the_deployment_gives_them():
    env = compose_environment("airflow-worker")
    for name in DEPLOYMENT["keys"]["airflow-worker"]:
        assert name in env, f"airflow-worker has no {name}"


def test_the_deployment_names_only_key_settings_the_platform_reads():
    known = {source.env_file for source, _ in ALL_KEYS}
    assert set(DEPLOYMENT["keys"]["airflow-worker"]) <= known


# -------------------------------------------------------------------- the cluster's own processes, as configured

@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path))
    for source, _ in ALL_KEYS:
        monkeypatch.delenv(source.env, raising=False)
        monkeypatch.delenv(source.env_file, raising=False)
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", "5a" * 32)  # a key in the caller's environment: written to a file
    lay = cluster.layout()
    cluster.ensure_secrets(lay)
    return lay


def secret_values(lay) -> dict[str, str]:
    return {p.name: p.read_text().strip() for p in lay.secrets.iterdir()
            if p.suffix in ("", ".password", ".key") and p.name != "pgpass"}


def test_every_secret_is_a_file_only_its_owner_can_read(layout):
    files = list(layout.secrets.iterdir())
    assert {"metadata_db_url", "broker_url", "fernet_key", "jwt_secret", "pgpass",
            "linkage.key"} <= {p.name for p in files}
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    assert layout.secrets.stat().st_mode & 0o077 == 0
    assert (layout.secrets / "linkage.key").read_text().strip() == "5a" * 32


@pytest.mark.parametrize("role", ["api-server", "scheduler", "dag-processor", "triggerer", "worker1", "worker2"])
def test_no_process_has_a_password_or_a_key_in_its_environment(layout, role):
    env = cluster.airflow_env(layout, role)
    joined = "\n".join(f"{k}={v}" for k, v in env.items())
    for name, value in secret_values(layout).items():
        assert value not in joined, f"{role}'s environment holds {name}"
    assert not [k for k in env if k.endswith("_KEY") and k.startswith("POPHEALTH_")]
    # Airflow's secrets are read from their files through the _CMD form of their settings.
    for setting, secret in DEPLOYMENT["airflow"]["secrets"].items():
        assert setting not in env and env[f"{setting}_CMD"] == f"cat {layout.secret(secret)}"


@pytest.mark.parametrize("role", ["api-server", "scheduler", "dag-processor", "triggerer"])
def test_only_the_workers_are_told_where_the_keys_and_the_warehouse_are(layout, role):
    env = cluster.airflow_env(layout, role)
    assert not [k for k in env if k.endswith("_KEY_FILE")]
    assert "POPHEALTH_DATABASE_URL" not in env and "PGPASSFILE" not in env
    worker = cluster.airflow_env(layout, "worker1")
    assert {k for k in worker if k.endswith("_KEY_FILE")} == set(DEPLOYMENT["keys"]["airflow-worker"])
    assert worker["POPHEALTH_DATABASE_URL"] == f"postgresql://pophealth@127.0.0.1:{layout.port('postgres')}/pophealth"


def test_the_cluster_runs_the_shared_settings_and_two_workers_under_their_own_names(layout):
    env = cluster.airflow_env(layout, "scheduler")
    for setting, value in DEPLOYMENT["airflow"]["settings"].items():
        assert env[setting] == str(value)
    commands = cluster.processes(layout)
    workers = [c for n, c in commands.items() if n.startswith("worker")]
    assert len(workers) == 2 and {"worker1@%h", "worker2@%h"} <= {part for c in workers for part in c}
    # Every server of the cluster listens on a port of its own (two workers' log servers on one machine).
    ports = [cluster.airflow_env(layout, n)["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for n in ("worker1", "worker2")]
    ports += [layout.port(name) for name in DEPLOYMENT["cluster"]["ports"] if name != "worker_logs"]
    assert len(set(map(int, ports))) == len(ports), ports
