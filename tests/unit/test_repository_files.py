"""What is committed works from any clone: no link to a path of the machine it was made on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _committed_links() -> dict[str, str]:
    """Each committed symbolic link (git mode 120000) and the target it names."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git clone: nothing committed to read")
    listing = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    links = {}
    for line in listing:
        mode, blob, _stage_and_path = line.split(" ", 2)
        path = _stage_and_path.split("\t", 1)[1]
        if mode == "120000":
            target = subprocess.run(
                ["git", "cat-file", "blob", blob], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
            links[path] = target
    return links


def test_every_committed_link_stays_inside_the_repository():
    # A link to /work/main/.venv was once committed by mistake: on any other machine it leads nowhere.
    outside = {
        path: target
        for path, target in _committed_links().items()
        if Path(target).is_absolute() or not (ROOT / path).parent.joinpath(target).resolve().is_relative_to(ROOT)
    }
    assert outside == {}, f"committed links that lead out of the repository: {outside}"
