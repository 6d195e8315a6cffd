"""How one row of each feed becomes a warehouse row, is quarantined with a reason, or is removed by an opt-out."""

from datetime import date

import pytest

from pophealth.feeds import FEED_SPECS, OptedOut, RowContext, RowProblem
from pophealth.identifiers import NhsNumber
from pophealth.keys import LinkageKey
from pophealth.pseudonymise import Area, PostcodeLookup, Pseudonymiser

KEY = LinkageKey.from_hex("3c" * 32, "test")
PSEUDO = Pseudonymiser(KEY)
LOOKUP = PostcodeLookup({"CM11AA": Area("E01990001", "E07000070")}, {"E01990001": "E07000070"})
OPTED_OUT = PSEUDO.person_id(NhsNumber("9990000026")).value


def ctx(provider=None):
    return RowContext(PSEUDO, LOOKUP, frozenset({OPTED_OUT}), provider, date(2025, 9, 30))


def apc(**overrides):
    row = {c: "" for c in FEED_SPECS["apc"].contract_columns if c != "person_id"}
    row.update(epikey="E1", spell_id="S1", nhs_number="999 000 0018", nhs_number_status="01",
               date_of_birth="1940-06-15", sex="2", postcode="cm1 1aa", gp_practice_code="F81001", procode="RAJ",
               admidate="2025-01-03", disdate="2025-01-10", epistart="2025-01-03", epiend="2025-01-10",
               epiorder="1", admimeth="21", diag_01="S72.0", diag_02="W19")
    row.update(overrides)
    return row


def as_dict(feed: str, values: tuple) -> dict:
    return dict(zip(FEED_SPECS[feed].table_columns, values))


def test_an_episode_is_pseudonymised_and_reduced():
    out = as_dict("apc", FEED_SPECS["apc"].transform(apc(), ctx("RAJ")))
    assert out["person_id"] == PSEUDO.person_id(NhsNumber("9990000018")).value
    assert out["nhs_number_check"] == "test_range"
    assert out["spell_key"] == PSEUDO.local("RAJ", "spell|S1").value
    assert (out["birth_year"], out["birth_month"]) == (1940, 6)
    assert (out["lsoa_code"], out["locality_code"]) == ("E01990001", "E07000070")
    assert out["diag_01"] == "S72.0"  # normalised in dbt staging, stored as sent
    assert "1940-06-15" not in map(str, out.values()) and "CM1 1AA" not in map(str, out.values())


def test_an_episode_with_an_invalid_nhs_number_is_kept_unlinked():
    out = as_dict("apc", FEED_SPECS["apc"].transform(apc(nhs_number="9990000019"), ctx("RAJ")))
    assert out["person_id"] is None and out["nhs_number_check"] == "invalid"


def test_an_opted_out_person_is_removed():
    with pytest.raises(OptedOut):
        FEED_SPECS["apc"].transform(apc(nhs_number="999-000-0026"), ctx("RAJ"))


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
        FEED_SPECS["apc"].transform(apc(**overrides), ctx("RAJ"))
    assert raised.value.column == column and reason in raised.value.reason
    assert all(str(v) not in raised.value.reason for v in overrides.values() if v)


def test_a_source_pseudonym_is_accepted_in_place_of_the_nhs_number():
    row = apc()
    del row["nhs_number"]
    row["person_id"] = "AB" * 32
    out = as_dict("apc", FEED_SPECS["apc"].transform(row, ctx("RAJ")))
    assert out["person_id"] == "ab" * 32 and out["nhs_number_check"] == "source_pseudonym"


def test_a_register_row_without_a_valid_number_is_quarantined():
    row = {"nhs_number": "", "date_of_birth": "1950-01-01", "sex": "1", "postcode": "CM1 1AA",
           "gp_practice_code": "F81001", "registration_start_date": "2000-01-01", "registration_end_date": "",
           "date_of_death": ""}
    with pytest.raises(RowProblem, match="local id"):
        FEED_SPECS["gp_register"].transform(row, ctx())


def test_a_social_care_row_is_followed_on_its_council_id():
    row = {c: "" for c in FEED_SPECS["cld"].contract_columns if c != "person_id"}
    row.update(la_code="E10000012", la_person_unique_identifier="P0000001", reporting_period_end_date="2025-06-30",
               event_type="Service", event_start_date="2025-01-01", unit_cost="12.50")
    out = as_dict("cld", FEED_SPECS["cld"].transform(row, ctx("E10000012")))
    assert out["person_id"] is None and out["nhs_number_check"] == "missing"
    assert out["la_person_key"] == PSEUDO.local("E10000012", "person|P0000001").value
    assert str(out["unit_cost"]) == "12.50"
