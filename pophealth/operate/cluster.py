"""The production topology on this machine, without containers: `./dev.sh cluster up|down|status`.

What docker-compose.yml runs in containers, run from this machine's own packages and the project's venv:
one PostgreSQL server (Debian's, initdb'd in the state folder, run as the `postgres` user because initdb
refuses root) with two databases of separate owners (Airflow's metadata and the warehouse), on 127.0.0.1
with passwords; Debian's redis-server with a password; Airflow's api-server, scheduler, dag-processor,
triggerer and two Celery workers. Settings come from infra/deployment.yml, which the compose file follows too.

Secrets are files of mode 600 under `<state>/cluster/secrets`, named as compose's Docker secrets and generated on
the first `up`: Airflow reads its own through the `_CMD` form of each setting, as compose does (a URL's password
filled in by `python -m pophealth.operate.secret_url`), the Celery broker's and result backend's only in the scheduler
and the workers; the platform reaches the warehouse through a libpq password file (PGPASSFILE), and only the
workers are told where the platform's keys are: the vault's public key, never its private key (kept apart, for
`pophealth reidentify` alone). No password or key is in any process's environment or command line.

`up` is idempotent: what already runs is left alone, what is missing (or died) is started. `down` stops all
of it; so does Ctrl-C while `up` is bringing it up, or while `up --wait` keeps it in the foreground.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from pophealth import config
from pophealth.operate.secret_url import ENV_SECRETS_DIR

DEPLOYMENT_FILE = config.REPO_ROOT / "infra" / "deployment.yml"
#: Added to every port of infra/deployment.yml (a second cluster on the same machine, e.g. the tests').
ENV_PORT_OFFSET = "POPHEALTH_CLUSTER_PORT_OFFSET"
#: The landing folder the workers read (default: `<state>/cluster/landing`, empty until files arrive).
ENV_WORKER_NAME = "POPHEALTH_WORKER_NAME"


class ClusterError(RuntimeError):
    """Something the cluster could not do, in one sentence for the user."""


def deployment() -> dict:
    return yaml.safe_load(DEPLOYMENT_FILE.read_text())


def worker_hostname() -> str:
    """Airflow's hostname_callable on the cluster: the worker's own name, so that each task instance records
    which of the two workers (on one machine, one host name) ran it."""
    return os.environ.get(ENV_WORKER_NAME) or socket.getfqdn()


@dataclass(frozen=True)
class Layout:
    """Where the cluster's state lives, and its ports."""

    root: Path
    settings: dict
    port_offset: int = 0

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def pgdata(self) -> Path:
        return self.postgres / "data"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def home(self) -> Path:
        """POPHEALTH_HOME of the cluster's processes: Airflow's home, the dbt manifest, data docs, task logs."""
        return self.root / "home"

    @property
    def landing_file(self) -> Path:
        return self.root / "landing_dir"

    def port(self, name: str) -> int:
        return int(self.settings["cluster"]["ports"][name]) + self.port_offset

    def secret(self, name: str) -> Path:
        return self.secrets / name


def layout() -> Layout:
    return Layout(config.paths().home / "cluster", deployment(), int(os.environ.get(ENV_PORT_OFFSET) or 0))


# ---------------------------------------------------------------------------------------------------- secrets


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created so (never readable for an instant). Airflow takes the output of a
    `_CMD` setting as it is, so the files it reads end without a newline."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    fd = os.open(path.with_name(path.name + ".part"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(path.with_name(path.name + ".part"), path)


