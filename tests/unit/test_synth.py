"""The synthetic world: deterministic, shaped like Essex, written exactly as the extract contract says, and an
answer key that agrees with what the platform's own row transforms make of the files."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

from pophealth.contract.feeds import FEEDS_BY_NAME
from pophealth.contract.identifiers import NhsNumber, NhsNumberCheck, check_nhs_number, normalise_nhs_number
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import PostcodeLookup, Pseudonymiser
from pophealth.ingest.feeds import TRANSFORMS, RowContext, RowProblem
from pophealth.ingest.landing import identify, open_extract
from pophealth.synth import MID_AND_SOUTH_ESSEX, write_world
from pophealth.synth.answer_metrics import EMERGENCY, is_fall, is_injury, periods
from pophealth.synth.extracts import RELEASE1

POPULATION = 1500
SEED = 11
TEST_KEY = "5a" * 32


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "landing"
    write_world(out, population=POPULATION, seed=SEED)
    return out


@pytest.fixture(scope="module")
def replay(world):
    """Every file through the platform's own row transforms: the fate of each row and who it belongs to."""
    pseudonymiser = Pseudonymiser(LinkageKey.from_hex(TEST_KEY, "test"))
    postcodes = PostcodeLookup.from_file(world / "ref_postcode_lookup.csv")
    optouts = set()
    for row in _read(next(world.glob("optouts_*.csv"))):
        if check_nhs_number(row["nhs_number"]).linkable:
            optouts.add(pseudonymiser.person_id(NhsNumber(row["nhs_number"])).value)
    fates: dict[str, Counter] = {}
    identities: dict[str, set[str]] = defaultdict(set)  # identity -> feeds
    loaded: dict[str, list[dict[str, str]]] = defaultdict(list)  # file -> loaded rows
    rows_of: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)  # identity -> (feed, row)
    for path in sorted(world.glob("*.csv")):
        extract = identify(path)
        feed = FEEDS_BY_NAME[extract.feed]
        ctx = RowContext(pseudonymiser, postcodes, frozenset(optouts), extract.provider, extract.period_end)
        handle, reader = open_extract(path, feed.contract_columns, feed.required_columns)
        counts = Counter()
        with handle:
            for _n, row in reader.rows:
                opted_out_before = ctx.counters["opted_out"]
                try:
                    TRANSFORMS[feed.name](row, ctx)
                except RowProblem:
                    counts["quarantined"] += 1
                    continue
                if ctx.counters["opted_out"] > opted_out_before:
                    # Loaded, for the person's direct care only; no secondary use sees it (the answer key's people).
                    counts["opted_out"] += 1
                    continue
                counts["loaded"] += 1
                loaded[path.name].append(row)
                if extract.feed in ("gp_register", "apc", "cld"):
                    raw = row["nhs_number"]
                    if check_nhs_number(raw).linkable:
                        identity = "nhs:" + normalise_nhs_number(raw)
                    elif extract.feed == "apc":
                        identity = f"spell:{row['procode']}|{row['spell_id']}"
                    else:
                        identity = f"la:{row['la_code']}|{row['la_person_unique_identifier']}"
                    identities[identity].add(extract.feed)
                    rows_of[identity].append((extract.feed, row))
        fates[path.name] = counts
    return fates, identities, loaded, rows_of


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path, world):
    write_world(tmp_path / "again", population=POPULATION, seed=SEED)
    write_world(tmp_path / "other", population=POPULATION, seed=SEED + 1)
    assert _digest(tmp_path / "again") == _digest(world)
    assert _digest(tmp_path / "other") != _digest(world)


