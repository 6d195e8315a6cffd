"""The static checks, in the test command: ruff over the code and its tests, mypy over the package.

Their configuration is in pyproject.toml ([tool.ruff], [tool.mypy]), with every file or module left out of a rule
named there with its reason. Each check runs as the developer would run it, from the repository, and a failure
shows the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINTED = ["pophealth", "dags", "benchmarks", "tests"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing():
    proc = run("ruff", "check", "--no-cache", "--output-format", "concise", *LINTED)
    assert proc.returncode == 0, f"ruff check {' '.join(LINTED)}:\n{proc.stdout}{proc.stderr}"


def test_mypy_finds_nothing_in_the_package():
    proc = run("mypy", "pophealth")
    assert proc.returncode == 0, f"mypy pophealth:\n{proc.stdout}{proc.stderr}"
