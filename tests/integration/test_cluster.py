"""The deployment's topology on real servers (`./dev.sh cluster`, pophealth/operate/cluster.py), end to end.

Brought up from nothing, as CI starts: Debian's PostgreSQL (two databases, two owners, passwords, TCP on
127.0.0.1), redis-server with a password, Airflow's api-server, scheduler, dag-processor, triggerer and two
Celery workers. A small synthetic world's files then arrive in the landing folder, all at once; the scheduled
ingest runs take them in the contract's load order, the scheduler hands every task to the workers, and the
assets build the marts once. Faults are injected on the way. The answer key must match, the audit must
account for every row, and `down` must leave nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import COUNCILS, PURPOSE_KEYS_ENV, TEST_KEY, TEST_VAULT_PRIVATE_KEY, TEST_VAULT_PUBLIC_KEY, isolated_env
from .identifiable import files_at_rest, identifiable_values
from .test_pipeline_end_to_end import PERSON_COLUMNS, _normal, expected_person_id, expected_person_row

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

# The number of files (and so of tasks), not of people, sets the time; the answer key is exact. The same test at
# another size, without the faults, measures the deployment (POPHEALTH_CLUSTER_TEST_POPULATION=50000
# POPHEALTH_CLUSTER_TEST_FAULTS=0 ./dev.sh test -s tests/integration/test_cluster.py: the load's time is printed).
POPULATION = int(os.environ.get("POPHEALTH_CLUSTER_TEST_POPULATION") or 300)
SEED = int(os.environ.get("POPHEALTH_CLUSTER_TEST_SEED") or 20241)
FAULTS = os.environ.get("POPHEALTH_CLUSTER_TEST_FAULTS", "1") != "0"
# Beside a cluster someone runs with the default ports; another offset (POPHEALTH_CLUSTER_TEST_PORT_OFFSET) beside
# another run of this test on the same machine (the ports are fixed: only one test process runs this module).
PORT_OFFSET = os.environ.get("POPHEALTH_CLUSTER_TEST_PORT_OFFSET") or "1000"


def _pophealth(*args: str) -> list[str]:
    return [sys.executable, "-m", "pophealth.cli", *args]


@dataclass
class Deployment:
    home: Path
    source: Path
    env: dict[str, str]
    up: subprocess.CompletedProcess
    load: subprocess.CompletedProcess | None = None
    failed_tasks: list | None = None  # when the load failed: the task instances that failed, from the metadata

    def pophealth(self, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(_pophealth(*args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        """`pophealth` with these arguments, started and not waited for."""
        return subprocess.Popen(
            _pophealth(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def layout(self):
        from pophealth.operate import cluster

        saved = {k: os.environ.get(k) for k in ("POPHEALTH_HOME", "POPHEALTH_CLUSTER_PORT_OFFSET")}
        os.environ.update(POPHEALTH_HOME=self.env["POPHEALTH_HOME"], POPHEALTH_CLUSTER_PORT_OFFSET=PORT_OFFSET)
        try:
            return cluster.layout()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    def metadata(self, statement: str, params: tuple = ()) -> list[tuple]:
        from pophealth.operate import cluster

        return cluster.metadata_query(self.layout(), statement, params)

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        from pophealth.operate import cluster

        lay = self.layout()
        with psycopg.connect(cluster.warehouse_url(lay), passfile=str(lay.secret("pgpass"))) as conn:
            return conn.execute(statement, params).fetchall()


class Faults(threading.Thread):
    """The faults of a deployment, each injected while the load runs, when its moment comes (the metadata says),
    and recorded: the warehouse's server restarted while the register loads, a worker killed while it stages a
    hospital file, Redis restarted while social care loads, the scheduler killed while the marts build."""

    PLAN = (
        # as the opt-out list is published, so the register's run meets the restart
        (
            "the warehouse restarted",
            ("restart", "postgres"),
            "SELECT count(*) FROM task_instance WHERE dag_id = 'ingest_optouts' AND task_id = 'published' "
            "AND state = 'success'",
        ),
        # a load of hospital files (a group of a dozen) is killed with its worker, at once: whichever worker runs it
        (
            "a worker killed mid-load",
            ("restart", "{found}", "--crash"),
            """SELECT hostname FROM task_instance WHERE dag_id = 'ingest_apc' AND task_id = 'load'
            AND state = 'running' AND hostname IN ('worker1', 'worker2') ORDER BY hostname LIMIT 1""",
        ),
        (
            "Redis restarted",
            ("restart", "redis"),
            "SELECT count(*) FROM task_instance WHERE dag_id = 'ingest_cld' AND task_id = 'discover' "
            "AND state = 'success'",
        ),
        (
            "the scheduler restarted mid-run",
            ("restart", "scheduler", "--crash"),
            """SELECT count(*) FROM task_instance WHERE dag_id = 'build_marts' AND task_id LIKE 'dbt.%%'
            AND state = 'success'""",
        ),
    )

    def __init__(self, deployment: Deployment):
        super().__init__(daemon=True)
        self.deployment = deployment
        self.done: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        """Each fault when its moment's query first finds something (a count above 0, a worker's name), its command
        run in the background while the next moment is watched for. A command takes seconds (the warehouse's
        restart waits 15 s for the processes that gave up), and the load goes on meanwhile: once, with each command
        waited for and worker1 the one to kill, no hospital load was seen on it and no worker was killed mid-load
        (2026-12-05). One command at a time all the same: two restarts at once could each start the same process."""
        running: tuple[str, subprocess.Popen] | None = None
        try:
            for name, command, moment in self.PLAN:
                found = self._moment(moment)
                if found is None:
                    return
                command = tuple(part.format(found=found) for part in command)
                if "--crash" in command:  # killed from here, at once: the command's own start-up takes seconds
                    os.killpg(int((self.deployment.layout().run / f"{command[1]}.pid").read_text()), signal.SIGKILL)
                self._finish(running)
                running = (name, self.deployment.start("cluster", *command))
        finally:
            self._finish(running)

    def _moment(self, moment: str) -> object:
        """What the moment's query first finds; None when the load ended first."""
        while not self.stop.is_set():
            try:
                rows = self.deployment.metadata(moment)
            except Exception:  # the metadata database is restarting
                rows = []
            if rows and rows[0][0]:
                return rows[0][0]
            time.sleep(0.5)
        return None

    def _finish(self, running: tuple[str, subprocess.Popen] | None) -> None:
        if running is None:
            return
        name, proc = running
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.done[name] = "failed: the command did not end in 300 s"
            return
        self.done[name] = "done" if proc.returncode == 0 else f"failed: {stderr[-500:]}"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    # Not under pytest's own temporary folder (mode 700): the PostgreSQL server runs as the `postgres` user, who
    # must be able to reach its data folder.
    home = Path(tempfile.mkdtemp(prefix="pophealth-cluster-"))
    home.chmod(0o711)
    source = home / "landing"  # Mid and South Essex's world, as the demo's: three councils
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pophealth.cli",
            "synth",
            "--population",
            str(POPULATION),
            "--seed",
            str(SEED),
            "--out",
            str(source),
            "--councils",
            COUNCILS,
        ],
        env=isolated_env(home),
        check=True,
        capture_output=True,
        timeout=900,
    )
    # The scheduled runs look for files every 15 s here (a deployment: every minute, infra/deployment.yml).
    env = {**isolated_env(home), "POPHEALTH_CLUSTER_PORT_OFFSET": PORT_OFFSET, "POPHEALTH_POKE_INTERVAL_SECONDS": "15"}
    deployment = Deployment(home, source, env, up=None)
    deployment.up = deployment.pophealth("cluster", "up", "--landing", str(home / "incoming"), timeout=900)
    try:
        assert deployment.up.returncode == 0, deployment.up.stdout[-3000:] + deployment.up.stderr[-3000:]
        deployment.faults = Faults(deployment)
        if FAULTS:
            deployment.faults.start()
        deployment.load = deployment.pophealth("cluster", "load", "--from", str(source))
        print(
            f"\n{POPULATION} people through the cluster{' with the faults' if FAULTS else ''}:\n"
            + deployment.load.stdout[-3000:]
        )
        deployment.faults.stop.set()
        if FAULTS:
            deployment.faults.join(timeout=330)  # the last fault's command, if it still runs
        if deployment.load.returncode != 0:
            # What failed, while the metadata can still be asked; the state (logs) is kept to read afterwards.
            deployment.failed_tasks = deployment.metadata(
                """SELECT dag_id, task_id, state, try_number, hostname FROM task_instance
                   WHERE state IN ('failed', 'upstream_failed') ORDER BY dag_id, task_id"""
            )
        yield deployment
    finally:
        deployment.pophealth("cluster", "down", timeout=300)
        if deployment.load is not None and deployment.load.returncode == 0:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"The cluster's state and logs are kept in {home} (synthetic data only).")