def test_every_file_is_named_and_headed_as_the_contract_says(world):
    expected_headers = {feed: list(FEEDS_BY_NAME[feed].written) for feed in ("gp_register", "apc", "cld")} | {
        "optouts": ["nhs_number"],
        "ref_population": ["lsoa_code", "sex", "age", "population"],
        "ref_postcode_lookup": ["postcode", "lsoa_code", "locality_code", "locality_name"],
    }
    feeds = Counter()
    for path in world.glob("*.csv"):
        extract = identify(path)
        assert extract is not None, path.name
        feeds[extract.feed] += 1
        raw = path.read_bytes()
        assert b"\r" not in raw and not raw.startswith(b"\xef\xbb\xbf"), path.name
        header = raw.decode("utf-8").split("\n", 1)[0].split(",")
        assert header == expected_headers[extract.feed], path.name
    assert set(feeds) == set(expected_headers)
    assert feeds["cld"] == 6 and feeds["ref_population"] == 3 and feeds["gp_register"] == 1
    assert {p.name[4:7] for p in world.glob("apc_*.csv")} == {"RAJ", "RDE", "RQW"}
    # the contract's column names, with the CLD's capitalisation
    cld = FEEDS_BY_NAME["cld"]
    assert [c.lower() for c in cld.written] == list(cld.contract_columns[: len(cld.written)])


def test_register_numbers_are_test_range_except_the_planted_invalid_ones(world):
    rows = _read(next(world.glob("gp_register_*.csv")))
    checks = Counter(check_nhs_number(r["nhs_number"]) for r in rows)
    assert set(checks) <= {NhsNumberCheck.TEST_RANGE, NhsNumberCheck.INVALID}
    assert checks[NhsNumberCheck.INVALID] <= max(3, 0.005 * len(rows))
    numbers = [normalise_nhs_number(r["nhs_number"]) for r in rows]
    assert len(set(numbers)) == len(numbers)
    assert any(" " in r["nhs_number"] for r in rows) and any("-" in r["nhs_number"] for r in rows)


def test_file_counts_in_the_answer_key_add_up_and_match_the_files(world):
    entries = _read(world / "answer_key" / "files.csv")
    for entry in entries:
        read = int(entry["rows_read"])
        assert read == int(entry["rows_loaded"]) + int(entry["rows_quarantined"])
        assert int(entry["rows_opted_out"]) <= int(entry["rows_loaded"])
        assert read == len(_read(world / entry["file_name"])) > 0, entry["file_name"]
        assert entry["feed"] == identify(world / entry["file_name"]).feed
    assert {e["file_name"] for e in entries} == {p.name for p in world.glob("*.csv")}


def test_file_counts_are_what_the_platforms_row_transforms_make_of_the_files(world, replay):
    fates = replay[0]
    for entry in _read(world / "answer_key" / "files.csv"):
        counts = fates[entry["file_name"]]
        assert (counts["loaded"] + counts["opted_out"], counts["quarantined"], counts["opted_out"]) == (
            int(entry["rows_loaded"]),
            int(entry["rows_quarantined"]),
            int(entry["rows_opted_out"]),
        ), entry["file_name"]
    optout_file = next(e for e in _read(world / "answer_key" / "files.csv") if e["feed"] == "optouts")
    assert optout_file["rows_quarantined"] == "2"


def test_people_are_the_identities_of_the_loaded_rows(world, replay):
    identities = replay[1]
    people = _read(world / "answer_key" / "people.csv")
    assert len({p["identity"] for p in people}) == len(people)
    assert {p["identity"] for p in people} == set(identities)
    for p in people:
        feeds = identities[p["identity"]]
        assert p["in_hospital_data"] == ("true" if "apc" in feeds else "false")
        assert p["in_social_care_data"] == ("true" if "cld" in feeds else "false")
        assert p["is_linked"] == ("true" if {"apc", "cld"} <= feeds else "false")
        assert p["link_method"] == ("nhs_number" if p["identity"].startswith("nhs:") else "local_id_only")
        if p["is_registered"] == "true":
            assert "gp_register" in feeds and not p["date_of_death"]
        assert p["sex"] in ("0", "1", "2", "9")
        assert p["locality_code"].startswith("E0700")
    world_json = json.loads((world / "answer_key" / "world.json").read_text())
    assert world_json["people"] == len(people)
    assert world_json["linked"] == sum(1 for p in people if p["is_linked"] == "true")
    assert (world_json["population"], world_json["seed"]) == (POPULATION, SEED)
    assert any(p["link_method"] == "local_id_only" for p in people)


