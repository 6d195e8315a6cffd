"""The robustness corpus's million-row file (tests/robustness/spec.write_million) is written in blocks for speed;
it must be the very file a plain row-by-row reading of its definition writes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.robustness.spec import Good, write_million


def written_row_by_row(good: Good, path: Path, rows: int, bad_row: int) -> None:
    """The definition, one row at a time: block b is the good rows with `B<b>` after both keys; row `bad_row`
    (from 1) has an impossible admission date."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(good.header)
        for n in range(1, rows + 1):
            block, row = divmod(n - 1, len(good.rows))
            fresh = list(good.rows[row])
            fresh[good.col("epikey")] += f"B{block}"
            fresh[good.col("spell_id")] += f"B{block}"
            if n == bad_row:
                fresh[good.col("admidate")] = "2025-02-30"
            writer.writerow(fresh)


GOOD = Good(
    ["spell_id", "admidate", "diag_01", "epikey"],
    [
        ["S1", "2025-01-02", "I63", "E1"],
        ["S2", "2025-01-03", 'a, quoted "value"', "E2"],  # the csv module quotes it: the blocks must too
        ["S3", "2025-01-04", "", "E3"],
    ],
)


@pytest.mark.parametrize(
    ("rows", "bad_row"),
    [(9, 5), (10, 10), (11, 1), (7, 0), (2, 2)],  # whole and partial blocks; bad row first, last, in the middle, none
)
def test_the_million_row_file_is_the_row_by_row_file(tmp_path, rows, bad_row):
    write_million(GOOD, tmp_path / "blocks.csv", rows=rows, bad_row=bad_row)
    written_row_by_row(GOOD, tmp_path / "rows.csv", rows, bad_row)
    assert (tmp_path / "blocks.csv").read_bytes() == (tmp_path / "rows.csv").read_bytes()
    assert len((tmp_path / "blocks.csv").read_text().splitlines()) == rows + 1
