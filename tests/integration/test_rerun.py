"""Re-running a past period with one command, idempotently (a failed gate in a real DAG run reaching people is
test_pipeline_end_to_end's, on its failed run).

The marts gate's world (conftest.every_month_world: every period computed, so the marts gate's rules hold), loaded
and built without Airflow; the commands under test then run the real DAGs through Airflow.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import isolated_env

# Its world and its DAG runs take minutes: its group is handed out early (tests/conftest.py).
pytestmark = pytest.mark.long_world


class Small:
    def __init__(self, home: Path, landing: Path, url: str):
        self.home, self.landing, self.url = home, landing, url
        self.env = isolated_env(home)

    def pophealth(self, *args: str, env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def built(every_month_world):
    return Small(every_month_world.home, every_month_world.landing, every_month_world.url)


def _copy_landing(built: Small, tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    shutil.copytree(built.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    return landing


def _drop_last_row(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


def _published(built: Small, file_name: str) -> list[tuple]:
    return built.query(
        "SELECT load_id, file_sha256 FROM audit.load WHERE file_name = %s AND status = 'published'", (file_name,)
    )


def test_a_rerun_of_a_past_period_replaces_it_rebuilds_the_marts_and_a_second_changes_nothing(built, tmp_path):
    landing = _copy_landing(built, tmp_path)
    periods = sorted(landing.glob("apc_RAJ_*.csv"))
    target, other = periods[2], periods[3]  # a past period, and the next one
    # The hospital resubmits the past period with one episode fewer; the next period's file also changed, but
    # the rerun is for the past period only.
    _drop_last_row(target)
    _drop_last_row(other)
    _published_before = _published(built, target.name)[0][0]
    rows_before = built.query("SELECT count(*) FROM raw.apc_episode WHERE load_id = %s", (_published_before,))[0][0]
    builds_before = built.query("SELECT count(*) FROM audit.dbt_result")[0][0]
    other_before = built.query("SELECT load_id, status FROM audit.load WHERE file_name = %s", (other.name,))
    period = re.search(r"_(\d{4})(\d{2})(\d{2})\.csv$", target.name).groups()

    first = built.pophealth(
        "rerun", "--feed", "apc", "--period", "-".join(period), "--provider", "RAJ", "--landing", str(landing)
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    ((load_id, _sha),) = _published(built, target.name)
    assert load_id != _published_before
    assert built.query("SELECT count(*) FROM raw.apc_episode WHERE load_id = %s", (load_id,))[0][0] == rows_before - 1
    # The next period's changed file was not touched: still only its first load.
    assert built.query("SELECT load_id, status FROM audit.load WHERE file_name = %s", (other.name,)) == other_before
    assert "rebuilding the marts" in first.stdout
    assert built.query("SELECT count(*) FROM audit.dbt_result")[0][0] > builds_before

    state = (
        built.query("SELECT count(*), max(load_id) FROM audit.load"),
        built.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p"),
        built.query("SELECT count(*) FROM audit.dbt_result"),
    )
    second = built.pophealth(
        "rerun", "--feed", "apc", "--period", "-".join(period), "--provider", "RAJ", "--landing", str(landing)
    )
    assert second.returncode == 0, second.stdout[-3000:]
    assert "Nothing to do" in second.stdout
    assert (
        built.query("SELECT count(*), max(load_id) FROM audit.load"),
        built.query("SELECT md5(string_agg(p::text, ',' ORDER BY person_id)) FROM marts.person p"),
        built.query("SELECT count(*) FROM audit.dbt_result"),
    ) == state


def test_a_rerun_names_what_is_wrong_with_its_arguments(built):
    no_file = built.pophealth("rerun", "--feed", "apc", "--period", "1999-03-31", "--landing", str(built.landing))
    assert no_file.returncode == 2 and "no apc file for period 1999-03-31" in no_file.stderr
    bad_date = built.pophealth("rerun", "--feed", "apc", "--period", "March", "--landing", str(built.landing))
    assert bad_date.returncode == 2 and "YYYY-MM-DD" in bad_date.stderr
    bad_feed = built.pophealth("rerun", "--feed", "hes", "--period", "2025-03-31", "--landing", str(built.landing))
    assert bad_feed.returncode == 2 and "unknown feed 'hes'" in bad_feed.stderr