def _expected_person(rows: list[tuple[str, dict[str, str]]], lookup: dict[str, tuple[str, str]]) -> dict:
    """marts.person's rules, applied to one identity's loaded rows as the platform sees them."""
    as_of = "2025-09-30"
    by_feed = defaultdict(list)
    for feed, row in rows:
        by_feed[feed].append(row)
    source = by_feed["gp_register"] or by_feed["apc"] or by_feed["cld"]
    first = source[0]
    birth = first.get("date_of_birth") or ""
    if by_feed["gp_register"] or by_feed["apc"]:
        sex = first["sex"]
    else:
        sex = {"male": "1", "female": "2", "other": "9", "indeterminate": "9"}.get(first["gender"].lower(), "0")
    lsoa, locality = lookup.get(first["postcode"].replace(" ", "").upper(), ("", ""))
    practice = (by_feed["gp_register"] or by_feed["apc"] or [{"gp_practice_code": ""}])[0]["gp_practice_code"]
    registered = any(
        (not r["registration_end_date"] or r["registration_end_date"] > as_of)
        and (not r["date_of_death"] or r["date_of_death"] > as_of)
        for r in by_feed["gp_register"]
    )
    death = next((r["date_of_death"] for r in by_feed["gp_register"] if r["date_of_death"]), "")
    if not death:
        death = max((r["date_of_death"] for r in by_feed["cld"] if r["date_of_death"]), default="")
    if not death:
        death = next((r["disdate"] for r in by_feed["apc"] if r["dismeth"] == "4" and r["disdate"]), "")
    age = ""
    if birth:
        years = 2025 - int(birth[:4]) - (1 if 9 < int(birth[5:7]) else 0)
        age = (
            "0-17"
            if years < 18
            else "18-64"
            if years < 65
            else "65-74"
            if years < 75
            else "75-84"
            if years < 85
            else "85+"
        )
    return {
        "birth_year": birth[:4],
        "age_band": age,
        "sex": sex,
        "lsoa_code": lsoa,
        "locality_code": locality,
        "gp_practice_code": practice,
        "is_registered": "true" if registered else "false",
        "date_of_death": death,
    }


def test_people_attributes_follow_the_rules_applied_to_the_loaded_rows(world, replay):
    lookup = {
        r["postcode"].replace(" ", "").upper(): (r["lsoa_code"], r["locality_code"])
        for r in _read(world / "ref_postcode_lookup.csv")
    }
    rows_of = replay[3]
    people = _read(world / "answer_key" / "people.csv")
    for person in people:
        expected = _expected_person(rows_of[person["identity"]], lookup)
        assert {k: person[k] for k in expected} == expected, person["identity"]


def test_about_five_percent_opted_out(world):
    optouts = _read(next(world.glob("optouts_*.csv")))
    assert 0.035 * POPULATION < len(optouts) < 0.07 * POPULATION
    opted_out = json.loads((world / "answer_key" / "world.json").read_text())["opted_out_people"]
    assert 0.035 < opted_out / POPULATION < 0.07


def test_about_a_fifth_are_aged_65_and_over(world):
    # At the as-of date (2025-09-30) the living people of marts.person are two years older than the profile.
    people = [p for p in _read(world / "answer_key" / "people.csv") if p["age_band"] and not p["date_of_death"]]
    older = sum(1 for p in people if p["age_band"] in ("65-74", "75-84", "85+"))
    assert 0.17 < older / len(people) < 0.24
    estimates = _read(world / "ref_population_2024.csv")
    total = sum(int(r["population"]) for r in estimates)
    assert 0.17 < sum(int(r["population"]) for r in estimates if int(r["age"]) >= 65) / total < 0.23
    # Estimates count residents, so they also hold the opted-out, those with no valid number and those who
    # register late or leave: more than the registered population the world is sized by, but not much more.
    assert POPULATION < total < 1.2 * POPULATION


