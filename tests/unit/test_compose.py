"""The docker-compose deployment, checked statically (there is no Docker engine on the build machines).

The schema below is written from the Compose Specification for the keys this project uses: unknown keys
are refused at the top level and in services, as `docker compose config` would refuse them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
REQUIRED_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                     "airflow-triggerer", "airflow-worker", "redis", "airflow-metadata-db", "warehouse"}

_STRINGS = {"type": "array", "items": {"type": "string"}}
_LIST_OR_DICT = {"oneOf": [
    {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
    _STRINGS,
]}
_NAME = "^[a-zA-Z0-9._-]+$"
SERVICE_KEYS = {
    "build": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {
        "context": {"type": "string"}, "dockerfile": {"type": "string"}, "args": _LIST_OR_DICT},
        "additionalProperties": False}]},
    "image": {"type": "string"},
    "command": {"oneOf": [{"type": "string"}, _STRINGS]},
    "entrypoint": {"oneOf": [{"type": "string"}, _STRINGS]},
    "environment": _LIST_OR_DICT,
    "env_file": {"oneOf": [{"type": "string"}, _STRINGS]},
    "volumes": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": {"type": ["string", "integer"]}},
    "secrets": _STRINGS,
    "restart": {"type": "string", "enum": ["no", "always", "on-failure", "unless-stopped"]},
    "user": {"type": "string"},
    "expose": {"type": "array", "items": {"type": ["string", "integer"]}},
    "working_dir": {"type": "string"},
    "stop_grace_period": {"type": "string"},
    "init": {"type": "boolean"},
    "depends_on": {"oneOf": [_STRINGS, {"type": "object", "patternProperties": {_NAME: {
        "type": "object", "required": ["condition"], "additionalProperties": False, "properties": {
            "condition": {"enum": ["service_started", "service_healthy", "service_completed_successfully"]},
            "restart": {"type": "boolean"}, "required": {"type": "boolean"}}}}, "additionalProperties": False}]},
    "healthcheck": {"type": "object", "additionalProperties": False, "properties": {
        "test": {"oneOf": [{"type": "string"}, _STRINGS]}, "interval": {"type": "string"},
        "timeout": {"type": "string"}, "retries": {"type": "integer"}, "start_period": {"type": "string"},
        "disable": {"type": "boolean"}}},
}
COMPOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "patternProperties": {_NAME: {
            "type": "object", "properties": SERVICE_KEYS, "patternProperties": {"^x-": {}},
            "additionalProperties": False}}, "additionalProperties": False},
        "volumes": {"type": "object", "patternProperties": {_NAME: {"type": ["object", "null"]}},
                    "additionalProperties": False},
        "secrets": {"type": "object", "patternProperties": {_NAME: {
            "type": "object", "properties": {"file": {"type": "string"}, "environment": {"type": "string"}},
            "additionalProperties": False}}, "additionalProperties": False},
    },
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
}


def test_the_compose_file_follows_the_compose_specification():
    jsonschema.validate(COMPOSE, COMPOSE_SCHEMA)
    assert "version" not in COMPOSE  # obsolete in the Compose Specification


@pytest.mark.parametrize("break_it", [
    lambda c: c["services"]["warehouse"].__setitem__("restarts", "always"),      # misspelt key
    lambda c: c["services"]["redis"].__setitem__("depends_on", {"warehouse": {}}),  # no condition
    lambda c: c.__setitem__("servics", {}),                                     # misspelt top level
])
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
    assert "@airflow-metadata-db:" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


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
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert all(".env" in (s.get("env_file") or [".env"]) for s in COMPOSE["services"].values() if "build" in s)


def test_no_secret_is_written_in_the_compose_file():
    secretish = re.compile(r"PASSWORD|SECRET|_KEY$|JWT")
    for name, service in COMPOSE["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key) and not key.endswith("_FILE") and key != "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} is not from .env"
        for key, value in (service.get("environment") or {}).items():
            if "://" in str(value) and "@" in str(value):
                assert "${" in str(value).split("@")[0], f"{name}: {key} has a literal password"


def _commands():
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if not command:
            continue
        text = command[-1] if command[:2] == ["bash", "-c"] else " ".join(command)
        for part in text.split("&&"):
            yield name, part.split()


def test_every_airflow_and_pophealth_subcommand_exists():
    env = {**os.environ, "AIRFLOW_HOME": str(REPO / ".pophealth" / "compose-check"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    checked = 0
    for name, words in _commands():
        if words[0] == "airflow":
            if words[1] == "celery":
                # The Celery provider is installed in the image (infra/Dockerfile), not in the embedded default.
                assert "apache-airflow-providers-celery" in (REPO / "infra" / "Dockerfile").read_text()
                continue
            proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), *words[1:], "--help"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{name}: airflow {' '.join(words[1:])}: {proc.stderr[-500:]}"
            checked += 1
        elif words[0] == "pophealth":
            proc = subprocess.run([sys.executable, "-m", "pophealth.cli", *words[1:], "--help"],
                                  capture_output=True, text=True, timeout=60)
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
    assert "MARQUEZ_DB_PASSWORD=" in (REPO / "infra" / "env.example").read_text()
