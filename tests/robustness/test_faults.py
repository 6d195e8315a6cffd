"""Faults on the real server, on purpose (spec.FAULTS): the PostgreSQL server stopped in the middle of a load,
the loading process killed, the same DAG run twice, two loads of one source at once, a file still being
written. After each, a normal run completes and `marts.person` equals the generator's answer key.

The loads run in child processes (as Airflow's tasks do); every wait and retry here is bounded in count and
time, and the server is the embedded one on a unix socket (no network at all).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pophealth.ingest import load
from tests.integration.conftest import TEST_KEY, answering_url, isolated_env, synth_world
from tests.integration.test_pipeline_end_to_end import PERSON_COLUMNS, _normal, expected_person_id, expected_person_row
from tests.robustness.conftest import good_apc
from tests.robustness.spec import FAULTS, write_million

pytestmark = pytest.mark.integration

POPULATION = 300
SEED = 8
BIG_ROWS = 100_000  # staged in about 8 s on a quiet machine; each fault comes 1-3 s after the load starts
#: The period the fault loads use: a real one of the world, so the normal run's real file replaces it.
FAULT_FILE = "apc_RAJ_20250930.csv"

# Stage and publish the files named (what the ingest DAG's stage, gate and publish tasks call, less the gate,
# whose rules are not what these faults are about). The warehouse is prepared already, as by the DAG's discover.
LOAD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pophealth.ingest.load import publish_load, stage_extract
    for name in sys.argv[1:]:
        outcome = stage_extract(Path(name), "faults")
        if outcome.status == "validated":
            publish_load(outcome.load_id)
        print("LOAD", outcome.load_id, outcome.status, outcome.rows_loaded, flush=True)
""")

# A normal run without Airflow: every complete, new or changed file in load order, then dbt build.
NORMAL_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pophealth.contract.feeds import LOAD_ORDER
    from pophealth.ingest.load import pending_extracts, publish_load, stage_extract
    from pophealth.warehouse.schema import prepare_warehouse
    from pophealth.marts.build import dbt_build
    prepare_warehouse()
    landing = Path(sys.argv[1])
    skip = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set()
    for feed in LOAD_ORDER:
        if feed in skip:
            continue
        for name in pending_extracts(landing, feed):
            outcome = stage_extract(Path(name), "normal")
            if outcome.status == "validated":
                publish_load(outcome.load_id)
    if "dbt" not in skip:
        proc = dbt_build()
        print(proc.stdout[-3000:])
        sys.exit(proc.returncode)
""")

PENDING = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pophealth.ingest.load import pending_extracts
    for name in pending_extracts(Path(sys.argv[1]), "apc"):
        print("PENDING", Path(name).name, flush=True)
""")