def test_population_estimates_cover_every_lsoa_sex_and_age(world):
    lsoas = {r["lsoa_code"] for r in _read(world / "ref_postcode_lookup.csv")}
    for year in (2023, 2024, 2025):
        rows = _read(world / f"ref_population_{year}.csv")
        assert len(rows) == len(lsoas) * 2 * 91
        assert {r["lsoa_code"] for r in rows} == lsoas
    lookup = _read(world / "ref_postcode_lookup.csv")
    assert len({r["postcode"] for r in lookup}) == len(lookup)
    assert len({r["locality_code"] for r in lookup}) == 12
    used = {r["postcode"] for r in _read(next(world.glob("gp_register_*.csv")))}
    assert used <= {r["postcode"] for r in lookup}


def test_social_care_files_repeat_the_rolling_year_and_the_first_is_release_1(world):
    files = sorted(world.glob("cld_*.csv"))
    assert len(files) == 6
    release1_only = {v for k, v in RELEASE1.items() if k != v}
    release2_changed = {k for k, v in RELEASE1.items() if k != v}
    contents = [_read(f) for f in files]
    for number, rows in enumerate(contents):
        end = identify(files[number]).period_end
        start = date(end.year - 1, end.month, end.day) + timedelta(days=1)
        assert {r["Reporting_Period_Start_Date"] for r in rows} == {start.isoformat()}
        assert {r["Reporting_Period_End_Date"] for r in rows} == {end.isoformat()}
        values = {
            r[c]
            for r in rows
            for c in ("Client_Type", "Event_Outcome", "Service_Type", "Request_Route_of_Access", "Delivery_Mechanism")
        }
        for r in rows:
            if r["Event_Start_Date"] < start.isoformat():
                assert r["Event_Type"] == "Service" and (
                    not r["Event_End_Date"] or r["Event_End_Date"] >= start.isoformat()
                )
            assert r["Event_Start_Date"] <= end.isoformat()
            assert not r["Event_End_Date"] or r["Event_Start_Date"] <= r["Event_End_Date"] <= end.isoformat()
            if r["Date_of_Death"]:
                assert r["Date_of_Death"] <= end.isoformat()
        if number == 0:
            assert values & release1_only and not values & release2_changed
            assert {r["Client_Type"] for r in rows} <= {"Service User", "Carer"}
        else:
            assert not values & release1_only and values & release2_changed

    def key(r):
        return (r["LA_Person_Unique_Identifier"], r["Event_Type"], r["Event_Start_Date"])

    assert {key(r) for r in contents[0]} & {key(r) for r in contents[1]}, "quarterly files should overlap"
    references = {key(r): r["Event_Reference"] for r in contents[1]}
    assert all(references.get(key(r)) != r["Event_Reference"] for r in contents[2])


def test_social_care_numbers_are_missing_or_invalid_for_whole_people(world):
    by_person: dict[str, set] = defaultdict(set)
    for f in world.glob("cld_*.csv"):
        for r in _read(f):
            by_person[r["LA_Person_Unique_Identifier"]].add(
                check_nhs_number(r["NHS_Number"]).linkable if r["NHS_Number"] else None
            )
            assert r["LA_Person_Unique_Identifier"].startswith("EC") and len(r["LA_Person_Unique_Identifier"]) == 9
            assert r["Gender"] in ("Male", "Female", "Other")
    assert all(len(kinds) == 1 for kinds in by_person.values())
    missing = sum(1 for kinds in by_person.values() if kinds == {None})
    assert 0 < missing < 0.25 * len(by_person)


