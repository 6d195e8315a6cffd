"""The cluster test runs in the test command where the machine has its servers, and is skipped, naming what is
missing, where it has not (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKED = (
    "import pytest\n\n"
    "@pytest.mark.cluster\ndef test_on_the_cluster():\n    assert False, 'it ran'\n\n"
    "def test_everything_else():\n    pass\n"
)


def suite_with_postgres_bin(folder: Path, postgres_bin: str) -> subprocess.CompletedProcess:
    """A copy of the suite's conftest with one marked test, its deployment file naming `postgres_bin`."""
    (folder / "tests").mkdir()
    (folder / "infra").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", folder / "tests" / "conftest.py")
    (folder / "infra" / "deployment.yml").write_text(f"cluster:\n  postgres_bin: {postgres_bin}\n")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n  cluster: the cluster\n")
    (folder / "tests" / "test_marked.py").write_text(MARKED)
    return subprocess.run(
        # Its own basetemp, for the reason given in test_test_processes.run_suite.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"--basetemp={folder / 'tmp'}",
            "tests",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_the_servers_a_cluster_test_is_skipped_naming_what_is_missing(tmp_path):
    run = suite_with_postgres_bin(tmp_path, str(tmp_path / "no-postgres-here"))
    assert run.returncode == 0, run.stdout
    assert "1 passed, 1 skipped" in run.stdout
    assert "no Debian's PostgreSQL server" in run.stdout and "no-postgres-here" in run.stdout


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="this machine has no redis-server")
def test_with_the_servers_a_cluster_test_runs_in_the_test_command(tmp_path):
    import yaml

    real = yaml.safe_load((REPO / "infra" / "deployment.yml").read_text())["cluster"]["postgres_bin"]
    if not (Path(real) / "postgres").exists():
        pytest.skip(f"this machine has no PostgreSQL server in {real}")
    run = suite_with_postgres_bin(tmp_path, real)
    assert run.returncode == 1 and "it ran" in run.stdout and "1 failed, 1 passed" in run.stdout
