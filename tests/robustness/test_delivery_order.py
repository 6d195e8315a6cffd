"""A delivery of several feeds at once, on the scheduler's own (issue 23): a scheduled ingest run waits while a feed
before its own in the contract's load order still has files to load; a build of the marts the assets start waits
until nothing is left to load, and is skipped when the marts already hold every published load, so one
delivery is published once. On a real PostgreSQL, with the package's own functions (the DAGs' tasks call them;
tests/integration/test_cluster.py runs the same through the scheduler and two Celery workers)."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.robustness.spec import with_values
from tests.robustness.test_bad_inputs import deliver

pytestmark = pytest.mark.integration


@pytest.fixture
def delivery(warehouse, monkeypatch, request) -> Path:
    """An empty landing folder of the test's own, which the tasks read."""
    folder = warehouse.home / "delivery" / request.node.name
    folder.mkdir(parents=True)
    monkeypatch.setenv("POPHEALTH_LANDING_DIR", str(folder))
    return folder


def names(paths: list[str]) -> list[str]:
    return [Path(p).name for p in paths]


def test_a_file_is_awaited_until_it_is_loaded_or_refused(warehouse, delivery):
    from pophealth.ingest.load import awaiting_extracts

    register = delivery / "gp_register_20251031.csv"
    shutil.copy(warehouse.landing / "gp_register_20250930.csv", register)
    broken = delivery / "apc_RAJ_20270228.csv"  # an episode ending before it starts: its gate refuses it
    broken.write_bytes(with_values(warehouse.good, 1, epistart="2027-02-20", epiend="2027-02-01"))
    assert names(awaiting_extracts(delivery, ["gp_register", "apc"])) == [register.name, broken.name]
    assert names(awaiting_extracts(delivery, ["optouts"])) == []  # the list in force is loaded already

    assert deliver(register, "order").verdict == "loaded"
    assert deliver(broken, "order").verdict == "gate_failed"
    # Loaded, or refused: a refused file waits for a corrected one, which is a new file, and is awaited.
    assert awaiting_extracts(delivery, ["gp_register", "apc"]) == []
    broken.write_bytes(with_values(warehouse.good, 1))
    assert names(awaiting_extracts(delivery, ["apc"])) == [broken.name]
    assert deliver(broken, "order").verdict == "loaded"
    assert awaiting_extracts(delivery, ["apc"]) == []


def test_a_scheduled_run_waits_for_the_feeds_before_its_own_and_a_run_by_hand_does_not(warehouse, delivery):
    from pophealth.operate.orchestration import wait_for_files

    register = delivery / "gp_register_20251130.csv"
    shutil.copy(warehouse.landing / "gp_register_20250930.csv", register)
    hospital = delivery / "apc_RAJ_20270331.csv"
    hospital.write_bytes(with_values(warehouse.good, 1))

    waiting = wait_for_files("apc", "scheduled")
    assert not waiting.is_done  # the register comes first
    by_hand = wait_for_files("apc", "manual")
    assert by_hand.is_done and [names(group) for group in by_hand.xcom_value] == [[hospital.name]]  # one load task
    assert wait_for_files("gp_register", "scheduled").is_done  # nothing before the register is awaited

    assert deliver(register, "order").verdict == "loaded"
    ready = wait_for_files("apc", "scheduled")
    assert ready.is_done and [names(group) for group in ready.xcom_value] == [[hospital.name]]
    assert deliver(hospital, "order").verdict == "loaded"
    nothing = wait_for_files("apc", "scheduled")
    assert not nothing.is_done  # a scheduled run keeps looking for its own files


def test_a_build_the_assets_start_waits_for_what_is_still_to_load_within_a_bound(warehouse, delivery, caplog):
    from pophealth.operate.orchestration import LOADS_WAIT, wait_for_loads

    hospital = delivery / "apc_RAJ_20270430.csv"
    hospital.write_bytes(with_values(warehouse.good, 2))
    now = datetime.now(UTC)
    assert wait_for_loads("asset_triggered", now) is False
    assert wait_for_loads("manual", now) is True  # a build started by hand builds at once
    with caplog.at_level(logging.WARNING, logger="pophealth"):
        assert wait_for_loads("asset_triggered", now - LOADS_WAIT - timedelta(seconds=1)) is True
    assert hospital.name in caplog.text  # it says what it did not wait for

    assert deliver(hospital, "order").verdict == "loaded"
    assert wait_for_loads("asset_triggered", now) is True


def test_a_build_the_assets_start_is_skipped_when_the_marts_hold_every_published_load(warehouse, delivery):
    from airflow.sdk.exceptions import AirflowSkipException

    from pophealth.operate.orchestration import check_loads
    from pophealth.warehouse import db

    newest = check_loads("asset_triggered")
    assert newest == warehouse.value("SELECT max(load_id) FROM audit.load WHERE published_at IS NOT NULL")
    # The marts published with that load (publish_marts records it so, in the transaction of the swap):
    with db.connect() as conn:
        conn.execute("INSERT INTO audit.marts_publication (run_id, newest_load_id) VALUES ('built', %s)", (newest,))
    with pytest.raises(AirflowSkipException, match=f"nothing new to build.*run built.*{newest}"):
        check_loads("asset_triggered")
    assert check_loads("manual") == newest  # a build by hand always builds

    hospital = delivery / "apc_RAJ_20270531.csv"
    hospital.write_bytes(with_values(warehouse.good, 3))
    assert deliver(hospital, "order").verdict == "loaded"
    assert check_loads("asset_triggered") > newest  # a new load: built