def test_episodes_make_whole_contiguous_spells(world):
    files = sorted(world.glob("apc_*.csv"))
    final = max(p.name[-12:-4] for p in files)
    seen_spells = set()
    for path in files:
        spells: dict[str, list[dict]] = defaultdict(list)
        for r in _read(path):
            spells[r["spell_id"]].append(r)
            assert r["nhs_number_status"] == "01" and r["admimeth"] and r["procode"] == path.name[4:7]
            assert r["nhs_number"].replace(" ", "").replace("-", "") not in r["spell_id"] + r["epikey"]
        for spell_id, episodes in spells.items():
            assert spell_id not in seen_spells, "a spell is in one file only"
            seen_spells.add(spell_id)
            episodes.sort(key=lambda r: int(r["epiorder"]))
            assert [int(r["epiorder"]) for r in episodes] == list(range(1, len(episodes) + 1))
            assert episodes[0]["epistart"] == episodes[0]["admidate"]
            for column in (
                "nhs_number",
                "date_of_birth",
                "sex",
                "postcode",
                "gp_practice_code",
                "admidate",
                "disdate",
                "dismeth",
                "disdest",
                "admimeth",
            ):
                assert len({r[column].replace(" ", "").replace("-", "") for r in episodes}) == 1, column
            for before, after in zip(episodes, episodes[1:], strict=False):
                assert before["epiend"] == after["epistart"]
            last = episodes[-1]
            for r in episodes:
                assert r["admidate"] <= r["epistart"] and (not r["epiend"] or r["epistart"] <= r["epiend"])
            if last["disdate"]:
                assert last["epiend"] == last["disdate"]
                assert path.name[-12:-6] == last["disdate"][:7].replace("-", "")
                if last["discharge_ready_date"]:
                    assert last["discharge_ready_date"] < last["disdate"]
                if last["dismeth"] == "4":
                    assert last["disdest"] == "79"
            else:
                assert (last["dismeth"], last["disdest"], last["epiend"]) == ("8", "98", "")
                assert path.name[-12:-4] == final
                assert not last["discharge_ready_date"]


def test_the_emergency_admissions_answer_counts_first_episodes_read_back_from_the_files(world, replay):
    loaded = replay[2]
    by_month: Counter = Counter()
    delayed_days: Counter = Counter()
    for name, rows in loaded.items():
        if not name.startswith("apc_"):
            continue
        for r in rows:
            if r["epiorder"] == "1" and r["admimeth"] in EMERGENCY:
                by_month[r["admidate"][:7]] += 1
            if r["epiorder"] == "1" and r["disdate"] and r["discharge_ready_date"]:
                episodes = [x for x in rows if x["spell_id"] == r["spell_id"]]
                last = max(episodes, key=lambda x: int(x["epiorder"]))
                delay = (date.fromisoformat(last["disdate"]) - date.fromisoformat(last["discharge_ready_date"])).days
                delayed_days[last["disdate"][:7]] += max(0, delay)
    metrics = _read(world / "answer_key" / "metrics.csv")

    def area(code, period_type):
        return {
            r["period_start"][:7]: r
            for r in metrics
            if r["metric_code"] == code and r["period_type"] == period_type and r["geography_level"] == "area"
        }

    admissions = area("emergency_admissions", "month")
    assert len(admissions) == 18
    assert {m: int(r["numerator"]) for m, r in admissions.items()} == {m: by_month[m] for m in admissions}
    assert {m: int(r["numerator"]) for m, r in area("delayed_discharge_days", "month").items()} == {
        m: delayed_days[m] for m in admissions
    }
    # Quarters add up the months; localities add up to the area; denominators are the year's estimates.
    quarters = area("emergency_admissions", "quarter")
    assert int(quarters["2024-04"]["numerator"]) == sum(by_month[m] for m in ("2024-04", "2024-05", "2024-06"))
    population_2024 = sum(int(r["population"]) for r in _read(world / "ref_population_2024.csv"))
    population_2025 = sum(int(r["population"]) for r in _read(world / "ref_population_2025.csv"))
    assert admissions["2024-12"]["denominator"] == str(population_2024)
    assert admissions["2025-01"]["denominator"] == str(population_2025)
    # one decimal, as the marts
    assert float(admissions["2024-12"]["value"]) == round(by_month["2024-12"] / population_2024 * 100000, 1)
    for r in metrics:
        if r["geography_level"] != "area" or r["metric_code"] in ("care_home_admissions_65",):
            continue
        localities = [
            x
            for x in metrics
            if x["metric_code"] == r["metric_code"]
            and x["period_start"] == r["period_start"]
            and x["period_type"] == r["period_type"]
            and x["geography_level"] == "locality"
        ]
        assert len(localities) == 12
        assert sum(int(x["numerator"]) for x in localities) == int(r["numerator"])
        assert sum(int(x["denominator"]) for x in localities) == int(r["denominator"])
        if r["metric_code"] == "delayed_discharge_days":
            days = (date.fromisoformat(r["period_end"]) - date.fromisoformat(r["period_start"])).days + 1
            assert int(r["denominator"]) % days == 0