def _password(lay: Layout, name: str) -> str:
    path = lay.secret(name)
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def ensure_secrets(lay: Layout) -> None:
    """Every password and Airflow secret, generated once, each a file of mode 600 named as compose's Docker secret
    (infra/deployment.yml); the libpq password file is written each time (the port may differ)."""
    from cryptography.fernet import Fernet

    _rename_secrets_of_before(lay)
    for name in ("airflow_db_password", "warehouse_db_password", "redis_password"):
        _password(lay, name)
    # Read by `cat` (Airflow takes a command's output as it is): no line end.
    if not lay.secret("airflow_fernet_key").exists():
        _write_private(lay.secret("airflow_fernet_key"), Fernet.generate_key().decode())
    for name in ("airflow_api_secret_key", "airflow_jwt_secret"):
        if not lay.secret(name).exists():
            _write_private(lay.secret(name), secrets.token_urlsafe(32))
    wh = lay.settings["cluster"]["warehouse"]
    _write_private(
        lay.secret("pgpass"),
        f"127.0.0.1:{lay.port('postgres')}:{wh['database']}:{wh['owner']}:{_password(lay, 'warehouse_db_password')}\n",
    )
    if not lay.secret("simple_auth_manager_passwords.json").exists():
        users = [
            u.split(":")[0]
            for u in lay.settings["airflow"]["settings"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
        ]
        _write_private(
            lay.secret("simple_auth_manager_passwords.json"), json.dumps({u: secrets.token_urlsafe(16) for u in users})
        )
    _ensure_keys(lay)


def _rename_secrets_of_before(lay: Layout) -> None:
    """A cluster made before its secrets took compose's names keeps its passwords and Fernet key (the databases and
    the metadata's encrypted values have them); the whole URLs it kept are written no more."""
    renamed = {
        "metadata_db.password": "airflow_db_password",
        "warehouse_db.password": "warehouse_db_password",
        "redis.password": "redis_password",
        "fernet_key": "airflow_fernet_key",
        "api_secret_key": "airflow_api_secret_key",
        "jwt_secret": "airflow_jwt_secret",
    }
    for old, new in renamed.items():
        if lay.secret(old).exists() and not lay.secret(new).exists():
            os.replace(lay.secret(old), lay.secret(new))
    for old in ("metadata_db_url", "result_backend_url", "broker_url"):
        lay.secret(old).unlink(missing_ok=True)


def _refuse_the_old_vault_key() -> None:
    from pophealth.identity.keys import VAULT_PRIVATE, VAULT_PUBLIC

    old = [name for name in (config.ENV_VAULT_KEY, config.ENV_VAULT_KEY_FILE) if os.environ.get(name)]
    if old:
        raise ClusterError(
            f"{old[0]} (one symmetric vault key) is no longer used: the vault has a key pair. Make one "
            f"with `pophealth vault-key-pair` and set {VAULT_PUBLIC.env_file} (the workers get it); "
            f"{VAULT_PRIVATE.env_file} is for `pophealth reidentify` alone. Nothing was started."
        )


def vault_private_key_file(lay: Layout) -> Path:
    """Where the cluster keeps the private half of the vault key pair it made: outside its secrets folder, for
    `pophealth reidentify` alone (POPHEALTH_VAULT_PRIVATE_KEY_FILE); no process of the cluster is told of it."""
    from pophealth.identity.keys import DEMO_VAULT_PRIVATE_KEY_FILE

    return lay.root / "custodian" / DEMO_VAULT_PRIVATE_KEY_FILE


def _ensure_vault_public_key(lay: Layout, target: Path) -> None:
    """The vault's public key for the workers: a new key pair, the private half kept apart (as `pophealth
    vault-key-pair` makes; docs/security.md). A private key already there (a public file lost) keeps its pair."""
    from pophealth.identity.keys import VaultPrivateKey, new_vault_key_pair

    private = vault_private_key_file(lay)
    if private.exists():
        public_hex = VaultPrivateKey.from_hex(private.read_text(), str(private)).public_hex()
    else:
        private_hex, public_hex = new_vault_key_pair()
        _write_private(private, private_hex + "\n")
    _write_private(target, public_hex + "\n")
    print(
        f"Created a vault key pair for this cluster: the workers get the public key {target}; the private key "
        f"{private} (mode 600) is given to no process: only `pophealth reidentify` reads it "
        f"(POPHEALTH_VAULT_PRIVATE_KEY_FILE). A real deployment's pair comes from the key custodian, the private "
        f"key kept off the host.",
        flush=True,
    )


def _ensure_keys(lay: Layout) -> None:
    """The platform's keys for the workers, as files: those the caller names (POPHEALTH_*_KEY_FILE), a key given
    in the caller's environment written to a file here, else a random demo key (as `pophealth run` makes; for the
    vault, a key pair whose public half alone goes to the workers)."""
    from pophealth.identity.keys import ALL_KEYS, VAULT_PUBLIC

    _refuse_the_old_vault_key()
    for source, file_name in ALL_KEYS:
        target = lay.secret(file_name)
        if os.environ.get(source.env_file):
            continue
        if os.environ.get(source.env):
            _write_private(target, os.environ[source.env].strip() + "\n")
        elif target.exists():
            continue
        elif source is VAULT_PUBLIC:
            _ensure_vault_public_key(lay, target)
        else:
            _write_private(target, secrets.token_hex(32) + "\n")
            print(
                f"Created a random {source.purpose} for this cluster in {target} (mode 600). A real deployment "
                f"gets its key from the key custodian: set {source.env_file} before `cluster up`.",
                flush=True,
            )


def key_files(lay: Layout) -> dict[str, str]:
    """Where each key the pipeline holds is (ALL_KEYS: never the vault's private key)."""
    from pophealth.identity.keys import ALL_KEYS

    return {
        source.env_file: os.environ.get(source.env_file) or str(lay.secret(file_name)) for source, file_name in ALL_KEYS
    }


# ---------------------------------------------------------------------------------------------- environments


def _base_env() -> dict[str, str]:
    """What every process gets from the caller: nothing but the basics (never a key or a password)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = str(config.REPO_ROOT)
    return env


def warehouse_url(lay: Layout) -> str:
    """The warehouse without its password (libpq finds it in PGPASSFILE)."""
    wh = lay.settings["cluster"]["warehouse"]
    return f"postgresql://{wh['owner']}@127.0.0.1:{lay.port('postgres')}/{wh['database']}"


def warehouse_env(lay: Layout) -> dict[str, str]:
    """What a process that works on the warehouse needs: its URL and the password file (dbt's profile variables
    follow from the URL in each dbt task: pophealth.marts.build.warehouse_for_dbt, as in compose)."""
    return {config.ENV_DATABASE_URL: warehouse_url(lay), "PGPASSFILE": str(lay.secret("pgpass"))}


def landing(lay: Layout) -> Path:
    if lay.landing_file.exists():
        return Path(lay.landing_file.read_text().strip())
    return lay.root / "landing"


#: The compose service each Airflow process of the cluster stands for (workerN: airflow-worker); `setup` and `cli`
#: (airflow db migrate, dags trigger) stand for none and get Airflow's own secrets only.
ROLE_SERVICES = {
    "api-server": "airflow-apiserver",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
}


def service_of(role: str) -> str | None:
    return "airflow-worker" if role.startswith("worker") else ROLE_SERVICES.get(role)


def secret_settings(lay: Layout, role: str) -> dict[str, str]:
    """The secret settings one process is given, each with the secret file it is read from: Airflow's own for
    every process, the Celery executor's two for the scheduler and the workers only (infra/deployment.yml)."""
    airflow = lay.settings["airflow"]
    found = dict(airflow["secrets"])
    if service_of(role) in airflow["celery"]["services"]:
        found.update(airflow["celery"]["secrets"])
    return found


def secret_command(lay: Layout, setting: str, secret: str) -> str:
    """The `<setting>_CMD` that gives Airflow a secret setting, as compose's: a connection URL from
    `python -m pophealth.operate.secret_url` (the password filled in from its file), any other secret `cat` of its
    file."""
    meta = lay.settings["cluster"]["metadata"]
    database = f"{meta['owner']}:{{{secret}}}@127.0.0.1:{lay.port('postgres')}/{meta['database']}"
    urls = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{database}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{{{secret}}}@127.0.0.1:{lay.port('redis')}/0",
    }
    if setting in urls:
        return shlex.join([sys.executable, "-m", "pophealth.operate.secret_url", urls[setting]])
    return shlex.join(["cat", str(lay.secret(secret))])


