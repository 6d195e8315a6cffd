"""The cluster test is opt-in: tests marked `cluster` run with `pytest --cluster` only (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=folder, capture_output=True, text=True, timeout=300)


def test_a_test_marked_cluster_is_skipped_naming_the_option_and_runs_with_it(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  cluster: the cluster\n")
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.cluster\ndef test_on_the_cluster():\n    assert False, 'it ran'\n\n"
        "def test_everything_else():\n    pass\n")
    without = pytest_in(tmp_path)
    assert without.returncode == 0, without.stdout
    assert "1 passed, 1 skipped" in without.stdout and "runs only with --cluster" in without.stdout
    given = pytest_in(tmp_path, "--cluster")
    assert given.returncode == 1 and "it ran" in given.stdout and "1 failed, 1 passed" in given.stdout


def test_the_default_test_command_skips_the_whole_cluster_module(tmp_path):
    # It is collected (so it imports), and each of its tests is skipped before its servers would come up.
    run = pytest_in(REPO, str(REPO / "tests" / "integration" / "test_cluster.py"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "passed" not in run.stdout and " skipped" in run.stdout and "runs only with --cluster" in run.stdout
