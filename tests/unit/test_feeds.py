"""How one row of each feed becomes a warehouse row, is quarantined with a reason, or is removed by an opt-out."""

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pophealth.contract.feeds import FEEDS_BY_NAME
from pophealth.contract.identifiers import NhsNumber
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import Area, PostcodeLookup, Pseudonymiser
from pophealth.ingest.at_source import pseudonymise_row
from pophealth.ingest.feeds import TRANSFORMS, RowContext, RowProblem, identity_columns_present
from pophealth.ingest.landing import FileRejected

KEY = LinkageKey.from_hex("3c" * 32, "test")
PSEUDO = Pseudonymiser(KEY)
LOOKUP = PostcodeLookup({"CM11AA": Area("E01990001", "E07000070")}, {"E01990001": "E07000070"})
OPTED_OUT = PSEUDO.person_id(NhsNumber("9990000026")).value


def ctx(provider=None):
    return RowContext(PSEUDO, LOOKUP, frozenset({OPTED_OUT}), provider, date(2025, 9, 30))


def apc(**overrides):
    row = {c: "" for c in FEEDS_BY_NAME["apc"].contract_columns if c != "person_id"}
    row.update(
        epikey="E1",
        spell_id="S1",
        nhs_number="999 000 0018",
        nhs_number_status="01",
        date_of_birth="1940-06-15",
        sex="2",
        postcode="cm1 1aa",
        gp_practice_code="F81001",
        procode="RAJ",
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


def test_an_episode_is_pseudonymised_and_reduced():
    out = TRANSFORMS["apc"](apc(), ctx("RAJ"))
    assert out["nhs_number_key"] == PSEUDO.person_id(NhsNumber("9990000018")).value
    assert out["nhs_number_check"] == "test_range"
    assert out["spell_key"] == PSEUDO.local("RAJ", "spell|S1").value
    assert (out["birth_year"], out["birth_month"]) == (1940, 6)
    assert (out["lsoa_code"], out["locality_code"]) == ("E01990001", "E07000070")
    assert out["diag_01"] == "S72.0"  # normalised in dbt staging, stored as sent
    assert "1940-06-15" not in map(str, out.values()) and "CM1 1AA" not in map(str, out.values())


def test_an_episode_with_an_invalid_nhs_number_is_kept_unlinked():
    out = TRANSFORMS["apc"](apc(nhs_number="9990000019"), ctx("RAJ"))
    assert out["nhs_number_key"] is None and out["nhs_number_check"] == "invalid"


def test_an_opted_out_persons_row_is_loaded_and_counted_for_direct_care_only():
    # Contract v2: the opt-out keeps them out of secondary use at the marts build, not out of their own care.
    context = ctx("RAJ")
    values = TRANSFORMS["apc"](apc(nhs_number="999-000-0026"), context)
    assert values["nhs_number_key"] == OPTED_OUT and context.counters["opted_out"] == 1


@pytest.mark.parametrize(
    "overrides, column, reason",
    [
        ({"admidate": "03/01/2025"}, "admidate", "ISO"),
        ({"admidate": "2025-02-30"}, "admidate", "calendar"),
        ({"epistart": ""}, "epistart", "missing"),
        ({"epiorder": "x"}, "epiorder", "whole number"),
        ({"epiorder": "0"}, "epiorder", "1 or more"),
        ({"procode": "RDE"}, "procode", "file name"),
        ({"date_of_birth": "2030-01-01"}, "date_of_birth", "after the extract"),
    ],
)
def test_rows_that_cannot_be_loaded_are_quarantined_with_a_reason(overrides, column, reason):
    with pytest.raises(RowProblem) as raised:
        TRANSFORMS["apc"](apc(**overrides), ctx("RAJ"))
    assert raised.value.column == column and reason in raised.value.reason
    assert all(str(v) not in raised.value.reason for v in overrides.values() if v)


def test_a_source_pseudonym_is_accepted_in_place_of_the_nhs_number():
    row = apc()
    del row["nhs_number"]
    row["person_id"] = "AB" * 32
    row["linkage_key_version"] = KEY.version
    out = TRANSFORMS["apc"](row, ctx("RAJ"))
    assert out["nhs_number_key"] == "ab" * 32 and out["nhs_number_check"] == "source_pseudonym"


def test_a_register_row_without_a_valid_number_is_quarantined():
    row = {
        "nhs_number": "",
        "date_of_birth": "1950-01-01",
        "sex": "1",
        "postcode": "CM1 1AA",
        "gp_practice_code": "F81001",
        "registration_start_date": "2000-01-01",
        "registration_end_date": "",
        "date_of_death": "",
    }
    with pytest.raises(RowProblem, match="local id"):
        TRANSFORMS["gp_register"](row, ctx())


def test_a_social_care_row_is_followed_on_its_council_id():
    row = {c: "" for c in FEEDS_BY_NAME["cld"].contract_columns if c != "person_id"}
    row.update(
        la_code="E10000012",
        la_person_unique_identifier="P0000001",
        reporting_period_end_date="2025-06-30",
        event_type="Service",
        event_start_date="2025-01-01",
        unit_cost="12.50",
    )
    out = TRANSFORMS["cld"](row, ctx("E10000012"))
    assert out["nhs_number_key"] is None and out["nhs_number_check"] == "missing"
    assert out["la_person_key"] == PSEUDO.local("E10000012", "person|P0000001").value
    assert str(out["unit_cost"]) == "12.50"


# ----------------------------------------------------------------------------------------------------------
# One row path: an identifiable row and the same row pseudonymised at source load the same


def at_source(feed: str, row: dict) -> dict:
    """The row as `pophealth pseudonymise` writes it (the loader gets no period end there)."""
    return pseudonymise_row(feed, row, PSEUDO, LOOKUP)


def fate(feed: str, row: dict, provider=None):
    context = ctx(provider)
    try:
        outcome = TRANSFORMS[feed](row, context)
    except RowProblem as problem:
        outcome = ("quarantined", problem.column, problem.reason)
    return outcome, context.counters


def register(**overrides):
    row = {
        "nhs_number": "999 000 0018",
        "date_of_birth": "1950-01-31",
        "sex": "1",
        "postcode": "CM1 1AA",
        "gp_practice_code": "F81001",
        "registration_start_date": "2000-01-01",
        "registration_end_date": "",
        "date_of_death": "",
    }
    row.update(overrides)
    return row


def event(**overrides):
    row = {c: "" for c in FEEDS_BY_NAME["cld"].contract_columns if c != "person_id"}
    row.update(
        la_code="E10000012",
        la_person_unique_identifier="P0000001",
        reporting_period_end_date="2025-06-30",
        event_type="Service",
        event_start_date="2025-01-01",
        nhs_number="999-000-0018",
        date_of_birth="1944-02-10",
        postcode="cm11aa",
    )
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    "feed, row, provider",
    [
        ("apc", apc(), "RAJ"),
        ("apc", apc(nhs_number="9990000019", procode="raj", postcode="ZZ1 1ZZ"), "RAJ"),  # unlinked, unknown postcode
        ("apc", apc(nhs_number="999-000-0026"), "RAJ"),  # opted out
        ("apc", apc(epiorder="0"), "RAJ"),
        ("cld", event(), "E10000012"),
        ("cld", event(nhs_number="", date_of_birth=""), "E10000012"),
        ("gp_register", register(), None),
        ("gp_register", register(nhs_number="9990000019"), None),  # quarantined: no local id
        ("optouts", {"nhs_number": "9990000018"}, None),
        ("optouts", {"nhs_number": "12345"}, None),
    ],
)
def test_a_row_pseudonymised_at_source_loads_as_the_identifiable_row_does(feed, row, provider):
    assert fate(feed, at_source(feed, row), provider) == fate(feed, row, provider)