def airflow_env(lay: Layout, role: str) -> dict[str, str]:
    """The environment of one Airflow process: the shared settings of infra/deployment.yml, its secrets as
    `_CMD` settings, where this machine keeps things, and (workers only) the warehouse and the keys."""
    from pophealth.governance.lineage import openlineage_env

    cl = lay.settings["cluster"]
    env = _base_env()
    env.update({k: str(v) for k, v in lay.settings["airflow"]["settings"].items()})
    for setting, secret in secret_settings(lay, role).items():
        env[f"{setting}_CMD"] = secret_command(lay, setting, secret)
    env.update(
        {
            ENV_SECRETS_DIR: str(lay.secrets),  # where `python -m pophealth.operate.secret_url` finds the files
            config.ENV_HOME: str(lay.home),
            "AIRFLOW_HOME": str(lay.home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(config.paths().dags_folder),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pophealth.operate.cluster.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{lay.port('api_server')}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(lay.secret("simple_auth_manager_passwords.json")),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(lay.port("api_server")),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(lay.port("scheduler_health")),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(cl["task_heartbeat_timeout_seconds"]),
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": str(cl["orphaned_tasks_check_seconds"]),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(lay.home / "airflow" / "logs"),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(lay.port("triggerer_logs")),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(lay.port("worker_logs")),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cl["worker_concurrency"]),
            config.ENV_LANDING_DIR: str(landing(lay)),
            # the caller's, when given (the cluster's test looks more often), else the deployment's
            "POPHEALTH_POKE_INTERVAL_SECONDS": os.environ.get("POPHEALTH_POKE_INTERVAL_SECONDS")
            or str(cl["poke_interval_seconds"]),
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.update({k: v for k, v in openlineage_env().items() if k not in env})
    if role.startswith("worker"):
        number = int(role.removeprefix("worker"))
        env[ENV_WORKER_NAME] = role
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(lay.port("worker_logs") + number - 1)
        env.update(warehouse_env(lay))
        wanted = set(lay.settings["keys"]["airflow-worker"])
        env.update({k: v for k, v in key_files(lay).items() if k in wanted})
    return env


def _airflow_bin() -> str:
    beside = Path(sys.executable).parent / "airflow"
    return str(beside) if beside.exists() else "airflow"


def processes(lay: Layout) -> dict[str, list[str]]:
    """Each Airflow process of the cluster and its command (the commands of infra/deployment.yml's services)."""
    services = lay.settings["services"]
    airflow = _airflow_bin()
    found = {
        "api-server": [airflow, *services["airflow-apiserver"]],
        "scheduler": [airflow, *services["airflow-scheduler"]],
        "dag-processor": [airflow, *services["airflow-dag-processor"]],
        "triggerer": [airflow, *services["airflow-triggerer"]],
    }
    for n in range(1, int(lay.settings["cluster"]["workers"]) + 1):
        found[f"worker{n}"] = [
            airflow,
            *services["airflow-worker"],
            "--celery-hostname",
            f"worker{n}@%h",
            "--concurrency",
            str(lay.settings["cluster"]["worker_concurrency"]),
        ]
    return found


# ------------------------------------------------------------------------------------------------- processes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def pid_of(lay: Layout, name: str) -> int | None:
    try:
        pid = int((lay.run / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def start(lay: Layout, name: str, command: list[str], env: dict[str, str], user: str | None = None) -> bool:
    """Start one long-running process in its own session (so down can stop it with all its children);
    False when it already runs."""
    if pid_of(lay, name):
        return False
    lay.run.mkdir(parents=True, exist_ok=True)
    lay.logs.mkdir(parents=True, exist_ok=True)
    if user:
        command = ["runuser", "-u", user, "--", *command]
    with (lay.logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=lay.root,
        )
    (lay.run / f"{name}.pid").write_text(f"{proc.pid}\n")
    return True


def stop(lay: Layout, name: str, timeout: float = 60.0) -> bool:
    """SIGTERM to the process's whole group (a Celery worker's warm shutdown lets running tasks finish), then
    SIGKILL after `timeout`."""
    pid = pid_of(lay, name)
    (lay.run / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                return True
            time.sleep(0.2)
    return True


def kill(lay: Layout, name: str) -> int:
    """SIGKILL a process and its children at once, as a crash would (the fault tests); returns its pid."""
    pid = pid_of(lay, name)
    if pid is None:
        raise ClusterError(f"{name} is not running")
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid


# ------------------------------------------------------------------------------------------------ PostgreSQL


def _pg_user() -> str | None:
    """initdb and postgres refuse to run as root: as root, the server runs as the `postgres` user."""
    return "postgres" if os.geteuid() == 0 else None


def _as_pg(command: list[str]) -> list[str]:
    user = _pg_user()
    return ["runuser", "-u", user, "--", *command] if user else command


def _pg_bin(lay: Layout, tool: str) -> str:
    path = Path(lay.settings["cluster"]["postgres_bin"]) / tool
    if not path.exists():
        raise ClusterError(f"{path} is missing: install Debian's PostgreSQL server (apt-get install postgresql)")
    return str(path)


def _run(command: list[str], what: str, input: str | None = None) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, input=input)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ClusterError(f"{what} failed:\n{tail}")
    return proc.stdout


def _postgres_running(lay: Layout) -> bool:
    pid_file = lay.pgdata / "postmaster.pid"
    try:
        return _alive(int(pid_file.read_text().split()[0]))
    except (FileNotFoundError, IndexError, ValueError):
        return False


def start_postgres(lay: Layout) -> bool:
    """initdb once (peer auth on the socket for the superuser, scram-sha-256 on TCP), then start; False if it ran."""
    socket_dir = lay.postgres / "socket"
    if not (lay.pgdata / "PG_VERSION").exists():
        lay.postgres.mkdir(parents=True, exist_ok=True)
        socket_dir.mkdir(exist_ok=True)
        pg_user = _pg_user()
        if pg_user:
            shutil.chown(lay.postgres, pg_user, pg_user)
            shutil.chown(socket_dir, pg_user, pg_user)
        lay.postgres.chmod(0o700)
        if pg_user and subprocess.run(["runuser", "-u", pg_user, "--", "test", "-x", str(lay.postgres)]).returncode:
            raise ClusterError(
                f"the {_pg_user()} user, who runs PostgreSQL, cannot reach {lay.postgres}: give the "
                "folders above it search permission (chmod o+x) or set POPHEALTH_HOME elsewhere"
            )
        _run(
            _as_pg(
                [
                    _pg_bin(lay, "initdb"),
                    "-D",
                    str(lay.pgdata),
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            "initdb",
        )
    settings = (
        f"listen_addresses = '127.0.0.1'\nport = {lay.port('postgres')}\n"
        f"unix_socket_directories = '{socket_dir}'\npassword_encryption = 'scram-sha-256'\n"
        "max_connections = 200\n"
    )
    conf = lay.pgdata / "postgresql.auto.conf"
    if _pg_user():
        _run(_as_pg(["sh", "-c", f"cat > {conf}"]), "writing postgresql.auto.conf", input=settings)
    else:
        conf.write_text(settings)
    if _postgres_running(lay):
        return False
    _run(
        _as_pg(
            [
                _pg_bin(lay, "pg_ctl"),
                "-D",
                str(lay.pgdata),
                "-l",
                str(lay.postgres / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        "starting PostgreSQL",
    )
    return True


def stop_postgres(lay: Layout) -> bool:
    if not _postgres_running(lay):
        return False
    _run(
        _as_pg([_pg_bin(lay, "pg_ctl"), "-D", str(lay.pgdata), "-m", "fast", "-w", "-t", "60", "stop"]),
        "stopping PostgreSQL",
    )
    return True


def psql(lay: Layout, statements: str, database: str = "postgres") -> str:
    """SQL as the server's superuser over its socket (peer authentication), the statements on stdin so that a
    password in them is never on a command line."""
    return _run(
        _as_pg(
            [
                _pg_bin(lay, "psql"),
                "-h",
                str(lay.postgres / "socket"),
                "-p",
                str(lay.port("postgres")),
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
            ]
        ),
        "psql",
        input=statements,
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_databases(lay: Layout) -> None:
    """The two databases, each owned by its own login role (not a superuser); the metadata database open to its
    owner only. The warehouse owner may create the platform's roles (pophealth/warehouse/access.sql)."""
    cl = lay.settings["cluster"]
    roles = (
        (cl["metadata"], lay.secret("airflow_db_password"), "NOCREATEROLE"),
        (cl["warehouse"], lay.secret("warehouse_db_password"), "CREATEROLE"),
    )
    for db, password_file, createrole in roles:
        owner, database = db["owner"], db["database"]
        password = password_file.read_text().strip()
        exists = psql(lay, f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(owner)};").strip()
        verb = "ALTER" if exists else "CREATE"
        psql(lay, f'{verb} ROLE "{owner}" LOGIN NOSUPERUSER NOCREATEDB {createrole} PASSWORD {_literal(password)};')
        if not psql(lay, f"SELECT 1 FROM pg_database WHERE datname = {_literal(database)};").strip():
            psql(lay, f'CREATE DATABASE "{database}" OWNER "{owner}";')
    psql(lay, f'REVOKE ALL ON DATABASE "{cl["metadata"]["database"]}" FROM PUBLIC;')


# ---------------------------------------------------------------------------------------------------- Redis


def start_redis(lay: Layout) -> bool:
    redis = shutil.which("redis-server")
    if redis is None:
        raise ClusterError(
            "redis-server is missing: install Debian's (apt-get install redis-server); "
            "./dev.sh cluster and ./dev.sh test install it when they run as root"
        )
    lay.redis.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = _password(lay, "redis_password")
    # Its own configuration file, mode 600, because it holds the password (requirepass).
    _write_private(
        lay.secret("redis.conf"),
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {lay.port('redis')}",
                "protected-mode yes",
                "daemonize no",
                f"dir {lay.redis}",
                "appendonly yes",
                'save ""',
                f"requirepass {password}",
                "",
            ]
        ),
    )
    return start(lay, "redis", [redis, str(lay.secret("redis.conf"))], _base_env())


def redis_ping(lay: Layout) -> bool:
    """PING with AUTH over the socket, without any client library's help (one less thing to go wrong)."""
    password = lay.secret("redis_password").read_text().strip()
    try:
        with socket.create_connection(("127.0.0.1", lay.port("redis")), timeout=2) as conn:
            conn.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = conn.recv(100)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply == b"+OK\r\n+PONG\r\n"


# ---------------------------------------------------------------------------------------------- up and down


def _wait(what: str, ready, timeout: float, lay: Layout, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if log and pid_of(lay, log) is None:
            raise ClusterError(f"{what} stopped while starting; see {lay.logs / (log + '.log')}")
        time.sleep(1)
    raise ClusterError(
        f"{what} was not ready within {timeout:.0f} s" + (f"; see {lay.logs / (log + '.log')}" if log else "")
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def up(landing_dir: Path | None = None, say=print) -> Layout:
    """Bring every server and Airflow process up (what runs already is left alone); returns when all are ready.
    Ctrl-C (or a failure) on the way takes down what it started."""
    lay = layout()
    lay.root.mkdir(parents=True, exist_ok=True)
    if landing_dir is not None:
        lay.landing_file.write_text(str(landing_dir.resolve()) + "\n")
    landing(lay).mkdir(parents=True, exist_ok=True)
    try:
        ensure_secrets(lay)
        say(
            "PostgreSQL "
            + ("started" if start_postgres(lay) else "already running")
            + f" on 127.0.0.1:{lay.port('postgres')}"
        )
        ensure_databases(lay)
        say("Redis " + ("started" if start_redis(lay) else "already running") + f" on 127.0.0.1:{lay.port('redis')}")
        _wait("Redis", lambda: redis_ping(lay), 30, lay, "redis")
        _setup(lay, airflow_env(lay, "setup"))
        for name, command in processes(lay).items():
            started = start(lay, name, command, airflow_env(lay, name))
            say(f"{name} " + ("started" if started else "already running"))
        _wait(
            "the api-server",
            lambda: _http_ok(f"http://127.0.0.1:{lay.port('api_server')}/api/v2/version"),
            180,
            lay,
            "api-server",
        )
        _wait(
            "the scheduler",
            lambda: _http_ok(f"http://127.0.0.1:{lay.port('scheduler_health')}/health"),
            180,
            lay,
            "scheduler",
        )
        for name in processes(lay):
            if name.startswith("worker"):
                _wait(name, lambda n=name: b" ready." in _log_bytes(lay, n), 180, lay, name)
        _wait("the DAGs", lambda: dags_parsed(lay), 300, lay, "dag-processor")
    except BaseException:
        say("Bringing the cluster down again ...")
        down(say=lambda _: None)
        raise
    say(
        f"Airflow UI: http://127.0.0.1:{lay.port('api_server')}/ (users and passwords: "
        f"{lay.secret('simple_auth_manager_passwords.json')})"
    )
    say(f"Landing folder the workers read: {landing(lay)}")
    return lay


def _setup(lay: Layout, env: dict[str, str]) -> None:
    """`airflow db migrate` on the metadata database (with Airflow's settings), then the warehouse's schemas and
    the dbt manifest (with the warehouse's): what the compose file's airflow-init does."""
    import airflow

    stamp = lay.home / f".migrated-{airflow.__version__}"
    if not stamp.exists():
        lay.home.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([_airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError("airflow db migrate failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:]))
        stamp.write_text("ok\n")
    wenv = {**_base_env(), config.ENV_HOME: str(lay.home), **warehouse_env(lay)}
    code = (
        "from pophealth.warehouse.schema import prepare_warehouse; "
        "from pophealth.marts.build import parse_project; "
        "prepare_warehouse(); parse_project()"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=wenv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError("preparing the warehouse failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:]))


def _log_bytes(lay: Layout, name: str) -> bytes:
    try:
        return (lay.logs / f"{name}.log").read_bytes()
    except FileNotFoundError:
        return b""


def metadata_query(lay: Layout, statement: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    meta = lay.settings["cluster"]["metadata"]
    with psycopg.connect(
        host="127.0.0.1",
        port=lay.port("postgres"),
        dbname=meta["database"],
        user=meta["owner"],
        password=_password(lay, "airflow_db_password"),
        autocommit=True,
    ) as conn:
        return conn.execute(statement, params).fetchall()


def dags_parsed(lay: Layout) -> bool:
    from pophealth.operate.pipeline import INGEST_DAGS, MARTS_DAG

    try:
        found = {r[0] for r in metadata_query(lay, "SELECT dag_id FROM serialized_dag")}
    except Exception:  # the tables may not be there yet
        return False
    return set(INGEST_DAGS) | {MARTS_DAG} <= found


def down(say=print) -> None:
    """Stop every process of the cluster, workers first (their running tasks finish), the servers last."""
    lay = layout()
    names = list(processes(lay)) if DEPLOYMENT_FILE.exists() else []
    order = [n for n in names if n.startswith("worker")] + [n for n in names if not n.startswith("worker")]
    for name in order + ["redis"]:
        if stop(lay, name):
            say(f"{name} stopped")
    if lay.pgdata.exists() and stop_postgres(lay):
        say("PostgreSQL stopped")


def status(lay: Layout | None = None) -> dict[str, bool]:
    lay = lay or layout()
    found = {name: pid_of(lay, name) is not None for name in [*processes(lay), "redis"]}
    found["postgres"] = _postgres_running(lay)
    return found


def wait_in_foreground(say=print) -> None:
    """Keep `up --wait` in the foreground until Ctrl-C (or SIGTERM), then take everything down."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    say("The cluster runs; Ctrl-C stops all of it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("Stopping the cluster ...")
        down(say)


# ------------------------------------------------------------------------------------------ the pipeline on it


def warehouse_query(lay: Layout, statement: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(warehouse_url(lay), passfile=str(lay.secret("pgpass")), autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def _arrive(source: Path, target: Path) -> list[tuple[str, str, str]]:
    """A delivery arriving in the landing folder: every extract of `source` copied in under a temporary name
    (which the platform never reads), then each renamed to its own; (feed, file name, sha256) of each."""
    found = _arrive_in_place(source)
    for _, name, _ in found:
        shutil.copy2(source / name, target / f".{name}.part")
    for _, name, _ in found:
        os.replace(target / f".{name}.part", target / name)
    return found


def _accounts(lay: Layout, arrived: list[tuple[str, str, str]]) -> dict[str, str]:
    """File name -> the status of its latest load, for the arrived files that have one."""
    rows = warehouse_query(
        lay,
        """SELECT DISTINCT ON (file_name, file_sha256) file_name, file_sha256, status
                                   FROM audit.load WHERE file_name = ANY(%s)
                                   ORDER BY file_name, file_sha256, load_id DESC""",
        ([a[1] for a in arrived],),
    )
    wanted = {(name, sha) for _, name, sha in arrived}
    return {name: status for name, sha, status in rows if (name, sha) in wanted}


def _settled_or_none(query):
    import psycopg

    try:
        return query()
    except psycopg.OperationalError:  # a server restarting: look again
        return None


def _wait_until_dealt_with(lay: Layout, arrived, started: float, deadline: float, say) -> dict[str, str]:
    from pophealth.ingest.load import UNFINISHED

    last_said = 0.0
    accounts: dict[str, str] = {}
    while True:
        accounts = _settled_or_none(lambda: _accounts(lay, arrived)) or accounts
        done = [name for name, status in accounts.items() if status not in UNFINISHED]
        if len(done) == len(arrived):
            return accounts
        if time.monotonic() > deadline:
            raise ClusterError(f"{len(arrived) - len(done)} of {len(arrived)} file(s) were not loaded in time")
        if time.monotonic() - last_said >= 30:
            say(f"  {time.monotonic() - started:6.0f} s: {len(done)} of {len(arrived)} file(s) dealt with")
            last_said = time.monotonic()
        time.sleep(3)


def _wait_for_ingest_runs(lay: Layout, arrived, deadline: float) -> dict[str, tuple[str, list[str]]]:
    """The ingest runs that loaded the files, once each has finished (its last task is the asset event):
    dag id -> (failed if any run of it failed, else success; the run ids)."""
    loaded_by = warehouse_query(
        lay, "SELECT DISTINCT feed, run_id FROM audit.load WHERE file_name = ANY(%s)", ([a[1] for a in arrived],)
    )
    while True:
        found = _settled_or_none(
            lambda: {
                (d, r): st
                for d, r, st in metadata_query(
                    lay,
                    "SELECT dag_id, run_id, state FROM dag_run WHERE run_id = ANY(%s)",
                    ([r for _, r in loaded_by],),
                )
            }
        )
        if found is not None:
            runs = {(f"ingest_{feed}", run_id): found.get((f"ingest_{feed}", run_id)) for feed, run_id in loaded_by}
            if all(state in ("success", "failed") for state in runs.values()):
                break
        if time.monotonic() > deadline:
            raise ClusterError("the ingest runs did not finish in time")
        time.sleep(2)
    states: dict[str, tuple[str, list[str]]] = {}
    for (dag_id, run_id), state in sorted(runs.items()):
        before, run_ids = states.get(dag_id, ("success", []))
        states[dag_id] = ("failed" if "failed" in (before, state) else "success", [*run_ids, run_id])
    return states


def load(source: Path | None = None, say=print, timeout: float = 3600) -> dict[str, str]:
    """Deliver a folder of extracts to the cluster and watch the scheduler load it: nothing is triggered by hand.

    The files arrive in the landing folder all at once (copied from `source`, when given). Each ingest DAG's
    scheduled run is already waiting for files (a deployment's first run of each feed starts when it is
    deployed); each takes its feed's files in the contract's load order (a feed waits while one before it has
    files to load), and the scheduler hands every task to the Celery workers. Each run's one asset event starts
    build_marts, which waits until nothing is left to load and builds once; a build the later events start
    finds nothing new and is skipped. Done when every file is accounted for in the audit, the marts are published
    with the newest load, and no build is waiting; returns each DAG's outcome."""
    from pophealth.ingest.load import UNFINISHED
    from pophealth.operate.pipeline import MARTS_DAG

    lay = layout()
    target = landing(lay)
    started = time.monotonic()
    deadline = started + timeout
    if source is not None:
        arrived = _arrive(source, target)
    else:
        arrived = _arrive_in_place(target)
    say(f"  {len(arrived)} file(s) in {target}: the scheduled ingest runs take them")
    while True:
        accounts = _wait_until_dealt_with(lay, arrived, started, deadline, say)
        states = _wait_for_ingest_runs(lay, arrived, deadline)
        # A task retried after a crash may have started a new load of a file meanwhile: look again.
        accounts = _accounts(lay, arrived)
        if len(accounts) == len(arrived) and all(status not in UNFINISHED for status in accounts.values()):
            break
    by_status = Counter(accounts.values())
    say(
        f"  {time.monotonic() - started:6.0f} s: every file dealt with: "
        + ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    )
    for dag_id, (state, run_ids) in sorted(states.items()):
        say(f"  {dag_id:<30} {state:<8} {', '.join(run_ids)}")
    outcome = {dag_id: state for dag_id, (state, _) in states.items()}
    refused = {name: status for name, status in accounts.items() if status not in ("published", "duplicate")}
    if refused:
        say(
            "  refused: " + ", ".join(f"{n} ({s})" for n, s in sorted(refused.items())) + ": the marts are not "
            "rebuilt while a load is refused and not replaced"
        )
        outcome[MARTS_DAG] = "not built"
        return outcome
    newest = warehouse_query(lay, "SELECT max(load_id) FROM audit.load WHERE published_at IS NOT NULL")[0][0]
    while True:
        found = _settled_or_none(
            lambda: (
                warehouse_query(lay, "SELECT max(newest_load_id) FROM audit.marts_publication")[0][0],
                *metadata_query(
                    lay,
                    """SELECT (SELECT count(*) FROM dag_run WHERE dag_id = %s
                                            AND state IN ('queued', 'running'))
                                    + (SELECT count(*) FROM asset_dag_run_queue WHERE target_dag_id = %s),
                                    (SELECT count(*) FROM dag_run WHERE dag_id = %s AND state = 'failed'
                                            AND start_date >= now() - make_interval(secs => %s))""",
                    (MARTS_DAG, MARTS_DAG, MARTS_DAG, time.monotonic() - started + 5),
                )[0],
            )
        )
        if found is not None:
            published, waiting, failed = found
            if published is not None and published >= newest and not waiting:
                outcome[MARTS_DAG] = "success"
                break
            if failed and not waiting:
                outcome[MARTS_DAG] = "failed"
                break
        if time.monotonic() > deadline:
            raise ClusterError(f"the marts were not published with the newest load within {timeout:.0f} s")
        time.sleep(3)
    runs = metadata_query(
        lay,
        """SELECT state, count(*) FROM dag_run WHERE dag_id = %s
                                  AND start_date >= now() - make_interval(secs => %s) GROUP BY state""",
        (MARTS_DAG, time.monotonic() - started + 5),
    )
    say(
        f"  {time.monotonic() - started:6.0f} s: {MARTS_DAG} "
        + outcome[MARTS_DAG]
        + " ("
        + ", ".join(f"{n} run(s) {state}" for state, n in runs)
        + ", started by the assets)"
    )
    return outcome


def _arrive_in_place(target: Path) -> list[tuple[str, str, str]]:
    """The extracts in a folder, (feed, file name, sha256) of each: the landing folder's when the delivery came
    another way."""
    from pophealth.ingest.landing import identify, sha256_of

    return [
        (e.feed, path.name, sha256_of(path)[0])
        for path in sorted(target.iterdir())
        if path.is_file() and (e := identify(path)) is not None
    ]


def restart(name: str, crash: bool = False) -> None:
    """Restart one part of a running cluster: an Airflow process by its name, `redis` or `postgres`. With `crash`,
    an Airflow process (and its children, the tasks it runs) is killed at once (SIGKILL), as a crash would."""
    lay = layout()
    if name == "postgres":
        stop_postgres(lay)
        start_postgres(lay)
        time.sleep(15)  # an Airflow process that lost its database and gave up is started again, as compose would
        for process, command in processes(lay).items():
            if pid_of(lay, process) is None:
                start(lay, process, command, airflow_env(lay, process))
    elif name == "redis":
        stop(lay, "redis")
        start_redis(lay)
        _wait("Redis", lambda: redis_ping(lay), 30, lay, "redis")
    else:
        wanted = processes(lay).get(name)
        if wanted is None:
            raise ClusterError(f"the cluster has no process called {name}")
        if crash:
            if pid_of(lay, name):
                kill(lay, name)
            (lay.run / f"{name}.pid").unlink(missing_ok=True)
        else:
            stop(lay, name)
        start(lay, name, wanted, airflow_env(lay, name))
