"""One warehouse per test module: an embedded PostgreSQL under the module's own home, with the reference
data, the opt-out list and the GP register of a small synthetic world published, so that hospital files can
be staged, gated and published by the package's own functions in this process."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import isolated_env, synth_world
from tests.robustness.spec import PROVIDER, Good

POPULATION = 200
SEED = 7


@dataclass
class Warehouse:
    home: Path
    landing: Path  # the synthetic world's landing folder (answer key included)
    good: Good  # every RAJ hospital episode of the world, as one good file

    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        from pophealth.warehouse import db

        with db.connect() as conn:
            return conn.execute(text, params).fetchall()

    def value(self, text: str, params: tuple = ()):
        return self.query(text, params)[0][0]


def good_apc(landing: Path) -> Good:
    """Every episode of one provider in the world, less those of people with an opt-out (so that every row
    of the good file is loaded)."""
    with next(landing.glob("optouts_*.csv")).open(newline="") as handle:
        opted_out = {row["nhs_number"] for row in csv.DictReader(handle)}
    header: list[str] = []
    rows: list[list[str]] = []
    for path in sorted(landing.glob(f"apc_{PROVIDER}_*.csv")):
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows += [r for r in reader if r[header.index("nhs_number")] not in opted_out]
    return Good(header, rows)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Iterator[Warehouse]:
    from pophealth.ingest.load import publish_load, stage_extract
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    home = tmp_path_factory.mktemp("robustness")
    landing = synth_world(home, POPULATION, SEED)
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("POPHEALTH_")]:
            patch.delenv(name)
        for name, value in isolated_env(home).items():
            if name.startswith("POPHEALTH_"):
                patch.setenv(name, value)
        patch.setattr(db, "_cached", None)
        try:
            prepare_warehouse()
            for name in ("ref_postcode_lookup.csv", "optouts_20250930.csv", "gp_register_20250930.csv"):
                publish_load(stage_extract(landing / name).load_id)
            yield Warehouse(home, landing, good_apc(landing))
        finally:
            db.stop_embedded()
