"""Running the real DAGs through Airflow itself, on the project's metadata database.

Each DAG run is `dag.test()` in a child process whose environment points Airflow at the project's
AIRFLOW_HOME, DAG folder and metadata database (the embedded server's `airflow` database). The child's
full Airflow log is written to a file; the parent gets back the run's state and each task's state.
This is the same DAG code the scheduler runs in a deployment; there is no second code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pophealth import config, db
from pophealth.lineage import openlineage_env

#: Settings no Airflow process is given (pophealth/keys.py: the vault's private key is the re-identification path's).
PRIVATE_ONLY = frozenset({config.ENV_VAULT_PRIVATE_KEY, config.ENV_VAULT_PRIVATE_KEY_FILE})


def airflow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    paths = config.paths()
    paths.airflow_home.mkdir(parents=True, exist_ok=True)
    # The vault's private key never reaches Airflow: no task reads it, and a worker's environment must not hold it.
    env = {
        **{k: v for k, v in os.environ.items() if k not in PRIVATE_ONLY},
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        **_metadata_db_setting(),
        # Mask the key wherever Airflow might print it.
        "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES": ("linkage_key,vault_key,vault_public_key,secondary_use_key,"
                                                   "direct_care_key,POPHEALTH_LINKAGE_KEY,POPHEALTH_VAULT_PUBLIC_KEY,"
                                                   "POPHEALTH_SECONDARY_USE_KEY,POPHEALTH_DIRECT_CARE_KEY"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
        "PYTHONWARNINGS": "ignore",
        "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", str(paths.home / "run")),
    }
    env.update(db.dbt_env())  # dbt_project/profiles.yml reads the warehouse from these
    env.update(openlineage_env())  # every task's OpenLineage events: a file under POPHEALTH_HOME, Marquez if set
    if extra:
        env.update(extra)
    return env


def _metadata_db_setting() -> dict[str, str]:
    """Airflow's metadata database, unless the deployment gives it as a command or a secret (docker-compose.yml:
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD): a plain setting would win over those and point Airflow elsewhere."""
    given = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    if not os.environ.get(given) and (os.environ.get(given + "_CMD") or os.environ.get(given + "_SECRET")):
        return {}
    return {given: os.environ.get(given) or db.airflow_metadata_url()}


def _airflow_bin() -> str:
    beside = Path(sys.executable).parent / "airflow"
    return str(beside) if beside.exists() else "airflow"


def ensure_metadata_db() -> None:
    """`airflow db migrate` once per Airflow version (it is idempotent, but takes seconds)."""
    import airflow

    marker = config.paths().airflow_home / f".migrated-{airflow.__version__}-{_metadata_fingerprint()}"
    if marker.exists():
        return
    proc = subprocess.run([_airflow_bin(), "db", "migrate"], env=airflow_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("airflow db migrate failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-10:]))
    marker.write_text("ok\n")


def _metadata_fingerprint() -> str:
    import hashlib

    return hashlib.sha256(airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].encode()).hexdigest()[:8]


@dataclass
class DagOutcome:
    dag_id: str
    state: str
    run_id: str | None
    seconds: float
    log_file: Path
    tasks: list[dict] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def failed_tasks(self) -> list[dict]:
        return [t for t in self.tasks if t["state"] in ("failed", "upstream_failed")]


def run_dag(dag_id: str, log_dir: Path, env: dict[str, str] | None = None) -> DagOutcome:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{dag_id}.log"
    # The run's result goes to a file of its own: the log is written by many hands (tasks, Airflow, dbt) at
    # once, and a line of it can be interleaved with another.
    result_file = log_dir / f"{dag_id}.result.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    with log_file.open("w") as handle:
        proc = subprocess.run(
            [sys.executable, "-m", "pophealth.airflow_runner", dag_id, str(result_file)],
            env=airflow_env(env), stdout=handle, stderr=subprocess.STDOUT, text=True,
        )
    seconds = time.monotonic() - started
    if not result_file.exists():
        return DagOutcome(dag_id, f"crashed (exit {proc.returncode})", None, seconds, log_file)
    result = json.loads(result_file.read_text())
    return DagOutcome(dag_id, result["state"], result["run_id"], seconds, log_file, result["tasks"])


def _child(dag_id: str, result_file: Path) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"DAG import error in {path}:\n{error}")
        return 2
    dag = bag.get_dag(dag_id)
    if dag is None:
        print(f"no DAG called {dag_id}")
        return 2
    run = dag.test()
    tasks = [
        {"task_id": ti.task_id, "map_index": ti.map_index, "state": str(getattr(ti.state, "value", ti.state))}
        for ti in run.get_task_instances()
    ]
    state = str(getattr(run.state, "value", run.state))
    written = result_file.with_name(f".{result_file.name}.part")
    written.write_text(json.dumps({"state": state, "run_id": run.run_id, "tasks": tasks}))
    written.replace(result_file)  # whole or absent
    print(f"DAG {dag_id} finished: {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], Path(sys.argv[2])))