def test_metrics_cover_every_period_and_the_rates_are_plausible(world):
    metrics = _read(world / "answer_key" / "metrics.csv")
    assert len(metrics) == 6 * 25 * (1 + 1 + 12)  # the area, its one council, its 12 districts
    fy = {
        r["metric_code"]: r for r in metrics if r["period_type"] == "financial_year" and r["geography_level"] == "area"
    }
    assert 5000 < float(fy["emergency_admissions"]["value"]) < 15000
    assert 0 < float(fy["emergency_readmissions_30d"]["value"]) < 30
    for r in metrics:
        if r["value"]:
            assert float(r["value"]) >= 0 and int(r["numerator"]) >= 0
            if r["metric_code"] in ("reablement_91_days_65", "emergency_readmissions_30d"):
                assert int(r["numerator"]) <= int(r["denominator"])


def test_metric_periods_are_18_months_6_quarters_and_a_financial_year():
    kinds = [p[0] for p in periods()]
    assert (kinds.count("month"), kinds.count("quarter"), kinds.count("financial_year")) == (18, 6, 1)
    assert ("quarter", date(2025, 1, 1), date(2025, 3, 31)) in periods()


@pytest.mark.parametrize(
    "primary, other, expected",
    [
        ("S72.0", "W19", True),
        ("S720", "W01", True),
        ("T14.0", "W10", True),
        ("I63.9", "W19", False),
        ("S72.0", "W20", False),
        ("S72.0", "X59", False),
        ("T99", "W19", False),
    ],
)
def test_a_fall_is_an_injury_with_a_fall_cause(primary, other, expected):
    assert (is_injury(primary) and is_fall(other)) is expected


def test_a_tiny_world_still_has_every_feed(tmp_path):
    summary = write_world(tmp_path, population=300, seed=3)
    assert summary["population"] == 300 and summary["people"] > 250
    names = {p.name for p in tmp_path.glob("*.csv")}
    assert "gp_register_20250930.csv" in names and "optouts_20250930.csv" in names
    assert len([n for n in names if n.startswith("cld_")]) == 6


def test_the_generator_rejects_an_empty_world(tmp_path):
    with pytest.raises(ValueError):
        write_world(tmp_path, population=0, seed=1)


def _modes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix() or ".": oct(p.stat().st_mode & 0o777)
        for p in [folder, *sorted(folder.rglob("*"))]
    }


def test_every_extract_and_answer_file_is_readable_by_its_owner_only(world):
    """They hold NHS numbers, dates of birth and postcodes shaped as real ones: 0600 files in 0700 folders."""
    modes = _modes(world)
    assert "gp_register_20250930.csv" in "".join(modes) and "answer_key/people.csv" in modes
    assert {mode for name, mode in modes.items() if (world / name).is_file()} == {"0o600"}
    assert {mode for name, mode in modes.items() if (world / name).is_dir()} == {"0o700"}