@dataclass
class FaultWorld:
    home: Path
    landing: Path
    side: Path  # a folder beside the landing area for the fault files
    env: dict[str, str]
    known_url: str | None = field(default=None, init=False, repr=False)

    def python(
        self, script: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-c", script, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def spawn(self, script: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def pophealth(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def url(self) -> str:
        self.known_url = answering_url(self.known_url, self._ask_url)
        return self.known_url

    def _ask_url(self) -> str:
        proc = self.pophealth("db", "url", timeout=120)  # starts the embedded server if it is not running
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url()) as conn:
            return conn.execute(text, params).fetchall()

    def value(self, text: str, params: tuple = ()):
        return self.query(text, params)[0][0]

    def fault_file(self, rows: int) -> Path:
        """A big version of a real period's file (the good rows repeated with fresh keys), in the side folder."""
        path = self.side / FAULT_FILE
        write_million(good_apc(self.landing), path, rows=rows, bad_row=0)
        return path

    def normal_run(self) -> None:
        proc = self.python(NORMAL_RUN, str(self.landing), check=False, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert_marts_equal_the_answer_key(self)


def assert_marts_equal_the_answer_key(world: FaultWorld) -> None:
    import csv

    with (world.landing / "answer_key" / "people.csv").open(newline="") as handle:
        expected = {}
        for row in csv.DictReader(handle):
            expected[expected_person_id(row["identity"])] = expected_person_row(row)
    actual = {
        row[0]: tuple(_normal(v) for v in row)
        for row in world.query(f"SELECT {', '.join(PERSON_COLUMNS)} FROM marts.person")
    }
    assert set(actual) == set(expected), (
        f"{len(set(expected) - set(actual))} missing, {len(set(actual) - set(expected))} unexpected"
    )
    wrong = [p for p in expected if expected[p] != actual[p]]
    assert not wrong, f"{len(wrong)} people differ from the answer key"


def wait_for(condition: Callable[[], bool], seconds: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


def loading_under_way(world: FaultWorld) -> Callable[[], bool]:
    """True once the fault file's load is staging rows (its audit row says loading)."""

    def check() -> bool:
        try:
            return bool(
                world.query(
                    "SELECT 1 FROM audit.load WHERE file_name = %s AND status = 'loading' "
                    "AND started_at < now() - interval '1 second'",
                    (FAULT_FILE,),
                )
            )
        except psycopg.Error:
            return False

    return check


def batch_tables(world: FaultWorld) -> list[str]:
    return [r[0] for r in world.query("SELECT tablename FROM pg_tables WHERE schemaname = 'load_batch'")]


def period_rows(world: FaultWorld) -> tuple[int, list[tuple]]:
    """The fault period's rows in raw.apc_episode, and its published loads (load_id, rows_loaded)."""
    held = world.value(
        "SELECT count(*) FROM raw.apc_episode r JOIN audit.load l USING (load_id) "
        "WHERE l.provider = 'RAJ' AND l.period_end = '2025-09-30'"
    )
    published = world.query(
        "SELECT load_id, rows_loaded FROM audit.load WHERE provider = 'RAJ' "
        "AND period_end = '2025-09-30' AND status = 'published'"
    )
    return held, published


def cut_off(world: FaultWorld, load_ids: list[int]) -> list[tuple]:
    """What the audit says of loads that were cut off, once a later load has looked."""
    return world.query("SELECT status, message FROM audit.load WHERE load_id = ANY(%s)", (load_ids,))


def retried(world: FaultWorld, path: Path, attempts: int = 3, pause: float = 5.0) -> subprocess.CompletedProcess:
    """The task's retry: the same load again, at most `attempts` times, `pause` seconds apart."""
    for _attempt in range(attempts):
        proc = world.python(LOAD, str(path), check=False)
        if proc.returncode == 0:
            return proc
        time.sleep(pause)
    raise AssertionError(f"the load did not complete in {attempts} attempts:\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults")
    landing = synth_world(home, POPULATION, SEED)
    side = home / "side"
    side.mkdir()
    shutil.copy(landing / "ref_postcode_lookup.csv", side)
    world = FaultWorld(home, landing, side, isolated_env(home, TEST_KEY))
    # Everything but the hospital feed, which the DAG test loads through Airflow.
    world.python(NORMAL_RUN, str(landing), "apc,dbt", timeout=600)
    yield world
    world.pophealth("db", "stop", timeout=120)


def test_every_fault_of_the_report_has_its_test():
    assert {f"test_{f.id}" for f in FAULTS} <= set(globals())


def test_same_dag_run_twice(world):
    first = world.pophealth("dag", "ingest_apc", "--landing", str(world.landing))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    files = len(list(world.landing.glob("apc_*.csv")))
    after_first = world.query("SELECT count(*), count(DISTINCT load_id) FROM raw.apc_episode")
    audit_first = world.value("SELECT count(*) FROM audit.load WHERE feed = 'apc'")
    assert after_first[0][1] == files
    second = world.pophealth("dag", "ingest_apc", "--landing", str(world.landing))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert world.query("SELECT count(*), count(DISTINCT load_id) FROM raw.apc_episode") == after_first
    assert world.value("SELECT count(*) FROM audit.load WHERE feed = 'apc'") == audit_first
    world.normal_run()


def test_server_stops_mid_load(world):
    path = world.fault_file(BIG_ROWS)
    child = world.spawn(LOAD, str(path))
    try:
        wait_for(loading_under_way(world), 120, "the load to be under way")
        stopped = world.pophealth("db", "stop", timeout=120)
        assert "stopped" in stopped.stdout
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode != 0, "the load cannot have completed without its server"
    print(f"\nthe interrupted load failed with: {err.strip().splitlines()[-1]}")
    held, published = period_rows(world)
    load_ids = [
        r[0]
        for r in world.query(
            "SELECT load_id FROM audit.load WHERE file_name = %s AND status = 'loading'", (FAULT_FILE,)
        )
    ]
    assert len(load_ids) == 1
    assert world.value("SELECT count(*) FROM raw.apc_episode WHERE load_id = ANY(%s)", (load_ids,)) == 0
    assert batch_tables(world) == []
    retried(world, path)
    assert cut_off(world, load_ids) == [("interrupted", load.INTERRUPTED)]
    held, published = period_rows(world)
    assert len(published) == 1 and held == published[0][1] > BIG_ROWS * 0.9
    world.normal_run()
    assert period_rows(world)[0] < 100  # the real file replaced the fault load


def test_killed_mid_load(world):
    path = world.fault_file(BIG_ROWS)
    before = period_rows(world)
    child = world.spawn(LOAD, str(path))
    try:
        wait_for(loading_under_way(world), 120, "the load to be under way")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    # The server notices the dead connection and rolls its transaction back: no batch table, nothing stored.
    wait_for(lambda: batch_tables(world) == [], 30, "the killed load's transaction to roll back")
    assert period_rows(world) == before
    load_ids = [
        r[0]
        for r in world.query(
            "SELECT load_id FROM audit.load WHERE file_name = %s AND status = 'loading'", (FAULT_FILE,)
        )
    ]
    assert len(load_ids) == 1
    retried(world, path)
    assert cut_off(world, load_ids) == [("interrupted", load.INTERRUPTED)]
    held, published = period_rows(world)
    assert len(published) == 1 and held == published[0][1] > BIG_ROWS * 0.9
    world.normal_run()


def test_two_loads_at_once(world):
    path = world.fault_file(50_000)
    children = [world.spawn(LOAD, str(path)) for _ in range(2)]
    try:
        outputs = [c.communicate(timeout=600) for c in children]
    finally:
        for c in children:
            c.kill()
    assert [c.returncode for c in children] == [0, 0], [o[1][-2000:] for o in outputs]
    loads = world.query(
        "SELECT load_id, status, rows_read, started_at, finished_at FROM audit.load "
        "WHERE run_id = 'faults' AND file_name = %s ORDER BY load_id DESC LIMIT 2",
        (FAULT_FILE,),
    )
    (a, _, _, a_start, a_end), (b, _, _, b_start, b_end) = loads
    assert a_start < b_end and b_start < a_end, "the two loads did not overlap"
    assert sorted(r[1] for r in loads) == ["duplicate", "published"]
    assert all(r[2] == 50_000 for r in loads)  # both audited, every row read
    held, published = period_rows(world)
    assert len(published) == 1 and held == published[0][1]  # not doubled
    world.normal_run()


def test_file_still_being_written(world):
    # The period's published load is another file (a fault version), so the real one, once complete, is new.
    world.python(LOAD, str(world.fault_file(1_000)))
    real = world.landing / FAULT_FILE
    content = real.read_bytes()
    aside = world.home / "being_written.csv"
    real.replace(aside)
    temporary = [
        world.landing / ".apc_RQW_20250831.csv",
        world.landing / "apc_RQW_20250731.csv.part",
        world.landing / "apc_RQW_20250630.csv.tmp",
    ]
    for path in temporary:
        path.write_bytes(content)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys, time
        data = open(sys.argv[1], "rb").read()
        with open(sys.argv[2], "wb") as out:
            for i in range(0, len(data), 16):
                out.write(data[i:i + 16]); out.flush(); time.sleep(0.15)
    """),
            str(aside),
            str(real),
        ]
    )
    try:
        wait_for(lambda: real.exists() and real.stat().st_size > 0, 30, "the writer to start")
        pending = world.python(PENDING, str(world.landing), env={"POPHEALTH_LANDING_SETTLE_SECONDS": "1"}).stdout
        assert writer.poll() is None, "the writer finished before the look: the file was not mid-write"
        assert FAULT_FILE not in pending
        assert not any(p.name in pending for p in temporary)
        writer.wait(timeout=120)
    finally:
        writer.kill()
        for path in temporary:
            path.unlink(missing_ok=True)
    assert real.read_bytes() == content
    time.sleep(1.5)  # older than the settle interval now
    pending = world.python(PENDING, str(world.landing), env={"POPHEALTH_LANDING_SETTLE_SECONDS": "1"}).stdout
    assert FAULT_FILE in pending
    world.normal_run()


def test_a_load_under_way_is_never_taken_for_an_interrupted_one(world):
    """Only a load whose process is gone becomes `interrupted`: a live one holds its lock until it ends."""
    with psycopg.connect(world.url()) as alive, psycopg.connect(world.url(), autocommit=True) as looker:
        load_id = alive.execute(
            "INSERT INTO audit.load (run_id, feed, file_name, status) VALUES "
            "('faults', 'apc', %s, 'loading') RETURNING load_id",
            (FAULT_FILE,),
        ).fetchone()[0]
        alive.execute("SELECT pg_advisory_lock(hashtext('pophealth load'), %s::int)", (load_id,))
        alive.commit()
        load.mark_interrupted_loads(looker)
        assert cut_off(world, [load_id]) == [("loading", None)]
        alive.close()  # the server ends its session, and so its lock, a moment later
        wait_for(lambda: load.mark_interrupted_loads(looker) == 1, 30, "the closed load's lock to go")
        assert cut_off(world, [load_id]) == [("interrupted", load.INTERRUPTED)]