@settings(max_examples=200)
@given(
    number=st.sampled_from(["9990000018", "999 000 0026", "9990000019", "", "4010232137"]),
    dob=st.dates(date(1900, 1, 1), date(2025, 9, 30)).map(date.isoformat),
    postcode=st.sampled_from(["CM1 1AA", "cm11aa", "ZZ9 9ZZ", ""]),
    procode=st.sampled_from(["RAJ", "raj", " RAJ ", "RDE", ""]),
    epikey=st.text(alphabet="AZaz09-/ ", max_size=8),
    spell=st.text(alphabet="AZaz09", max_size=8),
)
def test_both_roads_give_the_same_row_or_the_same_quarantine(number, dob, postcode, procode, epikey, spell):
    row = apc(nhs_number=number, date_of_birth=dob, postcode=postcode, procode=procode, epikey=epikey, spell_id=spell)
    assert fate("apc", at_source("apc", row), "RAJ") == fate("apc", row, "RAJ")


def sent(feed="gp_register", **values):
    """A row of a file pseudonymised at source, as the loader reads it."""
    row = at_source(feed, register() if feed == "gp_register" else apc())
    row.update(values)
    return row


def test_local_ids_sent_as_pseudonyms_are_kept_and_others_are_pseudonymised_on_the_spot():
    out = TRANSFORMS["apc"](sent("apc", epikey="E1", spell_id="ab" * 32), ctx("RAJ"))
    assert out["episode_key"] == PSEUDO.local("RAJ", "episode|E1").value
    assert out["spell_key"] == "ab" * 32


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"birth_year": "1950", "birth_month": "01"}, (1950, 1)),
        ({"birth_year": "1950", "birth_month": ""}, (1950, None)),
        ({"birth_year": "", "birth_month": ""}, (None, None)),
        ({"birth_year": "", "birth_month": "", "date_of_birth": "1961-07-31"}, (1961, 7)),
    ],
)
def test_a_birth_year_sent_by_the_source_is_used(values, expected):
    out = TRANSFORMS["gp_register"](sent(**values), ctx())
    assert (out["birth_year"], out["birth_month"]) == expected


