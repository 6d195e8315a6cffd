"""Running the real DAGs through Airflow itself, on the project's metadata database.

Each DAG run is `dag.test()` in a child process (one for all the DAGs of a run, see `run_dags`) whose
environment points Airflow at the project's AIRFLOW_HOME, DAG folder and metadata database (the embedded
server's `airflow` database). The child's
full Airflow log is written to a file; the parent gets back the run's state and each task's state.
This is the same DAG code the scheduler runs in a deployment; there is no second code path.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pophealth import config
from pophealth.governance.lineage import openlineage_env
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

#: Settings no Airflow process is given (identity/keys.py: the vault's private key is the re-identification path's).
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
        "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES": (
            "linkage_key,vault_key,vault_public_key,secondary_use_key,"
            "direct_care_key,POPHEALTH_LINKAGE_KEY,POPHEALTH_VAULT_PUBLIC_KEY,"
            "POPHEALTH_SECONDARY_USE_KEY,POPHEALTH_DIRECT_CARE_KEY"
        ),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        # Cosmos's watcher otherwise rewrites one Airflow Variable with every result pushed so far, at each of the
        # build's ~170 pushes (~50 ms each, from the thread reading dbt's output): a copy for a retry of the build.
        # Off, the copy is still written once if the build fails (Cosmos's failure callback), which is all a
        # retry reads.
        "AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY": "False",
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
    from importlib.metadata import version

    # The installed version from its metadata: importing airflow for it cost every run 2-3 s in this process,
    # which otherwise never imports Airflow (the DAGs run in a child).
    env = airflow_env()
    marker = config.paths().airflow_home / f".migrated-{version('apache-airflow')}-{_metadata_fingerprint(env)}"
    if marker.exists():
        return
    copy = _migrated_copy(env)
    if copy is not None and copy.exists() and _restore_migrated(copy):
        marker.write_text("ok\n")
        return
    proc = subprocess.run([_airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("airflow db migrate failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-10:]))
    if copy is not None:
        _keep_migrated(copy)
    marker.write_text("ok\n")


def _migrated_copy(env: dict[str, str]) -> Path | None:
    """Where a new embedded metadata database, as `airflow db migrate` made it, is kept for the next new home on
    this machine (a plain SQL dump, in the user's cache): None when the metadata database is not the embedded one.

    Migrating an empty database took 5 s of CPU and 9 s on 2 busy cores, paid by every new home: the test command
    makes ten, `bench --scale` one per size (issue 19). The copy holds Airflow's tables and the few rows the
    migration writes (its version, the default pool, the log template), nothing of a run and no secret. Its name
    says what made it (Airflow's and the server's versions, Airflow's settings but the database's address and the
    home's own paths), so a change of any of them migrates afresh."""
    import hashlib
    from importlib.metadata import version

    if not db.is_embedded() or os.environ.get(config.ENV_AIRFLOW_DATABASE_URL):
        return None
    # Airflow's `env` holds the embedded URL unless the deployment gives its own (a URL, a command or a secret).
    if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") != db.airflow_metadata_url():
        return None

    home = str(config.paths().home)  # a setting that names a file of the home (the lineage events') is the same
    settings = {
        k: v.replace(home, "<home>")
        for k, v in env.items()
        if k.startswith("AIRFLOW__") and "SQL_ALCHEMY_CONN" not in k
    }
    made_by = {"airflow": version("apache-airflow"), "pgserver": version("pgserver"), "settings": settings}
    digest = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:16]
    return config.cache_dir() / f"airflow-metadata-{digest}.sql"


def _embedded_client(program: str, *args: str) -> subprocess.CompletedProcess:
    """pg_dump or psql of the embedded server on its `airflow` database, with the server's own environment (no key
    or password reaches them)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    parts = db.warehouse()
    command = [str(POSTGRES_BIN_PATH / program), "-h", parts.host, "-p", str(parts.port), "-U", parts.user]
    return subprocess.run(
        [*command, "-d", db.AIRFLOW_DB, *args],
        env=db.server_environment(dict(os.environ)),
        capture_output=True,
        text=True,
        check=False,
    )


def _restore_migrated(copy: Path) -> bool:
    """The kept copy loaded into the embedded `airflow` database, when that is empty; False (and nothing done)
    when it is not, or when the copy does not load (it is then migrated as usual, over a clean database)."""
    empty = _embedded_client("psql", "-tAc", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    if empty.returncode != 0 or empty.stdout.strip() != "0":
        return False
    loaded = _embedded_client("psql", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", str(copy))
    if loaded.returncode != 0:
        log.warning("the kept copy of a migrated Airflow database did not load; migrating instead")
        return False
    return True


def _keep_migrated(copy: Path) -> None:
    """A plain dump of the database the migration just made, written whole (another process may be reading it)."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_name(f"{copy.name}.{os.getpid()}.part")
    dumped = _embedded_client("pg_dump", "--no-owner", "--no-privileges", "-f", str(partial))
    if dumped.returncode == 0:
        partial.replace(copy)
        return
    partial.unlink(missing_ok=True)
    said = dumped.stderr.strip().splitlines()[-1:] or ["no message"]
    log.warning("no copy of the migrated Airflow database was kept (the next new home migrates): %s", said[0])


def prepare_airflow() -> None:
    """Before the DAGs run (or the UI starts): Airflow's metadata database migrated, and, when the marts DAG shows
    each dbt node as a task (POPHEALTH_DBT_TASKS=node: Cosmos renders it from the manifest), the dbt manifest
    parsed. Each is a process of its own (`airflow db migrate`, `dbt parse`), skipped when already done; in a new
    home both run, side by side rather than one after the other (3-5 s each on 2 quiet cores, issue 19)."""
    from concurrent.futures import ThreadPoolExecutor

    from pophealth.marts.build import parse_project

    if config.dbt_task_grain() != "node":
        ensure_metadata_db()
        return
    with ThreadPoolExecutor(max_workers=1) as beside:
        parsed = beside.submit(parse_project)
        ensure_metadata_db()
        parsed.result()


def _metadata_fingerprint(env: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].encode()).hexdigest()[:8]


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