def test_the_scheduler_loads_a_delivery_on_its_own_and_the_marts_are_published_once(deployed):
    assert deployed.load.returncode == 0, (
        deployed.load.stdout[-4000:]
        + deployed.load.stderr[-3000:]
        + f"\nfailed tasks: {deployed.failed_tasks}"
        + f"\nstate and logs kept in {deployed.home}"
    )
    # Nothing was triggered by hand: every file was loaded by a scheduled run that was waiting for files, in the
    # contract's load order (the opt-out list published before any personal feed staged a row; see below).
    loaded_by = {
        feed: kinds
        for feed, kinds in deployed.metadata(
            """SELECT substr(dag_id, 8), array_agg(DISTINCT run_type::text) FROM dag_run
           WHERE dag_id LIKE 'ingest_%%' AND run_id IN (SELECT DISTINCT run_id FROM task_instance
                                                        WHERE task_id = 'load' AND state = 'success')
           GROUP BY dag_id"""
        )
    }
    assert loaded_by == dict.fromkeys(
        ("ref_postcode_lookup", "ref_population", "optouts", "gp_register", "apc", "cld"), ["scheduled"]
    )
    # The order is the warehouse's own record: a personal feed's run waits until the audit has no earlier feed's
    # file left to load (orchestration.wait_for_files), not for the opt-out run's last task, the asset event, which
    # may end a moment after a personal load has started (it did once, by 0.8 s).
    ((optouts_published, first_personal_stage),) = deployed.query(
        """SELECT (SELECT max(published_at) FROM audit.load WHERE feed = 'optouts'),
                  (SELECT min(started_at) FROM audit.load WHERE feed IN ('gp_register', 'apc', 'cld'))"""
    )
    assert optouts_published is not None and optouts_published <= first_personal_stage
    # Only the assets started build_marts; every build succeeded; the marts were published once, with the
    # newest load, after the last file was published (a build the later asset events started was skipped).
    marts_runs = deployed.metadata("SELECT run_type, state FROM dag_run WHERE dag_id = 'build_marts'")
    assert set(marts_runs) == {("asset_triggered", "success")}, marts_runs
    publications = deployed.query("SELECT newest_load_id, published_at FROM audit.marts_publication")
    assert len(publications) == 1, publications
    ((newest, last_publish),) = deployed.query(
        "SELECT max(load_id), max(published_at) FROM audit.load WHERE published_at IS NOT NULL"
    )
    assert publications[0][0] == newest and publications[0][1] > last_publish
    # Every task ran on one of the two Celery workers (the embedded default runs them in one process); an
    # EmptyOperator (Cosmos's after the dbt build, with POPHEALTH_DBT_TASKS=node) the scheduler marks done itself.
    hosts = deployed.metadata(
        "SELECT DISTINCT hostname FROM task_instance WHERE state = 'success' AND operator <> 'EmptyOperator'"
    )
    assert {h for (h,) in hosts} == {"worker1", "worker2"}