def test_the_demo_makes_a_world_written_by_an_older_version_private_before_loading_it(tmp_path, monkeypatch):
    from pophealth import cli

    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path / "home"))
    out = tmp_path / "home" / "demo" / "population-10-seed-1-mse"
    (out / "answer_key").mkdir(parents=True)
    (out / "answer_key" / "world.json").write_text(
        json.dumps({"population": 10, "seed": 1, "councils": list(MID_AND_SOUTH_ESSEX)})
    )
    (out / "gp_register_20250930.csv").write_text("nhs_number\n9434765919\n")
    for path in (out, out / "answer_key"):
        path.chmod(0o755)
    for path in (out / "answer_key" / "world.json", out / "gp_register_20250930.csv"):
        path.chmod(0o644)
    assert cli._demo_landing(10, 1) == out
    assert set(_modes(out).values()) <= {"0o600", "0o700"}


# ----------------------------------------------------------------------------------------------------------
# Three councils in one world (issue 18): Mid and South Essex


@pytest.fixture(scope="module")
def mse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mse") / "landing"
    write_world(out, population=POPULATION, seed=SEED, councils=MID_AND_SOUTH_ESSEX)
    return out


def test_a_one_council_world_sends_its_lookup_without_la_code(world):
    assert "la_code" not in _read(world / "ref_postcode_lookup.csv")[0]


def test_each_council_sends_its_own_social_care_files_and_the_lookup_names_each_postcodes_council(mse):
    lookup = _read(mse / "ref_postcode_lookup.csv")
    councils = {r["la_code"] for r in lookup}
    assert councils == set(MID_AND_SOUTH_ESSEX)
    thurrock = {r["locality_code"] for r in lookup if r["la_code"] == "E06000034"}
    assert thurrock == {"GRAYS", "TILBURY", "STANFORD-LE-HOPE", "AVELEY_OCKENDON"}
    # An LSOA and a locality each lie in one council.
    assert all(
        len({r["la_code"] for r in lookup if r["lsoa_code"] == lsoa}) == 1 for lsoa in {r["lsoa_code"] for r in lookup}
    )
    by_locality = defaultdict(set)
    for r in lookup:
        by_locality[r["locality_code"]].add(r["la_code"])
    assert all(len(c) == 1 for c in by_locality.values())
    lsoa_council = {r["lsoa_code"]: r["la_code"] for r in lookup}
    postcode_lsoa = {r["postcode"]: r["lsoa_code"] for r in lookup}
    for council in MID_AND_SOUTH_ESSEX:
        files = sorted(mse.glob(f"cld_{council}_*.csv"))
        assert len(files) == 6
        rows = [r for f in files for r in _read(f)]
        assert rows and {r["LA_Code"] for r in rows} == {council}
        assert {lsoa_council[postcode_lsoa[r["Postcode"]]] for r in rows} == {council}  # its own residents


def test_the_answer_key_has_every_metric_for_the_area_each_council_and_each_locality(mse):
    metrics = _read(mse / "answer_key" / "metrics.csv")
    localities = {r["locality_code"] for r in _read(mse / "ref_postcode_lookup.csv")}
    assert len(metrics) == 6 * 25 * (1 + 3 + len(localities))
    councils = {r["geography_code"] for r in metrics if r["geography_level"] == "local_authority"}
    assert councils == set(MID_AND_SOUTH_ESSEX)
    assert {r["geography_code"] for r in metrics if r["geography_level"] == "area"} == {"area"}
    key = {
        (r["metric_code"], r["period_type"], r["period_start"], r["geography_level"], r["geography_code"]): r
        for r in metrics
    }
    for (code, period_type, start, level, _geo), r in key.items():
        if level != "area":
            continue
        councils = [key[(code, period_type, start, "local_authority", c)] for c in MID_AND_SOUTH_ESSEX]
        # Each council's denominators are its own LSOAs': together, the whole area's.
        if code not in ("reablement_91_days_65", "emergency_readmissions_30d"):
            assert sum(int(c["denominator"]) for c in councils) == int(r["denominator"])
        if code != "care_home_admissions_65":  # people, who could be counted by two councils
            assert sum(int(c["numerator"]) for c in councils) == int(r["numerator"])
    summary = json.loads((mse / "answer_key" / "world.json").read_text())
    assert summary["councils"] == list(MID_AND_SOUTH_ESSEX)
    assert set(summary["metrics_2024_25_by_council"]) == set(MID_AND_SOUTH_ESSEX)


