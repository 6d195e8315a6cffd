"""A generated world, run end to end through the real DAGs on a real embedded PostgreSQL, shared by the tests.

The world is small (2,000 people) so that a whole run takes a quarter of an hour on two cores;
the larger scales are the benchmark's business, not CI's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = "5a" * 32
#: The vault's key pair: the pipeline's processes get the public key only; the private key is given to the
#: re-identification and rotation calls that need it (`with_vault_private_key`).
TEST_VAULT_PRIVATE_KEY = "c3" * 32
TEST_VAULT_PUBLIC_KEY = (
    __import__("pophealth.identity.keys", fromlist=["VaultPrivateKey"])
    .VaultPrivateKey(bytes.fromhex(TEST_VAULT_PRIVATE_KEY))
    .public_hex()
)
TEST_SECONDARY_USE_KEY = "e7" * 32
TEST_DIRECT_CARE_KEY = "d4" * 32
#: The two purpose keys (pophealth/identity/purposes.py) every test process that builds the marts needs.
PURPOSE_KEYS_ENV = {
    "POPHEALTH_SECONDARY_USE_KEY": TEST_SECONDARY_USE_KEY,
    "POPHEALTH_DIRECT_CARE_KEY": TEST_DIRECT_CARE_KEY,
}
POPULATION = 2000  # large enough that, with the seed below, every metric and cohort is non-empty (800 was not)
SEED = 20241


@dataclass
class World:
    home: Path
    landing: Path
    key_dir: Path
    env: dict[str, str]
    known_url: str | None = field(default=None, init=False, repr=False)

    @property
    def answer_key(self) -> Path:
        return self.landing / "answer_key"

    def answers(self, name: str) -> list[dict[str, str]]:
        with (self.answer_key / name).open(newline="") as handle:
            return list(csv.DictReader(handle))

    def world(self) -> dict:
        return json.loads((self.answer_key / "world.json").read_text())

    # The timeout only catches a hang: the whole run of the DAGs on 2,000 people, beside the test command's other
    # processes on a shared 2-core machine, once took more than 25 minutes (issue 19), so an hour.
    def pophealth(
        self, *args: str, check: bool = False, timeout: int = 3600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pophealth {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def query(self, sql: str, params: tuple = (), database: str = "pophealth") -> list[tuple]:
        import psycopg

        url = self.url().replace("/pophealth?", f"/{database}?")
        with psycopg.connect(url) as conn:
            return conn.execute(sql, params).fetchall()

    def url(self) -> str:
        self.known_url = answering_url(
            self.known_url, lambda: self.pophealth("db", "url", check=True).stdout.strip().splitlines()[-1]
        )
        return self.known_url


def answering_url(known: str | None, ask: Callable[[], str]) -> str:
    """The embedded warehouse's URL: `known` while its server answers there, else `ask()` (`pophealth db url`,
    which starts the server when a test has stopped it). The URL of one home never changes (a unix socket under
    it), and a `pophealth` process costs a third of a second of CPU: asked at every query, as tests poll the
    warehouse, it took 8% of the test command's CPU (issue 19)."""
    import psycopg

    if known is not None:
        try:
            psycopg.connect(known, connect_timeout=5).close()
            return known
        except psycopg.OperationalError:
            pass
    return ask()


# Builds the marts from a landing folder without Airflow: every extract staged and published in load order,
# then `dbt build`. For the hand-built cases, whose rules are the marts' and not the scheduler's.
RUN = textwrap.dedent(
    """
    from pathlib import Path
    import sys
    from pophealth.contract.feeds import LOAD_ORDER
    from pophealth.ingest.landing import identify
    from pophealth.ingest.load import publish_load, stage_extract
    from pophealth.warehouse.schema import prepare_warehouse
    from pophealth.marts.build import dbt_build
    prepare_warehouse()
    landing = Path(sys.argv[1])
    for feed in LOAD_ORDER:
        for extract in sorted(p for p in landing.iterdir() if p.suffix == ".csv"):
            found = identify(extract)
            if found is not None and found.feed == feed:
                outcome = stage_extract(extract)
                if outcome.status == "validated":
                    publish_load(outcome.load_id)
    proc = dbt_build(sys.argv[2:])
    print(proc.stdout[-3000:])
    sys.exit(proc.returncode)
    """
)

