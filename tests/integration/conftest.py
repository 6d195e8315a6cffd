"""A generated world, run end to end through the real DAGs on a real embedded PostgreSQL, shared by the tests.

The world is small (a few hundred people) so that a whole run takes a couple of minutes on two cores;
the larger scales are the benchmark's business, not CI's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = "5a" * 32
POPULATION = 2000  # large enough that, with the seed below, every metric and cohort is non-empty (800 was not)
SEED = 20241


@dataclass
class World:
    home: Path
    landing: Path
    key_dir: Path
    env: dict[str, str]

    @property
    def answer_key(self) -> Path:
        return self.landing / "answer_key"

    def answers(self, name: str) -> list[dict[str, str]]:
        with (self.answer_key / name).open(newline="") as handle:
            return list(csv.DictReader(handle))

    def world(self) -> dict:
        return json.loads((self.answer_key / "world.json").read_text())

    def pophealth(self, *args: str, check: bool = False, timeout: int = 1500) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "pophealth.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"pophealth {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def query(self, sql: str, params: tuple = (), database: str = "pophealth") -> list[tuple]:
        import psycopg

        url = self.url().replace("/pophealth?", f"/{database}?")
        with psycopg.connect(url) as conn:
            return conn.execute(sql, params).fetchall()

    def url(self) -> str:
        return self.pophealth("db", "url", check=True).stdout.strip().splitlines()[-1]


def make_world(tmp_path_factory, name: str) -> World:
    home = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POPHEALTH_", "AIRFLOW"))}
    env.update({"POPHEALTH_HOME": str(home / "state"), "POPHEALTH_LINKAGE_KEY": TEST_KEY,
                "PYTHONPATH": str(REPO)})
    world = World(home=home, landing=home / "landing", key_dir=home / "keys", env=env)
    world.pophealth("synth", "--population", str(POPULATION), "--seed", str(SEED), "--out", str(world.landing),
                    check=True)
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    world = make_world(tmp_path_factory, "e2e")
    world.first_run = world.pophealth("run", "--landing", str(world.landing))
    yield world
    world.pophealth("db", "stop")