def dies_with_parent() -> None:
    """In a child, before it runs: ask Linux to send it SIGTERM when its parent dies, even by SIGKILL, which
    no handler sees, so a killed `pophealth run` or `pophealth ui` never leaves Airflow running (the UI's holding its
    port)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


#: In the run's log folder: the child's signal that `run_dags`' `prepare` is done (the metadata database ready).
READY_FILE = ".prepared"


def run_dags(
    dag_ids: tuple[str, ...] | list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    on_start=None,
    on_finish=None,
    prepare=None,
) -> list[DagOutcome]:
    """Run the DAGs one after another, in one child process while it lasts.

    Why one process: starting Python, importing Airflow and parsing the DAG folder costs ~10 s, and Great
    Expectations' context and dbt's imports as much again, in every process. The DAGs are still run one at a
    time, each by `dag.test()`, each with its own log file and result. If the child dies (a crash, a kill),
    the DAG it was running is reported crashed and a new child runs the rest: one DAG's crash never hides the
    others' outcomes. `on_start(dag_id)` and `on_finish(outcome)` report progress as it happens.

    `prepare()` (Airflow's metadata database migrated, say) runs here while the first child starts: the child
    meanwhile does what needs no database (_warm_up) and waits for it before its first DAG. On 2 cores the two
    overlap: in a new home, `airflow db migrate` took about 4 s of the 15 s fixed cost at 10% of Essex (issue 19).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    ready = log_dir / READY_FILE
    ready.unlink(missing_ok=True)
    outcomes: list[DagOutcome] = []
    remaining = list(dag_ids)
    while remaining:
        for dag_id in remaining:
            (log_dir / f"{dag_id}.result.json").unlink(missing_ok=True)
        # What the child says before its first DAG starts (an import failing, say) goes to the runner's log.
        with (log_dir / "runner.log").open("a") as runner_log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pophealth.operate.airflow_runner", str(log_dir), *remaining],
                env=airflow_env(env),
                stdout=runner_log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # a process group of its own: what it leaves behind is found (_end_group)
                preexec_fn=dies_with_parent,  # and it ends with this process, however this one ends
            )
        try:
            if prepare is not None:
                prepare()
                prepare = None
            ready.touch()
            if on_start:
                on_start(remaining[0])
            announced = _follow(proc, remaining, log_dir, on_start, on_finish, outcomes)
        finally:
            _end_group(proc)
        remaining = remaining[announced:]
    return outcomes