#: `dbt build`'s arguments for a world whose module tests something other than what the marts hold (who may read
#: what, the vault, the keys, the purposes, the IG report, the two roads of loading): every seed and model built,
#: with the published marts' contracts, but not dbt's 209 data tests, about 4 s of a build's 11 s of CPU (issue 19).
#: The worlds whose marts are checked run them all: the end-to-end world, every_month_world, the councils', the
#: rules', the faults', the delivery patterns' and the agreements' (whose purposes rule is a data test).
WITHOUT_DATA_TESTS = ("--exclude", "resource_type:test")


@dataclass
class BuiltWarehouse:
    """A small warehouse with its marts built (marts_built_from), for tests that work with it as its users do."""

    url: str
    landing: Path
    env: dict[str, str]

    def pophealth(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args], env=self.env, capture_output=True, text=True, timeout=300
        )

    def as_role(self, role: str, autocommit: bool = True):
        import psycopg

        from pophealth.warehouse.db import parse_url

        return psycopg.connect(parse_url(self.url).with_user(role).url(), autocommit=autocommit)

    def as_owner(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        with self.as_owner() as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


def published_id(purpose: str, transit: str) -> str:
    """The id a purpose publishes for a transit pseudonym under the test keys (identity/purposes.py), worked out
    here for the answer key's people; the platform's own mapping must agree."""
    from pophealth.identity.keys import DirectCareKey, SecondaryUseKey
    from pophealth.identity.purposes import PurposeKeyring

    ring = PurposeKeyring(
        {
            "secondary_use": SecondaryUseKey.from_hex(TEST_SECONDARY_USE_KEY, "test"),
            "direct_care": DirectCareKey.from_hex(TEST_DIRECT_CARE_KEY, "test"),
        }
    )
    return ring.id_for(purpose, transit)


STAGING_PROCESSES = "POPHEALTH_STAGING_PROCESSES"
#: As the test command was started: read at import, before any fixture takes POPHEALTH_ names out of the environment.
STAGING_PROCESSES_GIVEN = os.environ.get(STAGING_PROCESSES)


def isolated_env(home: Path, key: str = TEST_KEY) -> dict[str, str]:
    """The environment of a pophealth process whose state lives under `home`, with the test keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POPHEALTH_", "AIRFLOW"))}
    if STAGING_PROCESSES_GIVEN is not None:  # how the test command stages large files (dev.sh), not a home's state
        env[STAGING_PROCESSES] = STAGING_PROCESSES_GIVEN
    env.update(
        POPHEALTH_HOME=str(home / "state"),
        POPHEALTH_LINKAGE_KEY=key,
        POPHEALTH_VAULT_PUBLIC_KEY=TEST_VAULT_PUBLIC_KEY,
        PYTHONPATH=str(REPO),
        **PURPOSE_KEYS_ENV,
    )
    return env


def with_vault_private_key(env: dict[str, str]) -> dict[str, str]:
    """The environment of `pophealth reidentify` or a rotation: the pipeline's, plus the vault's private key."""
    return {**env, "POPHEALTH_VAULT_PRIVATE_KEY": TEST_VAULT_PRIVATE_KEY}


def synth_world(home: Path, population: int, seed: int) -> Path:
    """Generate a synthetic landing folder under `home`; returns it."""
    landing = home / "landing"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pophealth.cli",
            "synth",
            "--population",
            str(population),
            "--seed",
            str(seed),
            "--out",
            str(landing),
        ],
        env=isolated_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return landing


def break_one_hospital_file(landing: Path) -> Path:
    """A resubmission of the last hospital file in which one episode starts before its admission (an error rule)."""
    apc = sorted(landing.glob("apc_*.csv"))[-1]
    lines = apc.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")
    cells = lines[1].rstrip("\r\n").split(",")
    cells[header.index("epistart")] = "2000-01-01"
    lines[1] = ",".join(cells) + "\n"
    apc.write_text("".join(lines))
    return apc


@contextmanager
def marts_built_from(
    landing: Path, home: Path, key: str, timeout: int, dbt_args: tuple[str, ...] = ()
) -> Iterator[str]:
    """Load `landing` into an embedded warehouse under `home` and build the marts (`dbt build` with `dbt_args`);
    yields its URL, then stops it."""
    env = isolated_env(home, key)
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(landing), *dbt_args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    url = (
        subprocess.run(
            [sys.executable, "-m", "pophealth.cli", "db", "url"], env=env, capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    try:
        yield url
    finally:
        subprocess.run([sys.executable, "-m", "pophealth.cli", "db", "stop"], env=env, capture_output=True)


@dataclass
class SharedWorld:
    """A world's warehouse that several modules share (`small_world`, `every_month_world`): where it lives, its
    landing folder, its URL."""

    home: Path
    landing: Path
    url: str


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Iterator[SharedWorld]:
    """A small world (300 people, seed 11) loaded and its marts built without Airflow, for the modules that work
    with a built warehouse as its users do (test_access, test_dbt_docs, test_status). Each built this very
    warehouse for itself; now it is built once (46 s at load 6), and they run one after the other on one process
    (tests/conftest.py), in the files' order. What one adds (audit rows, a logged re-identification) none of the
    others counts; what one changes for a test it puts back (a refused load delivered again, refused candidates
    dropped, the register set aside for the documentation moved back), but for test_status's last test, which
    rotates the linkage key: a module that comes after it sees the new key."""
    home = tmp_path_factory.mktemp("small-world")
    landing = synth_world(home, population=300, seed=11)
    with marts_built_from(landing, home, TEST_KEY, timeout=900, dbt_args=WITHOUT_DATA_TESTS) as url:
        yield SharedWorld(home, landing, url)


@pytest.fixture(scope="session")
def every_month_world(tmp_path_factory) -> Iterator[SharedWorld]:
    """1,200 people (seed 11): the smallest world of this seed in which every trust discharges someone every month,
    so every period is computed (a smaller world leaves months out, rightly), September's readmissions are
    provisional and the marts gate's rules hold. Loaded and built without Airflow, for test_marts_gate and then
    test_rerun (the files' order, one process: tests/conftest.py). What the rerun's tests show (a rerun replaces one
    period and a second changes nothing) does not depend on the world's size, only on the marts gate passing, so
    they no longer build a world of 2,000 for themselves. test_marts_gate leaves the published marts as
    they were after each broken candidate, and publishes good candidates only."""
    home = tmp_path_factory.mktemp("every-month")
    landing = synth_world(home, population=1200, seed=11)
    with marts_built_from(landing, home, TEST_KEY, timeout=900) as url:
        yield SharedWorld(home, landing, url)


#: The end-to-end world is Mid and South Essex: three councils, Thurrock's and Southend's own locality codes.
COUNCILS = "E10000012,E06000033,E06000034"


def make_world(tmp_path_factory, name: str) -> World:
    home = tmp_path_factory.mktemp(name)
    world = World(home=home, landing=home / "landing", key_dir=home / "keys", env=isolated_env(home))
    world.pophealth(
        "synth",
        "--population",
        str(POPULATION),
        "--seed",
        str(SEED),
        "--out",
        str(world.landing),
        "--councils",
        COUNCILS,
        check=True,
    )
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    world = make_world(tmp_path_factory, "e2e")
    world.first_run = world.pophealth("run", "--landing", str(world.landing))
    yield world
    world.pophealth("db", "stop")
