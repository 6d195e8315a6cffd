"""The docker-compose deployment, checked statically (there is no Docker engine on the build machines).

The schema below is written from the Compose Specification for the keys this project uses: unknown keys
are refused at the top level and in services, as `docker compose config` would refuse them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
#: COMPOSE_FILE_UNDER_TEST: another compose file to hold to the same rules (to see a rule fail on an old file).
COMPOSE = yaml.safe_load(Path(os.environ.get("COMPOSE_FILE_UNDER_TEST") or REPO / "docker-compose.yml").read_text())
REQUIRED_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "redis",
    "airflow-metadata-db",
    "warehouse",
}

_STRINGS = {"type": "array", "items": {"type": "string"}}
_LIST_OR_DICT = {
    "oneOf": [
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
        _STRINGS,
    ]
}
_NAME = "^[a-zA-Z0-9._-]+$"
SERVICE_KEYS = {
    "build": {
        "oneOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}, "args": _LIST_OR_DICT},
                "additionalProperties": False,
            },
        ]
    },
    "image": {"type": "string"},
    "command": {"oneOf": [{"type": "string"}, _STRINGS]},
    "entrypoint": {"oneOf": [{"type": "string"}, _STRINGS]},
    "environment": _LIST_OR_DICT,
    "env_file": {"oneOf": [{"type": "string"}, _STRINGS]},
    "volumes": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": {"type": ["string", "integer"]}},
    "secrets": _STRINGS,
    "profiles": _STRINGS,
    "restart": {"type": "string", "enum": ["no", "always", "on-failure", "unless-stopped"]},
    "user": {"type": "string"},
    "expose": {"type": "array", "items": {"type": ["string", "integer"]}},
    "working_dir": {"type": "string"},
    "stop_grace_period": {"type": "string"},
    "init": {"type": "boolean"},
    "depends_on": {
        "oneOf": [
            _STRINGS,
            {
                "type": "object",
                "patternProperties": {
                    _NAME: {
                        "type": "object",
                        "required": ["condition"],
                        "additionalProperties": False,
                        "properties": {
                            "condition": {
                                "enum": ["service_started", "service_healthy", "service_completed_successfully"]
                            },
                            "restart": {"type": "boolean"},
                            "required": {"type": "boolean"},
                        },
                    }
                },
                "additionalProperties": False,
            },
        ]
    },
    "healthcheck": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "test": {"oneOf": [{"type": "string"}, _STRINGS]},
            "interval": {"type": "string"},
            "timeout": {"type": "string"},
            "retries": {"type": "integer"},
            "start_period": {"type": "string"},
            "disable": {"type": "boolean"},
        },
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {
            "type": "object",
            "patternProperties": {
                _NAME: {
                    "type": "object",
                    "properties": SERVICE_KEYS,
                    "patternProperties": {"^x-": {}},
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
        "volumes": {
            "type": "object",
            "patternProperties": {_NAME: {"type": ["object", "null"]}},
            "additionalProperties": False,
        },
        "secrets": {
            "type": "object",
            "patternProperties": {
                _NAME: {
                    "type": "object",
                    "properties": {"file": {"type": "string"}, "environment": {"type": "string"}},
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        },
    },
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
}


def test_the_compose_file_follows_the_compose_specification():
    jsonschema.validate(COMPOSE, COMPOSE_SCHEMA)
    assert "version" not in COMPOSE  # obsolete in the Compose Specification


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["warehouse"].__setitem__("restarts", "always"),  # misspelt key
        lambda c: c["services"]["redis"].__setitem__("depends_on", {"warehouse": {}}),  # no condition
        lambda c: c.__setitem__("servics", {}),  # misspelt top level
    ],
)
def test_the_schema_refuses_a_broken_file(break_it):
    broken = copy.deepcopy(COMPOSE)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, COMPOSE_SCHEMA)


def test_the_deployment_has_every_airflow_3_component_and_a_separate_warehouse():
    assert REQUIRED_SERVICES <= set(COMPOSE["services"])
    environment = COMPOSE["services"]["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "@warehouse:" in environment["POPHEALTH_DATABASE_URL"]
    assert "@airflow-metadata-db:" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"]


def test_every_build_refers_to_a_dockerfile_whose_copy_sources_exist():
    for name, service in COMPOSE["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = REPO / build["context"]
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), name
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_every_mounted_path_exists_and_secrets_are_not_committed():
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "secrets/" in ignored
    for name, secret in COMPOSE["secrets"].items():
        # the vault's private key may be named from outside (kept off the host), with a default under secrets/
        assert re.fullmatch(r"\./secrets/[a-z_.]+|\$\{[A-Z_]+:-\./secrets/[a-z_.]+\}", secret["file"]), name


def _commands():
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if service.get("entrypoint", [""])[0] == "pophealth":  # a one-off run with its arguments given by the user
            command = service["entrypoint"]
        if not command:
            continue
        text = command[-1] if command[:2] == ["bash", "-c"] else " ".join(command)
        for part in text.split("&&"):
            yield name, part.split()


def test_every_airflow_and_pophealth_subcommand_exists(tmp_path):
    # Airflow writes its config into its home: the test's own folder, not the repository's .pophealth/, which the
    # demo uses and another run on the same checkout might be writing at the same moment.
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "compose-check"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    checked = 0
    for name, words in _commands():
        if words[0] == "airflow":
            if words[1] == "celery":
                # The Celery provider is installed in the image (infra/Dockerfile), not in the embedded default.
                assert "apache-airflow-providers-celery" in (REPO / "infra" / "Dockerfile").read_text()
                continue
            proc = subprocess.run(
                [str(Path(sys.executable).parent / "airflow"), *words[1:], "--help"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, f"{name}: airflow {' '.join(words[1:])}: {proc.stderr[-500:]}"
            checked += 1
        elif words[0] == "pophealth":
            proc = subprocess.run(
                [sys.executable, "-m", "pophealth.cli", *words[1:], "--help"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, f"{name}: pophealth {' '.join(words[1:])}"
            checked += 1
    assert checked >= 6


def test_marquez_receives_every_airflow_task_s_openlineage_events_and_is_reachable_on_loopback_only():
    services = COMPOSE["services"]
    assert {"marquez", "marquez-db", "marquez-web"} <= set(services)
    assert services["marquez"]["depends_on"]["marquez-db"]["condition"] == "service_healthy"
    assert services["marquez"]["environment"]["POSTGRES_HOST"] == "marquez-db"
    for name in ("marquez", "marquez-web"):
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"]), name
    environment = services["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__OPENLINEAGE__DISABLED"] == "False"
    transport = json.loads(environment["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    assert transport["type"] == "composite"
    marquez = transport["transports"]["marquez"]
    assert (marquez["type"], marquez["url"], marquez["endpoint"]) == ("http", "http://marquez:5000", "api/v1/lineage")
    assert transport["transports"]["file"]["log_file_path"].startswith("/opt/pophealth/state/")
    assert environment["POPHEALTH_MARQUEZ_URL"] == "http://marquez:5000"
    assert "marquez_db_password" in services["marquez"]["secrets"] and "/run/secrets/marquez_db_password" in " ".join(
        services["marquez"]["entrypoint"]
    )


# -- a deployment that exposes nothing (issue 17) ----------------------------------------------------------------
# Each rule below failed on the compose file before it (run with COMPOSE_FILE_UNDER_TEST=<the old file>).

SERVICES = COMPOSE["services"]
#: The services that run Airflow (each is an Airflow component, or migrates Airflow's database).
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
#: Airflow's own secrets, which every Airflow component reads: setting -> the secret file its command reads.
AIRFLOW_SECRET_SETTINGS = {
    "AIRFLOW__CORE__FERNET_KEY": "airflow_fernet_key",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow_db_password",
    "AIRFLOW__API__SECRET_KEY": "airflow_api_secret_key",
    "AIRFLOW__API_AUTH__JWT_SECRET": "airflow_jwt_secret",
}
#: The Celery executor's, read by the two services that use Celery.
CELERY_SECRET_SETTINGS = {
    "AIRFLOW__CELERY__BROKER_URL": "redis_password",
    "AIRFLOW__CELERY__RESULT_BACKEND": "airflow_db_password",
}
CELERY_SERVICES = ("airflow-scheduler", "airflow-worker")
#: pophealth's keys (identity/keys.py): what the loading tasks hold; the vault's private key is not one of them.
WORKER_KEYS = {
    "POPHEALTH_LINKAGE_KEY_FILE": "linkage_key",
    "POPHEALTH_VAULT_PUBLIC_KEY_FILE": "vault_public_key",
    "POPHEALTH_SECONDARY_USE_KEY_FILE": "secondary_use_key",
    "POPHEALTH_DIRECT_CARE_KEY_FILE": "direct_care_key",
}
SECRET_NAME = re.compile(r"PASSW|SECRET|KEY|JWT|FERNET|TOKEN|CREDENTIAL")


def _environment(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in (SERVICES[name].get("environment") or {}).items()}


def _secrets(name: str) -> set[str]:
    return set(SERVICES[name].get("secrets") or [])


def test_every_published_port_is_on_loopback_the_airflow_ui_included():
    published = {name: s["ports"] for name, s in SERVICES.items() if s.get("ports")}
    assert "airflow-apiserver" in published
    for name, ports in published.items():
        assert all(str(port).startswith("127.0.0.1:") for port in ports), f"{name} publishes {ports} beyond loopback"
    # ... and how other machines reach the UI: over TLS, through a proxy on this host
    readme = (REPO / "infra" / "README.md").read_text()
    assert "proxy_pass http://127.0.0.1:8080" in readme and "ssl_certificate" in readme


def test_no_service_is_given_the_whole_env_file():
    assert [name for name, s in SERVICES.items() if "env_file" in s] == []


def test_no_password_secret_or_key_is_in_any_environment():
    """`docker inspect` shows `environment:` to anyone who can use Docker: it names files and commands only."""
    for name in SERVICES:
        for key, value in _environment(name).items():
            assert not re.search(r"\$\{[A-Z_]*(PASSW|SECRET|KEY|JWT|FERNET)[A-Z_]*(:[-?][^}]*)?\}", value), (
                f"{name}: {key} takes a secret from .env"
            )
            if key.endswith("_CMD"):
                continue  # a command that reads a file: test_airflow_reads_its_own_secrets_from_files_by_commands
            if key.endswith("_FILE"):
                assert value.startswith("/"), f"{name}: {key} is not a file's path"  # a path, never the value
                if value.startswith("/run/secrets/"):  # ... and a secret its service is given
                    assert value.removeprefix("/run/secrets/") in _secrets(name), f"{name}: {key} -> {value}"
                continue
            assert not SECRET_NAME.search(key) or key == "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES", (
                f"{name}: {key} is a secret in the environment"
            )
            if "://" in value:
                assert urlparse(value).password is None, f"{name}: {key} carries a password"


def test_each_database_reads_its_password_from_its_own_secret():
    for name, secret in (
        ("airflow-metadata-db", "airflow_db_password"),
        ("warehouse", "warehouse_db_password"),
        ("marquez-db", "marquez_db_password"),
    ):
        environment = _environment(name)
        assert "POSTGRES_PASSWORD" not in environment
        assert environment["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{secret}" and _secrets(name) == {secret}


def _run_setting_command(command: str, secrets_dir: Path) -> str:
    """What Airflow gets from a `_CMD` setting, with the secrets in `secrets_dir` standing in for /run/secrets."""
    words = shlex.split(command)  # as Airflow runs it: split, no shell
    if words[:2] == ["cat", words[1]] and len(words) == 2:
        return (secrets_dir / Path(words[1]).relative_to("/run/secrets")).read_text().strip()
    assert words[:3] == ["python", "-m", "pophealth.operate.secret_url"] and len(words) == 4, command
    proc = subprocess.run(
        [sys.executable, *words[1:]],
        env={"POPHEALTH_SECRETS_DIR": str(secrets_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout  # as Airflow takes it: not stripped


def test_airflow_reads_its_own_secrets_from_files_by_commands(tmp_path):
    """Each Airflow secret is a `<setting>_CMD` that reads the file of a secret the service is given, and gives
    Airflow the value (or the URL with the password in it); the plain setting is not set."""
    from airflow.configuration import conf

    for secret in COMPOSE["secrets"]:
        (tmp_path / secret).write_text(f"value of {secret} / with: @ signs\n")
    for name in AIRFLOW_SERVICES:
        environment = _environment(name)
        wanted = {**AIRFLOW_SECRET_SETTINGS, **(CELERY_SECRET_SETTINGS if name in CELERY_SERVICES else {})}
        for setting, secret in wanted.items():
            assert setting not in environment, f"{name}: {setting} is in the environment"
            command = environment[f"{setting}_CMD"]
            assert f"/run/secrets/{secret}" in command or "{" + secret + "}" in command, (name, setting)
            assert secret in _secrets(name), f"{name} runs {setting}_CMD without the secret {secret}"
            value = _run_setting_command(command, tmp_path)
            expected = f"value of {secret} / with: @ signs"
            assert value == expected if "://" not in value else unquote(urlparse(value).password) == expected
            if not setting.startswith("AIRFLOW__CELERY__"):
                # Airflow honours `_CMD` for sensitive settings only (the Celery provider marks its two so; it is
                # installed in the image only, infra/Dockerfile)
                section, key = setting.removeprefix("AIRFLOW__").lower().split("__")
                assert (section, key) in conf.sensitive_config_values, setting
        if name not in CELERY_SERVICES:
            assert "redis_password" not in _secrets(name)


def test_each_pophealth_key_goes_to_the_worker_alone_and_the_vault_private_key_to_reidentify_alone():
    worker = _environment("airflow-worker")
    for setting, secret in WORKER_KEYS.items():
        assert worker[setting] == f"/run/secrets/{secret}" and secret in _secrets("airflow-worker")
    keys = set(WORKER_KEYS.values())
    for name in SERVICES:
        if name != "airflow-worker":
            assert not keys & _secrets(name), f"{name} is given {keys & _secrets(name)}"
            assert not [k for k in _environment(name) if re.match(r"POPHEALTH_.*KEY", k) and "PRIVATE" not in k], name
    holders = [name for name in SERVICES if "vault_private_key" in _secrets(name)]
    assert holders == ["reidentify"]
    reidentify = SERVICES["reidentify"]
    assert reidentify["profiles"] and reidentify["entrypoint"] == ["pophealth", "reidentify"]  # never started by `up`
    assert _secrets("reidentify") == {"vault_private_key", "reidentifier_password"}
    assert not [k for name in SERVICES for k in _environment(name) if k == "POPHEALTH_VAULT_KEY_FILE"]  # the old key


def test_no_airflow_service_holds_a_platform_role_s_password_or_the_vault_private_key():
    role_passwords = {"analyst_password", "ig_auditor_password", "reidentifier_password", "vault_private_key"}
    for name in AIRFLOW_SERVICES:
        assert not role_passwords & _secrets(name), name
    # the warehouse owner's password: the warehouse, the service that sets it up, and the worker that loads
    assert {n for n in SERVICES if "warehouse_db_password" in _secrets(n)} == {
        "warehouse",
        "pophealth-setup",
        "airflow-worker",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_requires_the_password_from_its_secret(tmp_path):
    """The compose command, run against a real redis-server: without the password, NOAUTH; the healthcheck's
    way in (REDISCLI_AUTH) answers PONG. The password is never on a command line."""
    redis = SERVICES["redis"]
    assert _secrets("redis") == {"redis_password"}
    command = redis["command"][-1]
    assert "requirepass" in command and "--requirepass" not in command
    assert "{redis_password}" in _environment("airflow-worker")["AIRFLOW__CELERY__BROKER_URL_CMD"]
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed here: the command's run is not checked")
    (tmp_path / "redis_password").write_text("s3cret-redis\n")
    port = _free_port()
    local = (
        command.replace("$$", "$")
        .replace("/run/secrets/", f"{tmp_path}/")
        .replace(
            "docker-entrypoint.sh redis-server -",
            f"redis-server --port {port} --bind 127.0.0.1 --save '' --dir {tmp_path} -",
        )
    )
    # Its own process group: redis-server runs in a subshell of the pipeline, and must stop with the test.
    server = subprocess.Popen(
        ["sh", "-c", local], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        health = redis["healthcheck"]["test"][1].replace("$$", "$").replace("/run/secrets/", f"{tmp_path}/")
        health = health.replace("redis-cli ping", f"redis-cli -p {port} ping")
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout:
                break
            time.sleep(0.1)
        anonymous = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr
        assert subprocess.run(["sh", "-c", health]).returncode == 0
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "info", "server"],
            capture_output=True,
            text=True,
            env={**os.environ, "REDISCLI_AUTH": "s3cret-redis"},
        ).stdout
        redis_pid = re.search(r"process_id:(\d+)", info).group(1)
        assert "s3cret-redis" not in Path(f"/proc/{redis_pid}/cmdline").read_text(errors="replace")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_every_secret_file_is_made_by_the_documented_steps_and_env_example_holds_no_secret():
    readme = (REPO / "infra" / "README.md").read_text()
    for secret in COMPOSE["secrets"].values():
        assert (
            Path(secret["file"].rstrip("}").split("-")[-1] if "${" in secret["file"] else secret["file"]).name in readme
        ), f"infra/README.md does not say how to make {secret['file']}"
    example = (REPO / "infra" / "env.example").read_text()
    assert not re.findall(r"^\s*#?\s*[A-Z_]*(PASSW|SECRET|FERNET|JWT)[A-Z_]*=", example, re.M)
