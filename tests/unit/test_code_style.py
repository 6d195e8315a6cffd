"""The static checks, in the test command: ruff (lint and format) over the code and its tests, mypy over the
package, and the import layers of the package (import-linter).

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


def test_the_code_is_formatted_as_ruff_formats_it():
    """One layout for all the code (`ruff format`, [tool.ruff] in pyproject.toml): a diff is never about layout."""
    proc = run("ruff", "format", "--check", "--no-cache", *LINTED)
    assert proc.returncode == 0, (
        f"ruff format --check (run `ruff format {' '.join(LINTED)}`):\n{proc.stdout}{proc.stderr}"
    )


def test_mypy_finds_nothing_in_the_package():
    proc = run("mypy", "pophealth")
    assert proc.returncode == 0, f"mypy pophealth:\n{proc.stdout}{proc.stderr}"


def test_no_room_of_the_package_imports_a_room_above_it():
    """The layers of pyproject.toml's [tool.importlinter], checked by import-linter over every import (those inside
    functions too): cli > operate | synth > governance | reports > marts > quality > ingest > identity > warehouse >
    contract > config."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"lint-imports:\n{proc.stdout}{proc.stderr}"


def test_every_room_of_the_package_is_in_the_layers():
    """A new subpackage or top-level module outside the layers would escape the check above."""
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {room.strip() for layer in layers for room in layer.split("|")}
    package = ROOT / "pophealth"
    rooms = {f"pophealth.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    rooms |= {f"pophealth.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    assert rooms == named, (
        f"rooms not in [tool.importlinter] layers: {sorted(rooms - named)}; "
        f"layers naming no room: {sorted(named - rooms)}"
    )
