"""The test command's processes (pytest-xdist, `--dist loadgroup`, tests/conftest.py): a world of module or session
scope is built once, on one process, and its tests run there in the file's order; the cluster tests go to one
process, first. Run here on a small suite of the same conftest, as ./dev.sh test runs the real one."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every test writes "<process> <test>" to a file as it starts; every build of a world writes "<process> built ...".
CONFTEST_EXTRA = """

import os

def _record(line):
    with open(os.environ["RECORD"], "a") as handle:
        handle.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'serial')} {line}\\n")

@pytest.fixture(autouse=True)
def _started(request):
    _record(request.node.name)

@pytest.fixture(scope="session")
def world():
    _record("built the session world")
    return []
"""
MODULE_WORLD = """import pytest
from tests.conftest import _record

@pytest.fixture(scope="module")
def warehouse():
    _record("built the module world")
    return []

@pytest.mark.parametrize("n", range(6))
def test_module_world(warehouse, n):
    warehouse.append(n)
    assert warehouse == list(range(n + 1))  # the file's order, on one warehouse
"""
SESSION_WORLD = """import pytest

@pytest.mark.parametrize("n", range(3))
def test_session_world_{name}(world, n):
    world.append("{name}")
"""
CLUSTER = """import pytest
pytestmark = pytest.mark.cluster

@pytest.mark.parametrize("n", range(3))
def test_cluster(n):
    pass
"""
LONG_WORLD = """import pytest
from tests.conftest import _record

@pytest.fixture(scope="module")
def big_file():
    _record("built the long world")
    return []

def test_long_world_first(big_file):
    big_file.append(1)

@pytest.mark.long_world
def test_long_world_second(big_file):
    assert big_file == [1]
"""
ALONE = """import pytest

@pytest.mark.parametrize("n", range(12))
def test_alone(n):
    pass
"""


def run_suite(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str]]]:
    (folder / "tests").mkdir()
    (folder / "infra").mkdir()
    (folder / "tests" / "__init__.py").write_text("")
    (folder / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text() + CONFTEST_EXTRA)
    # no servers: the cluster tests are skipped, but scheduled all the same
    (folder / "infra" / "deployment.yml").write_text(f"cluster:\n  postgres_bin: {folder / 'none'}\n")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n  cluster: the cluster\n  long_world: a long world\n")
    (folder / "tests" / "test_a_alone.py").write_text(ALONE)
    (folder / "tests" / "test_b_module_world.py").write_text(MODULE_WORLD)
    (folder / "tests" / "test_c_session_one.py").write_text(SESSION_WORLD.format(name="one"))
    (folder / "tests" / "test_d_session_two.py").write_text(SESSION_WORLD.format(name="two"))
    (folder / "tests" / "test_e_cluster.py").write_text(CLUSTER)
    (folder / "tests" / "test_f_long_world.py").write_text(LONG_WORLD)
    record = folder / "record.txt"
    run = subprocess.run(
        # Its own basetemp: without one, pytest makes /tmp/pytest-of-<user> private again (mode 700), and the
        # embedded PostgreSQL servers of the suite around it, which run as another user, lose their data folders.
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={folder / 'tmp'}", *args, "tests"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "RECORD": str(record)},
    )
    lines = [tuple(line.split(" ", 1)) for line in record.read_text().splitlines()] if record.exists() else []
    return run, lines


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def test_each_world_is_built_once_on_one_process_and_the_cluster_goes_first(tmp_path):
    run, lines = run_suite(tmp_path, "-n", "3", "--dist", "loadgroup", "--no-loadscope-reorder", "-v")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "26 passed, 3 skipped" in run.stdout, run.stdout[-3000:]
    processes = defaultdict(set)
    order = defaultdict(list)
    for process, what in lines:
        order[process].append(what)
        processes[what.split("[")[0]].add(process)
    # The tests really were spread over several processes ...
    assert len({process for process, _ in lines}) >= 2, lines
    # ... but each world was built once, and all its tests ran beside it.
    assert [what for _, what in lines].count("built the module world") == 1, lines
    assert [what for _, what in lines].count("built the session world") == 1, lines
    assert [what for _, what in lines].count("built the long world") == 1, lines
    assert processes["test_module_world"] == processes["built the module world"], lines
    assert (
        processes["test_session_world_one"] | processes["test_session_world_two"]
        == processes["built the session world"]
    ), lines
    # The cluster tests (skipped here: no servers) never reach the record; xdist's report says where they ran.
    cluster = {
        line.split("]")[0].lstrip("[")
        for line in run.stdout.splitlines()
        if "test_cluster[" in line and line.startswith("[gw")
    }
    assert len(cluster) == 1, run.stdout[-3000:]
    # The cluster was the first thing its process was given: nothing ran there before it.
    (worker,) = cluster
    first_report = next(line for line in run.stdout.splitlines() if line.startswith(f"[{worker}]"))
    assert "test_cluster[0]" in first_report, run.stdout[-3000:]


def test_without_processes_the_tests_run_serially_in_the_same_groups_order(tmp_path):
    run, lines = run_suite(tmp_path, "-n", "0", "-v")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "26 passed, 3 skipped" in run.stdout
    assert {process for process, _ in lines} == {"serial"}
    reported = [line.split(" ")[0] for line in run.stdout.splitlines() if line.startswith("tests/")]
    assert not any("@" in r for r in reported), reported  # the ids are the tests' own
    # the cluster first, then the group of a test marked long_world (the whole module: its world), then the
    # session's world, then the module's, each in the files' order, then the tests that share nothing
    assert reported[0].startswith("tests/test_e_cluster.py::test_cluster[0]"), reported
    assert [r.split("::")[0].split("_", 2)[-1] for r in reported[3:17]] == (
        ["long_world.py"] * 2 + ["session_one.py"] * 3 + ["session_two.py"] * 3 + ["module_world.py"] * 6
    ), reported
    assert all("test_a_alone" in r for r in reported[17:]), reported
