"""The opt-outs a file's rows are counted against (the load audit's rows_opted_out) are those of the list published
when the file is staged. The loader keeps the list it last read for the files that follow in the same process (a
load task stages a feed's files one after another), and reads it again as soon as another list is published."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from tests.robustness.spec import PROVIDER, csv_bytes

pytestmark = pytest.mark.integration


def _publish_optouts(warehouse, name: str, numbers: list[str]) -> None:
    from pophealth.ingest.load import publish_load, stage_extract

    path = warehouse.home / "optout-lists" / name
    path.parent.mkdir(exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["nhs_number"], *([n] for n in numbers)])
    publish_load(stage_extract(path).load_id)


def _opted_out_rows(warehouse, name: str, rows: list[list[str]]) -> int:
    """Stage (and publish) a hospital file of `rows`; its audit's count of rows of people with an opt-out."""
    from pophealth.ingest.load import publish_load, stage_extract

    path = warehouse.home / "hospital" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(csv_bytes(warehouse.good.header, rows))
    staged = stage_extract(path)
    publish_load(staged.load_id)
    return warehouse.value("SELECT rows_opted_out FROM audit.load WHERE load_id = %s", (staged.load_id,))


def test_each_file_is_counted_against_the_opt_out_list_published_when_it_is_staged(warehouse):
    good = warehouse.good
    number = good.col("nhs_number")
    episodes = Counter(row[number] for row in good.rows)
    # Three people of the world, none of them opted out yet, whose counts tell the two lists apart.
    first, *others = sorted(episodes)
    pairs = zip(others, others[1:], strict=False)
    second, third = next((a, b) for a, b in pairs if episodes[a] + episodes[b] != episodes[first])
    rows = [row for row in good.rows if row[number] in (first, second, third)]

    _publish_optouts(warehouse, "optouts_20251031.csv", [first])
    assert _opted_out_rows(warehouse, f"apc_{PROVIDER}_20260131.csv", rows) == episodes[first]
    # the same list still in force: the next file of the process is counted against it too
    assert _opted_out_rows(warehouse, f"apc_{PROVIDER}_20260228.csv", rows) == episodes[first]

    _publish_optouts(warehouse, "optouts_20251130.csv", [second, third])
    assert _opted_out_rows(warehouse, f"apc_{PROVIDER}_20260331.csv", rows) == episodes[second] + episodes[third]