def _follow(proc: subprocess.Popen, remaining: list[str], log_dir: Path, on_start, on_finish, outcomes) -> int:
    """Report the child's DAGs as their results appear, and the one it was running if it dies; how many it ran."""
    announced = 0
    started = time.monotonic()
    while True:
        exited = proc.poll() is not None
        # Report each DAG as its result appears (the child writes it whole, or not at all).
        while announced < len(remaining):
            result = _read_result(remaining[announced], log_dir)
            if result is None:
                break
            outcomes.append(result)
            announced += 1
            if on_finish:
                on_finish(result)
            if on_start and announced < len(remaining):
                on_start(remaining[announced])
            started = time.monotonic()
        if exited or announced == len(remaining):
            break
        time.sleep(0.2)
    proc.wait()
    if announced < len(remaining):
        dag_id = remaining[announced]
        crashed = DagOutcome(
            dag_id, f"crashed (exit {proc.returncode})", None, time.monotonic() - started, log_dir / f"{dag_id}.log"
        )
        outcomes.append(crashed)
        if on_finish:
            on_finish(crashed)
        announced += 1
    return announced


def _end_group(proc: subprocess.Popen) -> None:
    """End the child and everything it started. A worker process forked inside the child (by a library: seen
    after a task's os._exit) outlives a child that dies, waiting for ever on a pipe it holds both ends of; the
    group finds it.
    Interrupted (Ctrl-C reaches only the parent, the child being in a session of its own), the child gets the
    same interrupt and half a minute to end its task before it is killed."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # nothing was left
        pass


def _read_result(dag_id: str, log_dir: Path) -> DagOutcome | None:
    result_file = log_dir / f"{dag_id}.result.json"
    if not result_file.exists():
        return None
    result = json.loads(result_file.read_text())
    return DagOutcome(
        dag_id, result["state"], result["run_id"], result["seconds"], log_dir / f"{dag_id}.log", result["tasks"]
    )


def _child(log_dir: Path, dag_ids: list[str]) -> int:
    """Each DAG's output (Airflow's, the tasks', dbt's) goes to its own log: the process's stdout and stderr
    are pointed at that DAG's file while it runs. Its result goes to a file of its own: the log is written by
    many hands at once, and a line of it can be interleaved with another."""
    _warm_up()
    ready = log_dir / READY_FILE
    while not ready.exists():  # the parent's `prepare`; it ends this process if it fails
        time.sleep(0.05)
    for dag_id in dag_ids:
        started = time.monotonic()
        log_file = log_dir / f"{dag_id}.log"
        with log_file.open("w") as handle:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            result = _run_one(dag_id)
            sys.stdout.flush()
            sys.stderr.flush()
        result["seconds"] = time.monotonic() - started
        config.write_whole(log_dir / f"{dag_id}.result.json", json.dumps(result))
    return 0


class _ParsedOnce:
    """The DAG folder parsed, and written to the metadata database, once per process.

    `dag.test()` parses the whole DAG folder again for every DAG it runs (Cosmos rendering build_marts's ~120
    tasks each time) and writes every DAG to the database again, unchanged: 0.5-2 s a DAG (issue 19). While a
    DAG runs here, the two names it calls for that (it imports them when it runs) give it this process's one
    parse and one write instead; the files cannot change in between that matters, as the DAGs already run
    are the ones parsed at the start."""

    def __init__(self) -> None:
        from airflow.dag_processing import dagbag

        self.module = dagbag
        self.real_bag, self.real_sync = dagbag.BundleDagBag, dagbag.sync_bag_to_db
        self.bags: dict[tuple[str, str | None], Any] = {}
        self.synced: set[int] = set()

    def bag(self, **kwargs: Any) -> Any:
        key = (str(kwargs.get("dag_folder")), kwargs.get("bundle_name"))
        if key not in self.bags:
            self.bags[key] = self.real_bag(**kwargs)
        return self.bags[key]

    def sync(self, bag: Any, bundle_name: str, bundle_version: str | None, **kwargs: Any) -> None:
        if id(bag) not in self.synced:
            self.real_sync(bag, bundle_name, bundle_version, **kwargs)
            self.synced.add(id(bag))

    def dag_folder(self) -> Any:
        """The DAG folder's bundle (the one this environment configures), parsed as `dag.test()` parses it."""
        from airflow.dag_processing.bundles.manager import DagBundlesManager

        bundle = next(iter(DagBundlesManager().get_all_dag_bundles()))
        if not bundle.is_initialized:
            bundle.initialize()
        return self.bag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)

    @contextmanager
    def in_dag_test(self) -> Iterator[None]:
        vars(self.module).update(BundleDagBag=self.bag, sync_bag_to_db=self.sync)
        try:
            yield
        finally:
            vars(self.module).update(BundleDagBag=self.real_bag, sync_bag_to_db=self.real_sync)


