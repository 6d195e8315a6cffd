"""The synthetic world: a population, its extracts exactly as the contract says, and the answer key.

    write_world(out, population=800, seed=42)

writes every feed of docs/contract/extracts.md into `out` and, in `out/answer_key`, what the
platform must make of them, worked out from the generator's own knowledge of the world.

The extracts carry NHS numbers, names of places, dates of birth and postcodes (synthetic, but shaped exactly as
real ones): every file is written readable by its owner only (0600) in folders only its owner can open
(0700), and `make_private` puts a world written by an older version right. The demo keeps its world after
loading it, to load it again on the next `pophealth run` without generating it again (docs/security.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pophealth.synth.answer_key import write_answer_key
from pophealth.synth.extracts import write_extracts
from pophealth.synth.geography import AREA_CODE, MID_AND_SOUTH_ESSEX
from pophealth.synth.world import generate_world

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


@contextmanager
def _owner_only() -> Iterator[None]:
    """Files and folders created meanwhile are never readable by others, not even for a moment."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(out: Path) -> None:
    """Every file under `out` 0600 and every folder 0700 (a file rewritten in place keeps its old mode, and a
    world written before this rule was world-readable). Links are left alone: never followed."""
    out.chmod(PRIVATE_FOLDER)
    for path in out.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(PRIVATE_FOLDER if path.is_dir() else PRIVATE_FILE)


def write_world(
    out: Path, population: int, seed: int, delivery: str = "monthly", councils: tuple[str, ...] = (AREA_CODE,)
) -> dict:
    """`delivery`: how the hospital extracts are cut into files (pophealth.synth.extracts.DELIVERIES); the world and
    its answer key are the same whichever it is. `councils`: the council codes of the world
    (pophealth.synth.geography.COUNCILS); one council's world sends its postcode lookup without la_code."""
    out = Path(out)
    world = generate_world(population, seed, tuple(councils))
    with _owner_only():
        out.mkdir(parents=True, exist_ok=True)
        make_private(out)
        ledger = write_extracts(world, out, delivery)
        summary = write_answer_key(world, ledger, out / "answer_key")
    make_private(out)
    return summary


__all__ = ["write_world", "make_private", "AREA_CODE", "MID_AND_SOUTH_ESSEX"]