def test_every_fault_happened_mid_load_and_the_killed_workers_task_ran_again(deployed):
    if not FAULTS:
        pytest.skip("the faults were not injected (POPHEALTH_CLUSTER_TEST_FAULTS=0)")
    assert deployed.faults.done == dict.fromkeys((name for name, _, _ in Faults.PLAN), "done")
    # The load the killed worker was running was failed for want of a heartbeat and retried, and passed, taking
    # up each file where the killed try left it: every hospital file published once, none left staged.
    retried = deployed.metadata("""SELECT count(*) FROM task_instance WHERE dag_id = 'ingest_apc'
                                   AND task_id = 'load' AND try_number > 1 AND state = 'success'""")
    assert retried[0][0] >= 1
    published = deployed.query("SELECT file_name FROM audit.load WHERE feed = 'apc' AND status = 'published'")
    assert sorted(f for (f,) in published) == sorted(p.name for p in deployed.source.glob("apc_*.csv"))
    assert deployed.query("SELECT count(*) FROM audit.load WHERE status = 'validated'") == [(0,)]


def test_one_feeds_files_are_loaded_in_several_tasks_that_the_workers_share(deployed):
    # The hospital files are loaded in groups of a dozen, one task each, queued for whichever worker is free.
    # Which worker ran which group is not fixed: the fault test kills worker1 during one, and its retry (and the
    # groups after it) may all go to worker2, so the two need not overlap in time (they did in most runs). That
    # every task ran on one of the two workers, and both worked, is the first test's.
    loads = deployed.metadata(
        """SELECT hostname FROM task_instance
           WHERE dag_id = 'ingest_apc' AND task_id = 'load' AND state = 'success'"""
    )
    assert len(loads) >= 2
    assert {h for (h,) in loads} <= {"worker1", "worker2"}


