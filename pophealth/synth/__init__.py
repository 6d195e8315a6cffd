"""The synthetic world: a population, its extracts exactly as the contract says, and the answer key.

    write_world(out, population=800, seed=42)

writes every feed of ../shared/contract/extracts.md into `out` and, in `out/answer_key`, what the
platform must make of them, worked out from the generator's own knowledge of the world.
"""

from __future__ import annotations

from pathlib import Path

from pophealth.synth.answer_key import write_answer_key
from pophealth.synth.extracts import write_extracts
from pophealth.synth.geography import AREA_CODE, MID_AND_SOUTH_ESSEX
from pophealth.synth.world import generate_world


def write_world(out: Path, population: int, seed: int, councils: tuple[str, ...] = (AREA_CODE,)) -> dict:
    """councils: the council codes of the world (pophealth.synth.geography.COUNCILS); one council's world
    sends its postcode lookup without la_code."""
    out = Path(out)
    world = generate_world(population, seed, tuple(councils))
    ledger = write_extracts(world, out)
    return write_answer_key(world, ledger, out / "answer_key")


__all__ = ["write_world", "AREA_CODE", "MID_AND_SOUTH_ESSEX"]
