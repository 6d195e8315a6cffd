"""`pophealth ui`: the Airflow web UI on this machine, on the project's metadata database, ready to use.

It starts Airflow's api-server (the UI), scheduler and dag-processor with the environment every DAG run of the
project gets (airflow_runner.airflow_env: AIRFLOW_HOME, the DAG folder, the metadata database in the embedded
server), bound to 127.0.0.1 only, with Airflow's simple auth manager and one local `admin` login whose password
is in a file under POPHEALTH_HOME (mode 600; never printed). Before it starts, the Airflow variable
`pophealth_landing_dir` and the connection `pophealth_warehouse` are written, so what the pipeline reads is on
the UI's Admin pages; the keys stay where pophealth.identity.keys reads them and are never copied into Airflow.
Tasks the scheduler runs (a Trigger in the UI, a schedule once a DAG is unpaused) use the LocalExecutor and
keep their logs under AIRFLOW_HOME/logs, where the UI shows them. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pophealth import config

DEFAULT_PORT = 8080
USER = "admin"
START_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 20
COMPONENTS = ("api-server", "scheduler", "dag-processor")
LANDING_VARIABLE = "pophealth_landing_dir"
WAREHOUSE_CONNECTION = "pophealth_warehouse"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def password_file() -> Path:
    return config.paths().airflow_home / "ui_passwords.json"


def ensure_password() -> Path:
    """The local admin's password, created once (random), in a file only its owner can read."""
    path = password_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({USER: secrets.token_urlsafe(12)}, handle)
    os.chmod(path, 0o600)
    return path


def ui_env(port: int, landing: Path | None) -> dict[str, str]:
    from pophealth.operate.airflow_runner import airflow_env

    base = f"http://127.0.0.1:{port}"
    extra = {
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",  # this is a laptop, not a cluster
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_HOST": "127.0.0.1",
    }
    if landing is not None:
        extra[config.ENV_LANDING_DIR] = str(landing)
    return airflow_env(extra)


def _demo_keys_into_environment() -> None:
    """The local demo's keys, if that is what this machine uses (the files stay where keys.py reads them)."""
    from pophealth.identity.keys import ALL_KEYS

    keys_dir = config.paths().demo_keys_dir
    for source, file_name in ALL_KEYS:
        key_file = keys_dir / file_name
        if not os.environ.get(source.env) and not os.environ.get(source.env_file) and key_file.exists():
            os.environ[source.env_file] = str(key_file)


def _configure(landing: str) -> None:
    """In a child with Airflow's environment: the variable and connection the pipeline's users look for."""
    from airflow.models import Connection, Variable
    from airflow.utils.session import create_session
    from psycopg.conninfo import conninfo_to_dict

    from pophealth.warehouse import db

    if landing:
        Variable.set(
            LANDING_VARIABLE,
            landing,
            description="the landing folder the ingest DAGs read (POPHEALTH_LANDING_DIR of this UI)",
        )
    parts: dict[str, Any] = conninfo_to_dict(db.warehouse_url())  # libpq's keywords: text values here
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == WAREHOUSE_CONNECTION).delete()
        session.add(
            Connection(
                conn_id=WAREHOUSE_CONNECTION,
                conn_type="postgres",
                host=parts.get("host"),
                port=int(parts["port"]) if parts.get("port") else None,
                schema=parts.get("dbname"),
                login=parts.get("user"),
                password=parts.get("password"),
                description="the pophealth warehouse (as POPHEALTH_DATABASE_URL or the embedded server)",
            )
        )


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    log_file: Path


def _start(name: str, env: dict[str, str], log_dir: Path) -> Running:
    from pophealth.operate.airflow_runner import _airflow_bin, dies_with_parent

    log_file = log_dir / f"{name}.log"
    handle = log_file.open("w")
    # Its own session: Ctrl-C reaches this command only, which then stops each component in order.
    proc = subprocess.Popen(
        [_airflow_bin(), name],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_parent,
    )
    return Running(name, proc, log_file)


def _ready(port: int) -> bool:
    """The UI answers and the scheduler and DAG processor report healthy."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return all(
        health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor")
    )


def stop(running: list[Running]) -> None:
    for r in running:
        if r.proc.poll() is None:
            os.killpg(r.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for r in running:
        try:
            r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def serve(
    port: int = DEFAULT_PORT, landing: Path | None = None, say=print, start_timeout: float = START_TIMEOUT_SECONDS
) -> int:
    from pophealth.operate.airflow_runner import prepare_airflow
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    if db.airflow_metadata_url().startswith("sqlite"):
        say(
            f"pophealth ui needs Airflow's metadata in PostgreSQL (its scheduler runs tasks in parallel) when the "
            f"warehouse is a real server: set {config.ENV_AIRFLOW_DATABASE_URL} (for example a database `airflow` "
            "on the same server, owned by the same login)"
        )
        return 2
    started = time.monotonic()
    _demo_keys_into_environment()
    prepare_warehouse()
    prepare_airflow()
    passwords = ensure_password()
    env = ui_env(port, landing)
    proc = subprocess.run(
        [sys.executable, "-m", "pophealth.operate.webui", "configure", str(landing or "")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        say("could not write the Airflow variable and connection:\n" + "\n".join(proc.stderr.splitlines()[-5:]))
        return 1
    log_dir = config.paths().airflow_home / "ui-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    # SIGTERM (a service manager) stops everything as Ctrl-C does; SIGINT even when started in the background.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name in COMPONENTS:
            running.append(_start(name, env, log_dir))
        say(
            f"Starting Airflow ({', '.join(COMPONENTS)}) on the metadata database "
            f"{config.paths().airflow_home.name}/ of {config.paths().home} ..."
        )
        deadline = time.monotonic() + start_timeout
        while not _ready(port):
            dead = [r for r in running if r.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0].name} exited" if dead else f"not ready after {start_timeout:.0f} s"
                say(f"Airflow did not start: {why}; its logs are in {log_dir}")
                return 1
            time.sleep(1)
        say(f"Airflow UI ready in {time.monotonic() - started:.0f} s: http://127.0.0.1:{port}/")
        say(f"  log in as {USER}; the password is in {passwords} (readable by you only)")
        say(f"  landing folder: {landing if landing else f'none (give --landing or set {config.ENV_LANDING_DIR})'}")
        say("  DAGs start paused: unpause one to let its schedule run it, or Trigger it. Ctrl-C stops Airflow.")
        while True:
            for r in running:
                if r.proc.poll() is not None:
                    say(f"Airflow's {r.name} stopped (exit {r.proc.returncode}); see {r.log_file}")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        say("Stopping Airflow ...")
        return 0
    finally:
        stop(running)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__" and sys.argv[1:2] == ["configure"]:
    _configure(sys.argv[2] if len(sys.argv) > 2 else "")