@pytest.mark.parametrize(
    "values, column, reason",
    [
        ({"birth_year": "50"}, "birth_year", "4 digits"),
        ({"birth_month": "13"}, "birth_month", "1 to 12"),
        ({"birth_month": "0"}, "birth_month", "1 to 12"),
        ({"birth_year": "2025", "birth_month": "10"}, "birth_year", "after the extract"),
        ({"person_id": "", "nhs_number_check": "valid"}, "person_id", "missing"),
        ({"nhs_number_check": "invalid"}, "person_id", "no valid NHS number"),
        ({"nhs_number_check": "checked"}, "nhs_number_check", "not one of"),
        ({"person_id": "x" * 64}, "person_id", "64 hexadecimal"),
        ({"person_id": "", "nhs_number_check": "invalid"}, "nhs_number", "no local id"),
    ],
)
def test_values_sent_by_the_source_are_checked(values, column, reason):
    with pytest.raises(RowProblem) as raised:
        TRANSFORMS["gp_register"](sent(**values), ctx())
    assert raised.value.column == column and reason in raised.value.reason


@pytest.mark.parametrize(
    "lsoa, expected",
    [
        ("E01990001", ("E01990001", "E07000070")),
        ("e01990001 ", ("E01990001", "E07000070")),
        ("E01999999", (None, None)),
        ("", (None, None)),
    ],
)
def test_an_lsoa_sent_by_the_source_counts_only_if_the_lookup_knows_it(lsoa, expected):
    out = TRANSFORMS["gp_register"](sent(lsoa_code=lsoa, locality_code="X"), ctx())
    assert (out["lsoa_code"], out["locality_code"]) == expected


def test_an_opt_out_is_counted_on_a_row_pseudonymised_at_source():
    context = ctx()
    TRANSFORMS["gp_register"](sent(person_id=OPTED_OUT, nhs_number_check="test_range"), context)
    assert context.counters["opted_out"] == 1


GP_PSEUDONYMISED = [
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
]


@pytest.mark.parametrize(
    "feed, columns, problem",
    [
        ("gp_register", GP_PSEUDONYMISED, None),
        (
            "gp_register",
            [c for c in GP_PSEUDONYMISED if c not in ("nhs_number_check", "birth_month", "locality_code")],
            None,
        ),
        ("gp_register", [c if c != "birth_year" else "date_of_birth" for c in GP_PSEUDONYMISED], None),
        (
            "gp_register",
            [c for c in GP_PSEUDONYMISED if c not in ("birth_year", "lsoa_code")],
            "missing required column(s): birth_year (or date_of_birth), lsoa_code (or postcode)",
        ),
        # identifiable files: the messages they have always had
        (
            "gp_register",
            [
                "nhs_number",
                "postcode",
                "gp_practice_code",
                "registration_start_date",
                "registration_end_date",
                "date_of_death",
            ],
            "missing required column(s): date_of_birth, sex",
        ),
        (
            "gp_register",
            ["sex"],
            "missing required column(s): nhs_number, date_of_birth, postcode, gp_practice_code, "
            "registration_start_date, registration_end_date, date_of_death",
        ),
        (
            "apc",
            [c for c in FEEDS_BY_NAME["apc"].contract_columns if c not in ("nhs_number", "person_id")],
            "missing required column: nhs_number (or person_id when pseudonymised at source)",
        ),
        ("optouts", ["number"], "missing required column(s): nhs_number"),
        ("optouts", ["person_id"], None),
        ("ref_population", ["lsoa_code"], None),  # reference feeds: open_extract checks them
    ],
)
def test_the_header_a_file_needs_depends_on_its_form(feed, columns, problem):
    assert identity_columns_present(FEEDS_BY_NAME[feed], columns) == problem


def test_a_row_pseudonymised_at_source_under_another_key_refuses_the_whole_file():
    other = Pseudonymiser(LinkageKey.from_hex("a1" * 32, "test"))
    with pytest.raises(FileRejected, match=f"version {other.key_version}.*version {KEY.version}"):
        TRANSFORMS["gp_register"](sent(linkage_key_version=other.key_version), ctx())
    without = sent()
    del without["linkage_key_version"]
    with pytest.raises(FileRejected, match="no linkage_key_version column"):
        TRANSFORMS["gp_register"](without, ctx())