_PARSED: _ParsedOnce | None = None


def _warm_up() -> None:
    """What the first DAG would otherwise pay once the metadata database is ready, none of which reads it:
    Airflow's imports, the DAG folder's parse, and the in-process execution API that `dag.test()` calls, built
    (3 s on 2 quiet cores) and asked once (its first request, even for a page it does not have, took 4 s more:
    it finishes setting itself up then). A failure here is met again, and logged with its DAG, when it runs."""
    global _PARSED
    try:
        _PARSED = _ParsedOnce()
        if config.dbt_task_grain() != "node":  # per node, Cosmos renders from the manifest `prepare` may be writing
            _PARSED.dag_folder()
        made_for = _in_process_api_for_newest_versions()  # one per process: every dag.test() of it uses it
        print(f"in-process execution API: made for {made_for}", flush=True)
    except Exception as exc:  # the DAG run that needs it fails with the whole story in its own log
        print(f"warm-up skipped: {type(exc).__name__}: {exc}", flush=True)


def _in_process_api_for_newest_versions() -> str:
    """Make the in-process execution API (`dag.test()`'s tasks call it) for the newest versions of Airflow's task
    protocol only, and ask it once; what it was made for. The newest 2 versions, else 3, else all of them.

    Airflow's execution API keeps every version of its protocol since 3.0 (ten) for workers of older releases;
    Cadwyn makes every version's routes on the first request, 4.2 s of CPU in each process that runs DAGs (issue
    19). Here the only caller is this process's own task SDK, which speaks the newest version (`API_VERSION`), so
    the app is made for that and the few before it that Cadwyn needs (a route moved in an older version must be
    put back in one it knows; in Airflow 3.3 the newest alone is not enough): 1.5 s. A made app that does not
    answer is made again with more versions; the versions' bindings are put back as they were, whatever happened."""
    import httpx
    from airflow.api_fastapi.execution_api import versions
    from airflow.sdk.api.datamodels._generated import API_VERSION
    from airflow.sdk.execution_time.supervisor import in_process_api_server
    from cadwyn import HeadVersion, Version, VersionBundle

    def ask() -> None:
        httpx.Client(transport=in_process_api_server().transport, base_url="http://in-process.invalid./").get("/health")

    everything = versions.bundle
    changed = sum(1 for v in everything.versions if v.changes)
    # An SDK of another release than the API's: nothing is left out.
    tries = [keep for keep in (2, 3) if keep < changed] if everything.versions[0].value == API_VERSION else []
    try:
        for keep in tries:
            for change in (c for v in everything.versions for c in v.changes):
                change._bound_version_bundle = None  # Cadwyn binds each change to one bundle only
            kept = (Version(v.value, *v.changes) for v in everything.versions[:keep])
            versions.bundle = VersionBundle(HeadVersion(), *kept, Version(everything.versions[keep].value))
            try:
                ask()
                return f"the newest {keep} versions of its protocol"
            except Exception:
                in_process_api_server.cache_clear()
        _rebind(everything)
        versions.bundle = everything
        ask()
        return "every version of it"
    finally:
        _rebind(everything)
        versions.bundle = everything


def _rebind(bundle: Any) -> None:
    for version in bundle.versions:
        for change in version.changes:
            change._bound_version_bundle = bundle


def _run_one(dag_id: str) -> dict:
    global _PARSED
    if _PARSED is None:
        _PARSED = _ParsedOnce()
    bag = _PARSED.dag_folder()
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"DAG import error in {path}:\n{error}", flush=True)
        return {"state": "not run (DAG import error)", "run_id": None, "tasks": []}
    dag = bag.get_dag(dag_id)
    if dag is None:
        print(f"no DAG called {dag_id}", flush=True)
        return {"state": "not run (no such DAG)", "run_id": None, "tasks": []}
    with _PARSED.in_dag_test():
        run = dag.test()
    tasks = [
        {"task_id": ti.task_id, "map_index": ti.map_index, "state": str(getattr(ti.state, "value", ti.state))}
        for ti in run.get_task_instances()
    ]
    state = str(getattr(run.state, "value", run.state))
    print(f"DAG {dag_id} finished: {state}", flush=True)
    return {"state": state, "run_id": run.run_id, "tasks": tasks}


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), sys.argv[2:]))
