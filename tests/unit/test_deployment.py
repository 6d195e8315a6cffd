"""One source of truth for the deployment: infra/deployment.yml, which docker-compose.yml (containers) and
pophealth/operate/cluster.py (`./dev.sh cluster`, the same topology on this machine's servers) both follow.

These read both files and the environments the cluster gives its processes; nothing is started.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from pophealth.identity.keys import ALL_KEYS
from pophealth.operate import cluster

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


def secret_settings(service: str) -> dict[str, str]:
    """The secret settings infra/deployment.yml gives a compose service, each with the secret file it is read from."""
    airflow = DEPLOYMENT["airflow"]
    found = dict(airflow["secrets"])
    if service in airflow["celery"]["services"]:
        found.update(airflow["celery"]["secrets"])
    return found


def test_the_keys_are_masked_by_the_same_names_in_compose_the_cluster_and_the_embedded_default(tmp_path, monkeypatch):
    from pophealth.operate.airflow_runner import airflow_env

    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://nobody@localhost/none")
    names = DEPLOYMENT["airflow"]["settings"]["AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES"]
    assert names == airflow_env()["AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES"]
    # every key the workers hold is masked, by its variable and its Airflow connection's name
    for source, _ in ALL_KEYS:
        assert source.env in names.split(",") and source.airflow_conn_id.removeprefix("pophealth_") in names.split(",")


def test_the_dbt_build_copies_its_results_for_a_retry_only_when_it_fails_in_every_deployment(tmp_path, monkeypatch):
    """Cosmos's watcher rewrote an Airflow Variable with all its results at each of the build's ~170 pushes (a copy
    for a retry of the build); off, it writes the copy once, when the build fails (issue 19)."""
    import sys

    from pophealth.operate.airflow_runner import airflow_env

    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://nobody@localhost/none")
    setting = "AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY"
    assert DEPLOYMENT["airflow"]["settings"][setting] == airflow_env()[setting] == "False"
    read = "from cosmos import settings; print(settings.enable_watcher_reliable_retry)"
    proc = subprocess.run([sys.executable, "-c", read], env=airflow_env(), capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1:] == ["False"], proc.stderr[-2000:]


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_every_secret_setting_of_compose_is_read_from_its_secret_file_by_a_command(service):
    # Never a value in the environment (which `docker inspect` shows): `<setting>_CMD` reading the Docker secret
    # infra/deployment.yml names, which the service is given.
    env = compose_environment(service)
    given = set(COMPOSE["services"][service].get("secrets", []))
    for setting, secret in secret_settings(service).items():
        assert setting not in env, f"{service}: {setting} is in its environment"
        command = env.get(f"{setting}_CMD", "")
        assert f"/run/secrets/{secret}" in command or "{" + secret + "}" in command, (
            f"{service}: {setting}_CMD does not read the secret {secret}: {command!r}"
        )
        assert secret in given, f"{service} reads {secret} but is not given it"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_only_the_scheduler_and_the_workers_of_compose_reach_the_celery_broker(service):
    env = compose_environment(service)
    celery = DEPLOYMENT["airflow"]["celery"]
    for setting in celery["secrets"]:
        has = any(form in env for form in (setting, f"{setting}_CMD", f"{setting}_SECRET"))
        assert has == (service in celery["services"]), f"{service}: {setting}"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_compose_runs_the_same_airflow_command_for_each_service(service):
    assert COMPOSE["services"][service]["command"] == ["airflow", *DEPLOYMENT["services"][service]]


@pytest.mark.parametrize("service", [*AIRFLOW_SERVICES, "pophealth-setup", "reidentify"])
def test_compose_gives_the_keys_to_the_workers_alone_and_the_vaults_public_key_only(service):
    env = compose_environment(service)
    keys = {k for k in env if k.startswith("POPHEALTH_") and "KEY" in k}
    wanted = set(DEPLOYMENT["keys"].get(service, []))
    if service == "reidentify":
        wanted = {"POPHEALTH_VAULT_PRIVATE_KEY_FILE"}  # the one place the private key goes
    assert keys == wanted, f"{service}: {sorted(keys)}"


def test_the_deployment_names_only_key_settings_the_platform_reads_and_never_the_vaults_private_key():
    from pophealth.identity.keys import VAULT_PRIVATE, VAULT_PUBLIC

    known = {source.env_file for source, _ in ALL_KEYS}
    assert set(DEPLOYMENT["keys"]["airflow-worker"]) == known
    assert VAULT_PUBLIC.env_file in known and VAULT_PRIVATE.env_file not in known
    assert "VAULT_KEY" not in (REPO / "infra" / "deployment.yml").read_text().replace("VAULT_PUBLIC_KEY", "")


# -------------------------------------------------------------------- the cluster's own processes, as configured


@pytest.fixture
def layout(tmp_path, monkeypatch):
    from pophealth.identity.keys import VAULT_PRIVATE

    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path))
    for source, _ in [*ALL_KEYS, (VAULT_PRIVATE, None)]:
        monkeypatch.delenv(source.env, raising=False)
        monkeypatch.delenv(source.env_file, raising=False)
    monkeypatch.delenv("POPHEALTH_VAULT_KEY", raising=False)
    monkeypatch.delenv("POPHEALTH_VAULT_KEY_FILE", raising=False)
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", "5a" * 32)  # a key in the caller's environment: written to a file
    lay = cluster.layout()
    cluster.ensure_secrets(lay)
    return lay


def secret_values(lay) -> dict[str, str]:
    found = {
        p.name: p.read_text().strip() for p in lay.secrets.iterdir() if p.suffix in ("", ".key") and p.name != "pgpass"
    }
    private = cluster.vault_private_key_file(lay)
    return {**found, private.name: private.read_text().strip()}


ROLES = ["api-server", "scheduler", "dag-processor", "triggerer", "worker1", "worker2"]


def test_every_secret_is_a_file_only_its_owner_can_read_named_as_composes(layout):
    files = list(layout.secrets.iterdir())
    # every Docker secret an Airflow service of compose reads, and the workers' keys
    wanted = {s for service in AIRFLOW_SERVICES for s in secret_settings(service).values()}
    wanted |= {"warehouse_db_password", "pgpass", "linkage.key", "vault_public.key"}
    assert wanted <= {p.name for p in files}
    for path in [*files, cluster.vault_private_key_file(layout)]:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    assert layout.secrets.stat().st_mode & 0o077 == 0
    assert (layout.secrets / "linkage.key").read_text().strip() == "5a" * 32


def test_the_cluster_makes_a_vault_key_pair_and_gives_the_workers_its_public_half_only(layout):
    from pophealth.identity.keys import VaultPrivateKey

    private = cluster.vault_private_key_file(layout)
    assert private.parent != layout.secrets
    worker = cluster.airflow_env(layout, "worker1")
    public = worker["POPHEALTH_VAULT_PUBLIC_KEY_FILE"]
    assert open(public).read().strip() == VaultPrivateKey.from_hex(private.read_text(), "the test").public_hex()
    for role in [*ROLES, "setup", "cli"]:
        joined = "\n".join(f"{k}={v}" for k, v in cluster.airflow_env(layout, role).items())
        assert "VAULT_PRIVATE" not in joined and str(private) not in joined, role
    # a second `up` keeps the pair
    cluster.ensure_secrets(layout)
    assert open(public).read().strip() == VaultPrivateKey.from_hex(private.read_text(), "the test").public_hex()


def test_the_old_symmetric_vault_key_stops_the_cluster_with_what_to_do(layout, monkeypatch):
    monkeypatch.setenv("POPHEALTH_VAULT_KEY", "ab" * 32)
    with pytest.raises(
        cluster.ClusterError, match="POPHEALTH_VAULT_KEY .*vault-key-pair.*POPHEALTH_VAULT_PUBLIC_KEY_FILE"
    ):
        cluster.ensure_secrets(layout)


@pytest.mark.parametrize("role", ROLES)
def test_no_process_has_a_password_or_a_key_in_its_environment(layout, role):
    env = cluster.airflow_env(layout, role)
    joined = "\n".join(f"{k}={v}" for k, v in env.items())
    for name, value in secret_values(layout).items():
        assert value not in joined, f"{role}'s environment holds {name}"
    assert not [k for k in env if k.endswith("_KEY") and k.startswith("POPHEALTH_")]


@pytest.mark.parametrize("role", ROLES)
def test_airflow_reads_each_secret_through_its_cmd_setting_as_compose_does(layout, role):
    """The cluster's `_CMD` commands run as Airflow runs them (split, no shell), in the process's environment: each
    gives the secret of its file, or the URL with that password in it, and nothing else (no line end)."""
    env = cluster.airflow_env(layout, role)
    wanted = secret_settings(cluster.service_of(role))
    assert {k.removesuffix("_CMD") for k in env if k.endswith("_CMD")} == set(wanted)
    for setting, secret in wanted.items():
        assert setting not in env
        proc = subprocess.run(shlex.split(env[f"{setting}_CMD"]), env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        value = layout.secret(secret).read_text().strip()
        if "://" in proc.stdout:
            url = urlparse(proc.stdout)
            assert unquote(url.password) == value and url.hostname == "127.0.0.1" and not proc.stdout.endswith("\n")
        else:
            assert proc.stdout == value


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