def test_marts_person_equals_the_answer_key(deployed):
    import csv

    with (deployed.source / "answer_key" / "people.csv").open(newline="") as handle:
        expected = {expected_person_id(r["identity"]): expected_person_row(r) for r in csv.DictReader(handle)}
    actual = {
        row[0]: tuple(_normal(v) for v in row)
        for row in deployed.query(f"SELECT {', '.join(PERSON_COLUMNS)} FROM marts.person")
    }
    assert set(actual) == set(expected)
    wrong = [p for p in expected if expected[p] != actual[p]]
    assert not wrong, f"{len(wrong)} people differ, e.g. expected {expected[wrong[0]]} got {actual[wrong[0]]}"


def test_the_audit_accounts_for_every_row_once(deployed):
    import csv

    with (deployed.source / "answer_key" / "files.csv").open(newline="") as handle:
        files = list(csv.DictReader(handle))
    audit = deployed.query("""SELECT file_name, rows_read, rows_loaded, rows_quarantined, rows_opted_out
                              FROM audit.load WHERE status = 'published'""")
    assert len(audit) == len({row[0] for row in audit}), "a file was published twice"
    by_file = {row[0]: row[1:] for row in audit}
    for f in files:
        assert by_file[f["file_name"]] == (
            int(f["rows_read"]),
            int(f["rows_loaded"]),
            int(f["rows_quarantined"]),
            int(f["rows_opted_out"]),
        ), f["file_name"]


def test_nothing_identifiable_or_secret_is_in_the_clusters_logs(deployed):
    # Airflow's task logs, every process's own log, the OpenLineage events: no NHS number, postcode, date of
    # birth or key, and no password of the cluster's own.
    identifiable = identifiable_values(deployed.source)
    lay = deployed.layout()
    # every password and key file of the cluster (named as compose's secrets: no suffix, or .key)
    secrets = [
        p.read_text().strip().encode() for p in lay.secrets.iterdir() if p.suffix in ("", ".key") and p.name != "pgpass"
    ]
    keys = [
        TEST_KEY.encode(),
        TEST_VAULT_PUBLIC_KEY.encode(),
        TEST_VAULT_PRIVATE_KEY.encode(),
        *(k.encode() for k in PURPOSE_KEYS_ENV.values()),
    ]
    files = files_at_rest(lay.logs, lay.home)
    assert any("dag_id=ingest_apc" in str(p) for p, _ in files), "no task log was found to scan"
    for path, data in files:
        found = identifiable.found_in(data) + ["a key or password" for s in secrets + keys if s in data]
        assert not found, f"{path} holds {', '.join(found)} in clear"


def test_down_stops_every_process_and_server(deployed):
    # The last test of the module: takes the cluster down itself, then nothing of it may still run.
    from pophealth.operate import cluster

    down = deployed.pophealth("cluster", "down", timeout=300)
    assert down.returncode == 0, down.stderr
    lay = deployed.layout()
    assert not any(cluster.status(lay).values()), cluster.status(lay)
    assert not cluster.redis_ping(lay)
    again = deployed.pophealth("cluster", "down", timeout=300)  # idempotent: nothing to stop, no error
    assert again.returncode == 0 and "stopped" not in again.stdout
