"""The synthetic world: deterministic, shaped like Essex, written exactly as the extract contract says."""

from __future__ import annotations

import csv
import hashlib
from datetime import date
from pathlib import Path

import pytest

from pophealth.feeds import APC_COLUMNS, GP_REGISTER_COLUMNS
from pophealth.identifiers import NhsNumberCheck, check_nhs_number
from pophealth.landing import identify
from pophealth.synth import write_world
from pophealth.synth.answer_metrics import is_fall, is_injury, periods
from pophealth.synth.extracts import CLD_COLUMNS


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "landing"
    write_world(out, population=1500, seed=11)
    return out


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path, world):
    write_world(tmp_path / "again", population=1500, seed=11)
    write_world(tmp_path / "other", population=1500, seed=12)
    assert _digest(tmp_path / "again") == _digest(world)
    assert _digest(tmp_path / "other") != _digest(world)


def test_every_file_is_named_and_headed_as_the_contract_says(world):
    expected_headers = {"gp_register": list(GP_REGISTER_COLUMNS), "apc": list(APC_COLUMNS), "cld": list(CLD_COLUMNS),
                        "optouts": ["nhs_number"], "ref_population": ["lsoa_code", "sex", "age", "population"],
                        "ref_postcode_lookup": ["postcode", "lsoa_code", "locality_code", "locality_name"]}
    feeds = set()
    for path in world.glob("*.csv"):
        extract = identify(path)
        assert extract is not None, path.name
        feeds.add(extract.feed)
        header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
        assert header == expected_headers[extract.feed], path.name
    assert feeds == set(expected_headers)


def test_register_numbers_are_test_range_except_the_planted_invalid_ones(world):
    checks = [check_nhs_number(r["nhs_number"]) for r in _read(next(world.glob("gp_register_*.csv")))]
    assert checks.count(NhsNumberCheck.TEST_RANGE) >= 0.99 * len(checks)
    assert set(checks) <= {NhsNumberCheck.TEST_RANGE, NhsNumberCheck.INVALID}


def test_numbers_arrive_with_spaces_and_hyphens_sometimes(world):
    numbers = [r["nhs_number"] for r in _read(next(world.glob("gp_register_*.csv")))]
    assert any(" " in n for n in numbers) and any("-" in n for n in numbers)


def test_file_counts_in_the_answer_key_add_up_and_match_the_files(world):
    for entry in _read(world / "answer_key" / "files.csv"):
        read = int(entry["rows_read"])
        assert read == int(entry["rows_loaded"]) + int(entry["rows_quarantined"]) + int(entry["rows_opted_out"])
        assert read == len(_read(world / entry["file_name"])), entry["file_name"]
    assert {e["file_name"] for e in _read(world / "answer_key" / "files.csv")} == {p.name for p in world.glob("*.csv")}


def test_people_are_unique_and_about_five_percent_opted_out(world):
    people = _read(world / "answer_key" / "people.csv")
    assert len({p["identity"] for p in people}) == len(people)
    optouts = _read(next(world.glob("optouts_*.csv")))
    assert 0.03 * 1500 < len(optouts) < 0.08 * 1500


def test_about_a_fifth_are_aged_65_and_over(world):
    people = [p for p in _read(world / "answer_key" / "people.csv") if p["age_band"]]
    older = sum(1 for p in people if p["age_band"] in ("65-74", "75-84", "85+"))
    assert 0.17 < older / len(people) < 0.25


def test_social_care_files_repeat_the_rolling_year_and_the_first_is_release_1(world):
    files = sorted(world.glob("cld_*.csv"))
    assert len(files) == 6
    first, second = _read(files[0]), _read(files[1])
    assert {r["Client_Type"] for r in first} <= {"Service User", "Carer"}
    assert "Service User" not in {r["Client_Type"] for r in second}
    assert {r["Reporting_Period_Start_Date"] for r in first} == {"2023-07-01"}

    def key(r):
        return (r["LA_Person_Unique_Identifier"], r["Event_Type"], r["Event_Start_Date"])

    assert {key(r) for r in first} & {key(r) for r in second}, "quarterly files should overlap"
    # Event_Reference is not stable across submissions.
    references = {key(r): r["Event_Reference"] for r in first}
    assert any(references.get(key(r)) not in (None, r["Event_Reference"]) for r in second)


def test_some_social_care_rows_have_no_nhs_number(world):
    rows = [r for f in world.glob("cld_*.csv") for r in _read(f)]
    missing = sum(1 for r in rows if not r["NHS_Number"])
    assert 0.02 < missing / len(rows) < 0.2


def test_episodes_are_in_order_within_their_spells(world):
    for path in world.glob("apc_*.csv"):
        for r in _read(path):
            admidate, epistart = date.fromisoformat(r["admidate"]), date.fromisoformat(r["epistart"])
            assert admidate <= epistart
            if r["epiend"]:
                assert epistart <= date.fromisoformat(r["epiend"])
            if r["disdate"]:
                assert date.fromisoformat(r["epiend"]) <= date.fromisoformat(r["disdate"])
                if r["discharge_ready_date"]:
                    assert date.fromisoformat(r["discharge_ready_date"]) < date.fromisoformat(r["disdate"])
            if r["epiorder"] == "1":
                assert r["epistart"] == r["admidate"]


def test_the_emergency_admissions_answer_counts_first_episodes_read_back_from_the_files(world):
    # Worked out again from the files themselves: the first episode of each emergency spell, by month,
    # leaving out the opted-out people (whose numbers are in the opt-out file).
    opted_out = {r["nhs_number"].replace(" ", "").replace("-", "") for r in _read(next(world.glob("optouts_*.csv")))}
    by_month: dict[str, int] = {}
    for path in world.glob("apc_*.csv"):
        for r in _read(path):
            number = r["nhs_number"].replace(" ", "").replace("-", "")
            if r["epiorder"] != "1" or r["admimeth"] not in ("21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"):
                continue
            if check_nhs_number(number).linkable and number in opted_out:
                continue
            by_month[r["admidate"][:7]] = by_month.get(r["admidate"][:7], 0) + 1
    answers = {r["period_start"][:7]: int(r["numerator"]) for r in _read(world / "answer_key" / "metrics.csv")
               if r["metric_code"] == "emergency_admissions" and r["period_type"] == "month"
               and r["geography_level"] == "area"}
    assert answers == {month: by_month.get(month, 0) for month in answers}


def test_metric_periods_are_18_months_6_quarters_and_a_financial_year():
    kinds = [p[0] for p in periods()]
    assert (kinds.count("month"), kinds.count("quarter"), kinds.count("financial_year")) == (18, 6, 1)
    assert ("quarter", date(2025, 1, 1), date(2025, 3, 31)) in periods()


@pytest.mark.parametrize("primary, other, expected", [
    ("S72.0", "W19", True), ("S720", "W01", True), ("T14.0", "W10", True), ("I63.9", "W19", False),
    ("S72.0", "W20", False), ("S72.0", "X59", False),
])
def test_a_fall_is_an_injury_with_a_fall_cause(primary, other, expected):
    assert (is_injury(primary) and is_fall(other)) is expected


def test_the_generator_rejects_an_empty_world(tmp_path):
    with pytest.raises(ValueError):
        write_world(tmp_path, population=0, seed=1)
