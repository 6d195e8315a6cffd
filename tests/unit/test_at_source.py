"""Pseudonymisation at source: the row rule (one per feed, worked by hand), what never reaches the output
(whatever the row), and the `pophealth pseudonymise` command: it fails closed, never leaves half a file
under the output's name, and streams.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import re
import string
import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pophealth.cli import main
from pophealth.contract.feeds import FEEDS_BY_NAME, KEY_VERSION_COLUMN
from pophealth.contract.identifiers import nhs_check_digit
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import Area, PostcodeLookup, Pseudonymiser
from pophealth.ingest.at_source import (
    AtSourceRefused,
    pseudonymise_extract,
    pseudonymise_row,
    source_key_problem,
    summary_text,
)
from pophealth.ingest.landing import FileRejected

KEY_HEX = "0f" * 32
SECRET = bytes.fromhex(KEY_HEX)
PSEUDO = Pseudonymiser(LinkageKey.from_hex(KEY_HEX, "test"))
LOOKUP = PostcodeLookup({"CM11AA": Area("E01990001", "E07000070")}, {"E01990001": "E07000070"})
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def person_id(digits: str) -> str:
    """extracts.md: lowercase hex HMAC-SHA256 of the ten ASCII digits under the linkage key."""
    return hmac.new(SECRET, digits.encode("ascii"), hashlib.sha256).hexdigest()


def local(hashed: bytes) -> str:
    """A local pseudonym, worked out again: HMAC under a key derived from the linkage key for local ids."""
    local_key = hmac.new(SECRET, b"pophealth|local-identifier|v1", hashlib.sha256).digest()
    return hmac.new(local_key, hashed, hashlib.sha256).hexdigest()


def lower(row: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in row.items()}


def gp_row(**overrides) -> dict[str, str]:
    row = dict(
        nhs_number="943 476 5919",
        date_of_birth="1950-03-17",
        sex="1",
        postcode="cm1 1aa",
        gp_practice_code="F81001",
        registration_start_date="2000-01-01",
        registration_end_date="",
        date_of_death="",
    )
    row.update(overrides)
    return row


def apc_row(**overrides) -> dict[str, str]:
    row = dict.fromkeys(FEEDS_BY_NAME["apc"].written, "")
    row.update(
        epikey="E1",
        spell_id="S1",
        nhs_number="999 000 0018",
        nhs_number_status="01",
        date_of_birth="1940-06-15",
        sex="2",
        postcode="CM1 1AA",
        gp_practice_code="F81001",
        procode="raj ",
        admidate="2025-01-03",
        disdate="2025-01-10",
        epistart="2025-01-03",
        epiend="2025-01-10",
        epiorder="1",
        admimeth="21",
        diag_01="S72.0",
        diag_02="W19",
    )
    row.update(overrides)
    return row


def cld_row(**overrides) -> dict[str, str]:
    row = dict.fromkeys(FEEDS_BY_NAME["cld"].written, "")
    row.update(
        LA_Code="E10000012",
        Reporting_Period_Start_Date="2024-07-01",
        Reporting_Period_End_Date="2025-06-30",
        Client_Type="Service user",
        LA_Person_Unique_Identifier="P0000001",
        NHS_Number="9990000019",
        Gender="Female",
        Date_of_Birth="1944-02-10",
        Postcode="CO1 1CC",
        Event_Type="Service",
        Event_Reference="R1",
        Event_Start_Date="2025-05-01",
        Unit_Cost="12.50",
    )
    row.update(overrides)
    return lower(row)


# ----------------------------------------------------------------------------------------------------------
# The pseudonymised header of each feed


def test_the_pseudonymised_headers_replace_identifiable_columns_in_place():
    assert FEEDS_BY_NAME["gp_register"].header == (
        "person_id",
        "nhs_number_check",
        "birth_year",
        "birth_month",
        "sex",
        "lsoa_code",
        "locality_code",
        "gp_practice_code",
        "registration_start_date",
        "registration_end_date",
        "date_of_death",
        "linkage_key_version",
    )
    assert FEEDS_BY_NAME["optouts"].header == ("person_id", "nhs_number_check", "linkage_key_version")
    assert FEEDS_BY_NAME["apc"].header[:12] == (
        "epikey",
        "spell_id",
        "person_id",
        "nhs_number_check",
        "nhs_number_status",
        "birth_year",
        "birth_month",
        "sex",
        "lsoa_code",
        "locality_code",
        "gp_practice_code",
        "procode",
    )
    assert FEEDS_BY_NAME["apc"].header[12:] == FEEDS_BY_NAME["apc"].written[9:] + ("linkage_key_version",)
    assert FEEDS_BY_NAME["cld"].header[:16] == (
        "LA_Code",
        "Reporting_Period_Start_Date",
        "Reporting_Period_End_Date",
        "Client_Type",
        "LA_Person_Unique_Identifier",
        "person_id",
        "nhs_number_check",
        "Gender",
        "Ethnicity",
        "birth_year",
        "birth_month",
        "Date_of_Death",
        "lsoa_code",
        "locality_code",
        "Primary_Support_Reason",
        "Accommodation_Status",
    )
    assert FEEDS_BY_NAME["cld"].header[16:] == FEEDS_BY_NAME["cld"].written[13:] + ("linkage_key_version",)


# ----------------------------------------------------------------------------------------------------------
# One row, by hand


def test_a_register_row():
    out = pseudonymise_row("gp_register", gp_row(forename="Alice"), PSEUDO, LOOKUP)
    assert out == {
        "person_id": person_id("9434765919"),
        "nhs_number_check": "valid",
        "birth_year": "1950",
        "birth_month": "3",
        "sex": "1",
        "lsoa_code": "E01990001",
        "locality_code": "E07000070",
        "gp_practice_code": "F81001",
        "registration_start_date": "2000-01-01",
        "registration_end_date": "",
        "date_of_death": "",
        "linkage_key_version": PSEUDO.key_version,
    }
    assert list(out) == [c.lower() for c in FEEDS_BY_NAME["gp_register"].header]


def test_an_episode_keeps_the_loaders_local_pseudonyms():
    out = pseudonymise_row("apc", apc_row(), PSEUDO, LOOKUP)
    assert out["epikey"] == local(b"RAJ|episode|E1")  # procode trimmed and upper-cased, as the loader does
    assert out["spell_id"] == local(b"RAJ|spell|S1")
    assert out["person_id"] == person_id("9990000018") and out["nhs_number_check"] == "test_range"
    assert (out["birth_year"], out["birth_month"], out["lsoa_code"]) == ("1940", "6", "E01990001")
    assert out["procode"] == "raj " and out["diag_01"] == "S72.0"  # everything else is passed through as sent


def test_a_social_care_row_with_an_invalid_number_and_an_unknown_postcode():
    out = pseudonymise_row("cld", cld_row(), PSEUDO, LOOKUP)
    assert out["person_id"] == "" and out["nhs_number_check"] == "invalid"
    assert out["la_person_unique_identifier"] == local(b"E10000012|person|P0000001")
    assert (out["lsoa_code"], out["locality_code"]) == ("", "")
    assert (out["birth_year"], out["birth_month"]) == ("1944", "2")
    assert out["unit_cost"] == "12.50"


@pytest.mark.parametrize(
    "number, check",
    [
        ("", "missing"),
        ("123", "invalid"),
        ("0000000000", "invalid"),
        ("943-476-5918", "invalid"),
        ("943-476-5919", "valid"),
    ],
)
def test_an_opt_out_row(number, check):
    out = pseudonymise_row("optouts", {"nhs_number": number}, PSEUDO, PostcodeLookup.empty())
    assert out == {
        "person_id": person_id("9434765919") if check == "valid" else "",
        "nhs_number_check": check,
        "linkage_key_version": PSEUDO.key_version,
    }


def test_a_date_of_birth_that_is_not_a_date_is_left_empty_and_said_why_without_the_value():
    unreduced: dict[str, str] = {}
    out = pseudonymise_row("apc", apc_row(date_of_birth="15/06/1940"), PSEUDO, LOOKUP, unreduced=unreduced)
    assert (out["birth_year"], out["birth_month"]) == ("", "")
    assert unreduced == {"date_of_birth": "date is not in ISO YYYY-MM-DD form"}
    unreduced.clear()
    pseudonymise_row("apc", apc_row(date_of_birth="1940-02-30"), PSEUDO, LOOKUP, unreduced=unreduced)
    assert unreduced == {"date_of_birth": "date does not exist in the calendar"}


def test_the_period_end_is_checked_only_when_given():
    unreduced: dict[str, str] = {}
    row = gp_row(date_of_birth="2025-10-01")
    assert pseudonymise_row("gp_register", row, PSEUDO, LOOKUP, unreduced=unreduced)["birth_year"] == "2025"
    out = pseudonymise_row("gp_register", row, PSEUDO, LOOKUP, period_end=date(2025, 9, 30), unreduced=unreduced)
    assert out["birth_year"] == "" and unreduced == {"date_of_birth": "date of birth is after the extract's period end"}


def test_a_local_id_without_its_source_code_is_left_empty_not_sent_in_clear():
    unreduced: dict[str, str] = {}
    out = pseudonymise_row("apc", apc_row(procode=" "), PSEUDO, LOOKUP, unreduced=unreduced)
    assert out["epikey"] == out["spell_id"] == ""
    assert unreduced == {
        "epikey": "cannot be pseudonymised without procode",
        "spell_id": "cannot be pseudonymised without procode",
    }


def test_reference_data_has_nothing_to_pseudonymise():
    with pytest.raises(ValueError, match="reference data"):
        pseudonymise_row("ref_postcode_lookup", {"postcode": "CM1 1AA"}, PSEUDO, LOOKUP)


def test_every_identity_hashed_is_told_to_on_identity_and_nothing_else_changes():
    told = []
    recording = Pseudonymiser(LinkageKey.from_hex(KEY_HEX, "test"), on_identity=lambda *a: told.append(a))
    out = pseudonymise_row("apc", apc_row(), recording, LOOKUP)
    assert out == pseudonymise_row("apc", apc_row(), PSEUDO, LOOKUP)
    assert sorted(told) == sorted(
        [
            ("nhs", person_id("9990000018"), b"9990000018"),
            ("local", local(b"RAJ|episode|E1"), b"RAJ|episode|E1"),
            ("local", local(b"RAJ|spell|S1"), b"RAJ|spell|S1"),
        ]
    )
    told.clear()
    pseudonymise_row("cld", cld_row(), recording, LOOKUP)  # an invalid number is not hashed
    assert told == [("local", local(b"E10000012|person|P0000001"), b"E10000012|person|P0000001")]


# ----------------------------------------------------------------------------------------------------------
# Whatever the row, no identifiable value reaches the output


def _valid_number(nine: int) -> str | None:
    first = f"{nine:09d}"
    digit = nhs_check_digit(first)
    number = f"{first}{digit}"
    return number if digit is not None and len(set(number)) > 1 else None


valid_numbers = st.integers(100_000_000, 999_999_999).map(_valid_number).filter(bool)
spellings = st.sampled_from([lambda n: n, lambda n: f"{n[:3]} {n[3:6]} {n[6:]}", lambda n: f"{n[:3]}-{n[3:6]}-{n[6:]}"])
nhs_numbers = st.one_of(
    st.builds(lambda n, spell: spell(n), valid_numbers, spellings),
    st.text(alphabet=string.digits + " -", min_size=8, max_size=13),
    st.just(""),
)
dates_of_birth = st.one_of(
    st.dates(date(1900, 1, 1), date(2010, 12, 31)).map(date.isoformat),
    st.dates(date(1900, 1, 1), date(2010, 12, 31)).map(lambda d: d.strftime("%d/%m/%Y")),
    st.from_regex(r"\A19[0-9]{2}-[0-9]{2}-3[0-9]\Z"),  # ISO-shaped, often not in the calendar
)
postcodes = st.one_of(st.just("CM1 1AA"), st.just("cm11aa"), st.from_regex(r"\A[A-Z]{1,2}[0-9]{1,2} [0-9][A-Z]{2}\Z"))
local_ids = st.text(alphabet=string.ascii_letters + string.digits + "/_-", min_size=1, max_size=16)
free_text = st.text(alphabet=string.ascii_letters + " '", min_size=1, max_size=20)


def _values(row: dict[str, str]) -> set[str]:
    return {v.strip() for v in row.values() if v.strip()}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    feed=st.sampled_from(["gp_register", "apc", "cld", "optouts"]),
    number=nhs_numbers,
    dob=dates_of_birth,
    postcode=postcodes,
    epikey=local_ids,
    spell=local_ids,
    person=local_ids,
    forename=free_text,
    phone=free_text,
)
def test_no_nhs_number_date_of_birth_postcode_or_local_id_reaches_the_output(
    feed, number, dob, postcode, epikey, spell, person, forename, phone
):
    template = {"gp_register": gp_row, "apc": apc_row, "cld": cld_row, "optouts": lambda: {"nhs_number": ""}}[feed]()
    fixed = _values(template)
    identifiable = {"nhs_number": number}
    if feed != "optouts":
        identifiable.update(date_of_birth=dob, postcode=postcode)
    if feed == "apc":
        identifiable.update(epikey=epikey, spell_id=spell)
    if feed == "cld":
        identifiable.update(la_person_unique_identifier=person)
    secrets_ = {v.strip() for v in [*identifiable.values(), forename, phone] if v.strip()}
    secrets_ |= {re.sub(r"[\s-]", "", v) for v in secrets_} - {""}
    # A generated value that happens to equal, or sit inside, a value sent in clear proves nothing.
    assume(not any(s in f for s in secrets_ for f in fixed))
    row = {**template, **identifiable, "forename": forename, "home_phone": phone}

    out = pseudonymise_row(feed, row, PSEUDO, LOOKUP)
    # What the row is meant to carry whatever was sent is no leak when a generated value happens to spell it: the
    # year and month of birth (a local id `8` beside a birth month `8`), the check's word (a phone number `invalid`),
    # the area from the lookup and the key's version.
    # Each is first held to what it may be, so that a leak into one of them is caught, not assumed away.
    assert out["nhs_number_check"] in {"valid", "test_range", "missing", "invalid"}
    assert out[KEY_VERSION_COLUMN] == PSEUDO.key_version
    if feed != "optouts":
        assert re.fullmatch(r"([0-9]{4})?", out["birth_year"]) and re.fullmatch(r"([0-9]{1,2})?", out["birth_month"])
        assert (out["lsoa_code"], out["locality_code"]) in {("", ""), ("E01990001", "E07000070")}
    meant = {out.get(c) for c in ("birth_year", "birth_month", "nhs_number_check", "lsoa_code", "locality_code")}
    meant.add(out[KEY_VERSION_COLUMN])
    assume(not any(s == m or (len(s) >= 6 and s in m) for s in secrets_ for m in meant if m))

    assert list(out) == list(FEEDS_BY_NAME[feed].pseudonymised)  # no column outside the contract, none identifiable
    for value in out.values():
        assert value not in secrets_
        assert not any(s in value for s in secrets_ if len(s) >= 6)
    assert out["person_id"] == "" or HEX64.match(out["person_id"])


# ----------------------------------------------------------------------------------------------------------
# The command


def _write(path: Path, header, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def folders(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    _write(
        source / "ref_postcode_lookup.csv",
        ("postcode", "lsoa_code", "locality_code", "locality_name"),
        [("CM1 1AA", "E01990001", "E07000070", "Chelmsford")],
    )
    return source, out


def _apc_file(folder: Path, episodes: int, name: str = "apc_RAJ_20250930.csv") -> Path:
    header = ["forename"] + list(FEEDS_BY_NAME["apc"].written)
    numbers = (n for n in (_valid_number(999_000_000 + i) for i in range(10 * episodes + 100)) if n)

    def rows():
        for i in range(episodes):
            row = apc_row(epikey=f"E{i}", spell_id=f"S{i // 2}", nhs_number=next(numbers))
            yield ["Alice"] + [row[c] for c in FEEDS_BY_NAME["apc"].written]

    return _write(folder / name, header, rows())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_command_writes_the_pseudonymised_extract_and_says_what_it_did(folders):
    source, out = folders
    path = _apc_file(source, 5)
    told: list[str] = []
    summary = pseudonymise_extract(
        path,
        out,
        source / "ref_postcode_lookup.csv",
        pseudonymiser=PSEUDO,
        progress=told.append,
        every_rows=2,
        every_seconds=0,
    )
    written = out / path.name
    with written.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == FEEDS_BY_NAME["apc"].header and len(rows) == 6
    assert summary.rows_written == 5 and summary.test_range == 5 and summary.dropped_columns == ["forename"]
    assert told and all("rows/s" in line for line in told)
    text = summary_text(summary) + "\n".join(told)
    assert "forename" in text and PSEUDO.key_version in text and KEY_HEX not in text
    with path.open(newline="") as handle:  # forename, epikey, spell_id, nhs_number, date_of_birth, postcode
        clear = {v for row in list(csv.reader(handle))[1:] for v in (row[0], row[1], row[2], row[3], row[5], row[7])}
    assert not clear & {v for row in rows for v in row}
    assert oct(written.stat().st_mode & 0o777) == "0o600" and _leftovers(out) == []


def test_every_row_written_says_the_version_of_the_key_that_made_it_never_the_key(folders):
    source, out = folders
    path = _apc_file(source, 4)
    pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    with (out / path.name).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {row["linkage_key_version"] for row in rows} == {PSEUDO.key_version}
    assert re.fullmatch(r"k-[0-9a-f]{12}", PSEUDO.key_version)
    assert KEY_HEX not in (out / path.name).read_text()


OTHER = Pseudonymiser(LinkageKey.from_hex("a1" * 32, "test"))


@pytest.mark.parametrize(
    "row, said",
    [
        ({"person_id": "ab" * 32, "linkage_key_version": PSEUDO.key_version}, None),
        ({"person_id": "ab" * 32, "linkage_key_version": f" {PSEUDO.key_version} "}, None),
        (
            {"person_id": "ab" * 32, "linkage_key_version": OTHER.key_version},
            f"made under linkage key version {OTHER.key_version}",
        ),
        ({"person_id": "ab" * 32}, "has no linkage_key_version column"),
        ({"person_id": "ab" * 32, "linkage_key_version": " "}, "empty linkage_key_version"),
        ({"person_id": "ab" * 32, "linkage_key_version": "9434765919"}, "not a key version (not shown)"),
    ],
)
def test_a_row_pseudonymised_at_source_must_say_it_was_made_under_the_loading_key(row, said):
    problem = source_key_problem(row, PSEUDO.key_version)
    if said is None:
        assert problem is None
        return
    assert said in problem and f"the loading key is version {PSEUDO.key_version}" in problem
    assert "ab" * 32 not in problem and "9434765919" not in problem and KEY_HEX not in problem


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", KEY_HEX)
    monkeypatch.delenv("POPHEALTH_LINKAGE_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # main() sets it when unset: keep it restored
    return monkeypatch


def test_the_cli_writes_the_extract_and_prints_its_summary(folders, cli_env, capsys):
    source, out = folders
    path = _apc_file(source, 3)
    lookup = str(source / "ref_postcode_lookup.csv")
    assert main(["pseudonymise", str(path), str(out / path.name), "--lookup", lookup]) == 0
    printed = capsys.readouterr()
    assert "rows written" in printed.out and "3" in printed.out and "forename" in printed.out
    assert (out / path.name).is_file()


def test_without_a_key_nothing_is_written(folders, cli_env, capsys):
    cli_env.delenv("POPHEALTH_LINKAGE_KEY")
    source, out = folders
    path = _apc_file(source, 3)
    assert main(["pseudonymise", str(path), str(out), "--lookup", str(source / "ref_postcode_lookup.csv")]) == 2
    assert "no linkage key" in capsys.readouterr().err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["ref_postcode_lookup.csv", "ref_population_2025.csv"])
def test_reference_files_are_refused(folders, cli_env, capsys, name):
    source, out = folders
    path = source / name
    if not path.exists():
        _write(path, ("lsoa_code", "sex", "age", "population"), [("E01990001", "1", "0", "10")])
    assert main(["pseudonymise", str(path), str(out), "--lookup", str(source / "ref_postcode_lookup.csv")]) == 2
    assert "reference data, not personal" in capsys.readouterr().err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "out_name, message",
    [
        (None, "overwrite the identifiable input"),
        ("apc_RDE_20250930.csv", "named like the input"),
        ("episodes.csv", "named like the input"),
    ],
)
def test_the_output_is_checked_before_anything_is_read(folders, out_name, message):
    source, out = folders
    path = _apc_file(source, 1)
    target = path if out_name is None else out / out_name
    with pytest.raises(AtSourceRefused, match=message):
        pseudonymise_extract(path, target, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    assert list(out.iterdir()) == []


def test_a_personal_feed_needs_the_lookup_and_the_opt_out_list_does_not(folders):
    source, out = folders
    with pytest.raises(AtSourceRefused, match="--lookup"):
        pseudonymise_extract(_apc_file(source, 1), out, None, pseudonymiser=PSEUDO)
    optouts = _write(source / "optouts_20250930.csv", ("nhs_number",), [("9434765919",), ("9434765918",)])
    summary = pseudonymise_extract(optouts, out, None, pseudonymiser=PSEUDO)
    assert summary.rows_written == 2 and summary.unlinked == {"invalid": 1}
    version = PSEUDO.key_version
    expected = (
        f"person_id,nhs_number_check,linkage_key_version\n{person_id('9434765919')},valid,{version}\n"
        f",invalid,{version}\n"
    )
    assert (out / optouts.name).read_text() == expected


@pytest.mark.parametrize(
    "header, message",
    [
        (
            (
                "nhs_number",
                "sex",
                "postcode",
                "gp_practice_code",
                "registration_start_date",
                "registration_end_date",
                "date_of_death",
            ),
            r"missing required column\(s\): date_of_birth",
        ),
        (
            (
                "person_id",
                "birth_year",
                "sex",
                "lsoa_code",
                "gp_practice_code",
                "registration_start_date",
                "registration_end_date",
                "date_of_death",
            ),
            "pseudonymised already",
        ),
    ],
)
def test_a_file_that_is_not_an_identifiable_extract_gets_the_loaders_message(folders, header, message):
    source, out = folders
    path = _write(source / "gp_register_20250930.csv", header, [["x"] * len(header)])
    with pytest.raises(FileRejected, match=message):
        pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    assert list(out.iterdir()) == []


def test_a_bad_value_is_emptied_and_counted_and_a_ragged_row_skipped_the_file_goes_on(folders):
    source, out = folders
    good = [gp_row()[c] for c in FEEDS_BY_NAME["gp_register"].written]
    rows = [good, [gp_row(date_of_birth="17/03/1950")[c] for c in FEEDS_BY_NAME["gp_register"].written], good[:5], good]
    path = _write(source / "gp_register_20250930.csv", FEEDS_BY_NAME["gp_register"].written, rows)
    summary = pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    assert summary.rows_written == 3 and summary.rows_skipped == 1 and summary.first_skipped_row == 3
    assert summary.emptied == {("date_of_birth", "date is not in ISO YYYY-MM-DD form"): 1}
    text = summary_text(summary)
    assert "17/03/1950" not in text and "date_of_birth" in text and "data row 3" in text


def _broken_at_the_end(source: Path, episodes: int) -> Path:
    path = _apc_file(source, episodes)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('"an unbalanced quote,E9\n')
    return path


def test_a_file_that_breaks_half_way_leaves_no_output_and_an_earlier_output_untouched(folders):
    source, out = folders
    path = _broken_at_the_end(source, 500)
    with pytest.raises(FileRejected, match="unbalanced quote"):
        pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    assert list(out.iterdir()) == []
    (out / path.name).write_text("the earlier output\n")
    with pytest.raises(FileRejected):
        pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    assert (out / path.name).read_text() == "the earlier output\n" and _leftovers(out) == []


def test_an_interruption_leaves_no_output(folders):
    source, out = folders
    path = _apc_file(source, 300)

    def interrupt(_text: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudonymise_extract(
            path,
            out,
            source / "ref_postcode_lookup.csv",
            pseudonymiser=PSEUDO,
            progress=interrupt,
            every_rows=100,
            every_seconds=0,
        )
    assert list(out.iterdir()) == []


def _peak_bytes(path: Path, out: Path, lookup: Path) -> int:
    tracemalloc.start()
    try:
        pseudonymise_extract(path, out, lookup, pseudonymiser=PSEUDO)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_command_streams_a_file_ten_times_larger_needs_no_more_memory(tmp_path, folders):
    source, _out = folders
    small_dir, large_dir = tmp_path / "small", tmp_path / "large"
    small_dir.mkdir()
    large_dir.mkdir()
    small = _apc_file(small_dir, 2_000)
    large = _apc_file(large_dir, 20_000)
    lookup = source / "ref_postcode_lookup.csv"
    for name in ("out_warm", "out_small", "out_large"):
        (tmp_path / name).mkdir()
    _peak_bytes(small, tmp_path / "out_warm", lookup)  # a first run, so that imports and caches are not counted
    small_peak = _peak_bytes(small, tmp_path / "out_small", lookup)
    large_peak = _peak_bytes(large, tmp_path / "out_large", lookup)
    assert large.stat().st_size > 9 * small.stat().st_size
    assert large_peak < small_peak * 1.25 + 64 * 1024, (small_peak, large_peak)


def test_the_summary_holds_counts_and_names_never_values(folders):
    source, out = folders
    path = _apc_file(source, 4)
    summary = pseudonymise_extract(path, out, source / "ref_postcode_lookup.csv", pseudonymiser=PSEUDO)
    text = summary_text(summary)
    sent = io.StringIO(path.read_text())
    values = {v for row in list(csv.reader(sent))[1:] for v in row if len(v) >= 5 and not v.startswith("20")}
    assert values and not any(v in text for v in values)
    assert os.path.basename(str(summary.out)) == path.name