@pytest.mark.parametrize(
    ("code", "period_type", "start", "is_final", "final_on"),
    [
        # as of 30 September 2025: readmissions need 0-29 days after the period's last discharge
        ("emergency_readmissions_30d", "month", "2025-09-01", "false", "2025-10-29"),
        ("emergency_readmissions_30d", "month", "2025-08-01", "true", "2025-09-29"),  # 31 August + 29 days
        ("emergency_readmissions_30d", "quarter", "2025-07-01", "false", "2025-10-29"),
        # reablement needs days 1-91 after discharge
        ("reablement_91_days_65", "month", "2025-06-01", "true", "2025-09-29"),  # 30 June + 91 days
        ("reablement_91_days_65", "month", "2025-07-01", "false", "2025-10-30"),
        ("reablement_91_days_65", "quarter", "2025-04-01", "true", "2025-09-29"),
        ("reablement_91_days_65", "financial_year", "2024-04-01", "true", "2025-06-30"),
        # no follow-up: final once the period has ended
        ("emergency_admissions", "month", "2025-09-01", "true", "2025-09-30"),
        ("care_home_admissions_65", "quarter", "2025-07-01", "true", "2025-09-30"),
    ],
)
def test_a_period_is_final_when_its_follow_up_has_ended_by_the_as_of_date(
    mse, code, period_type, start, is_final, final_on
):
    rows = [
        r
        for r in _read(mse / "answer_key" / "metrics.csv")
        if (r["metric_code"], r["period_type"], r["period_start"]) == (code, period_type, start)
    ]
    assert rows and {(r["is_final"], r["final_on"]) for r in rows} == {(is_final, final_on)}


def test_the_answer_key_leaves_out_every_period_a_sender_does_not_cover_wholly():
    """Worked by hand: a trust sends every month of the window but July 2024 (no discharge that month), a council
    sends two rolling years. July 2024, its quarter and its financial year are not computed; the rest are."""
    from pophealth.synth.answer_metrics import covered_periods, periods
    from pophealth.synth.extracts import Ledger, month_end

    ledger = Ledger()
    month = date(2024, 4, 1)
    while month <= date(2025, 9, 1):
        if month != date(2024, 7, 1):
            ledger.coverage.append(("apc", "RAJ", month, month_end(month)))
        month = month_end(month) + timedelta(days=1)
    ledger.coverage += [
        ("cld", "E10000012", date(2023, 10, 1), date(2024, 9, 30)),
        ("cld", "E10000012", date(2024, 10, 1), date(2025, 9, 30)),
    ]
    left_out = {(t, s) for t, s, _e in periods()} - covered_periods(ledger)
    assert left_out == {
        ("month", date(2024, 7, 1)),
        ("quarter", date(2024, 7, 1)),
        ("financial_year", date(2024, 4, 1)),
    }
    # A council whose data starts late leaves out every period before it, whatever the trusts send.
    ledger.coverage[-2:] = [("cld", "E10000012", date(2025, 1, 1), date(2025, 9, 30))]
    assert min(s for _t, s in covered_periods(ledger)) == date(2025, 1, 1)
