"""Headless Chromium for the tests that look at what a browser draws (Debian's `chromium`; `./dev.sh test`
installs it when it is missing). Without it those tests fail, saying so, rather than being skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Quiet and offline: no sandbox (root in CI), no GPU, nothing fetched in the background.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium(what: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: {what} is drawn in headless Chromium "
            "(install it with: apt-get install chromium; ./dev.sh test does)"
        )


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM of a local page after its scripts ran (up to 5 s of virtual time), in a fresh profile."""
    profile.mkdir()
    drawn = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            *ARGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert drawn.returncode == 0 and "</html>" in drawn.stdout, drawn.stderr[-3000:]
    return drawn.stdout
