"""marts.person, one rule per person: a hand-built landing folder whose right answer is worked out by hand.

Each person below exists to show one rule of the spine (docs/contract/marts.md, and the decisions in
docs/contract/decisions.md and docs/marts.md, "Who is who"). The extracts go through the real loader (validate,
pseudonymise, opt-outs) into a real PostgreSQL, and the real dbt project builds the marts; Airflow is left to the
end-to-end test. The as-of date is the last period end of the extracts: 2025-09-30.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
from pathlib import Path

import pytest

from pophealth.contract.feeds import FEEDS_BY_NAME
from pophealth.contract.identifiers import nhs_check_digit
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import Pseudonymiser

from .conftest import marts_built_from, published_id

pytestmark = pytest.mark.integration

KEY = "3c" * 32


def _valid_numbers():
    for stem in range(999000001, 999999999):
        digit = nhs_check_digit(str(stem))
        if digit is not None:
            yield f"{stem}{digit}"


_numbers = _valid_numbers()
# One NHS number per person of the story (all in the 999 test range).
A, B, C, E_UNUSED, F, G, H, I, J_UNUSED, K, N = (next(_numbers) for _ in range(11))  # noqa: E741  (people A to N)
# L left the register and M died between the June and September register snapshots: in June's, not in September's.
L_LEFT, M_DIED = next(_numbers), next(_numbers)
D_INVALID = B[:9] + str((int(B[9]) + 1) % 10)  # B's number with a wrong check digit: invalid


def transit(number: str) -> str:
    """The transit pseudonym of an NHS number (what raw and intermediate hold)."""
    return hmac.new(bytes.fromhex(KEY), number.encode(), hashlib.sha256).hexdigest()


def person_id(number: str) -> str:
    """The marts id of the person with this NHS number: the transit pseudonym keyed for secondary use."""
    return published_id("secondary_use", transit(number))


def local_transit(source: str, value: str) -> str:
    """The transit pseudonym of a source's local id (what raw and intermediate hold)."""
    return Pseudonymiser(LinkageKey.from_hex(KEY, "test")).local(source, value).value


def local_person(source: str, value: str) -> str:
    """The marts id of a person known only by a source's local id."""
    return published_id("secondary_use", local_transit(source, value))


def _write(path: Path, header, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _gp(number, dob, sex, postcode, practice, start="2010-01-01", end="", death=""):
    return [number, dob, sex, postcode, practice, start, end, death]


def _episode(
    epikey,
    spell,
    number,
    dob,
    sex,
    postcode,
    practice,
    admidate,
    disdate,
    epiorder=1,
    dismeth="1",
    disdest="19",
    admimeth="21",
):
    row = dict.fromkeys(FEEDS_BY_NAME["apc"].written, "")
    row.update(
        epikey=epikey,
        spell_id=spell,
        nhs_number=number,
        nhs_number_status="01",
        date_of_birth=dob,
        sex=sex,
        postcode=postcode,
        gp_practice_code=practice,
        procode="RAJ",
        admidate=admidate,
        disdate=disdate,
        epistart=admidate,
        epiend=disdate,
        epiorder=str(epiorder),
        admimeth=admimeth,
        admisorc="19",
        disdest=disdest,
        dismeth=dismeth,
        classpat="1",
        mainspef="300",
        tretspef="300",
        diag_01="J18.9",
    )
    return [row[c] for c in FEEDS_BY_NAME["apc"].written]


def _event(
    period_end,
    local_id,
    number,
    dob="1944-02-10",
    gender="Female",
    death="",
    start="2025-05-01",
    reference="R1",
    client_type="Service user",
):
    period_start = {"2025-06-30": "2024-07-01", "2025-09-30": "2024-10-01"}[period_end]
    row = dict.fromkeys(FEEDS_BY_NAME["cld"].written, "")
    row.update(
        LA_Code="E10000012",
        Reporting_Period_Start_Date=period_start,
        Reporting_Period_End_Date=period_end,
        Client_Type=client_type,
        LA_Person_Unique_Identifier=local_id,
        NHS_Number=number,
        Gender=gender,
        Date_of_Birth=dob,
        Date_of_Death=death,
        Postcode="CM2 2BB",
        Event_Type="Service",
        Event_Reference=reference,
        Event_Start_Date=start,
        Service_Type="Long term support: Community",
        Service_Component="Home support or domiciliary care",
        Event_Outcome="Continuation of support or services",
    )
    return [row[c] for c in FEEDS_BY_NAME["cld"].written]


def build_landing(landing: Path) -> None:
    landing.mkdir(parents=True)
    _write(
        landing / "ref_postcode_lookup.csv",
        ("postcode", "lsoa_code", "locality_code", "locality_name"),
        [
            ("CM1 1AA", "E01021001", "E07000070", "Chelmsford"),
            ("CM2 2BB", "E01021002", "E07000070", "Chelmsford"),
            ("CO1 1CC", "E01021100", "E07000071", "Colchester"),
        ],
    )
    _write(
        landing / "ref_population_2025.csv",
        ("lsoa_code", "sex", "age", "population"),
        [("E01021001", "1", age, 10) for age in range(91)],
    )
    # G has opted out.
    _write(landing / "optouts_20250930.csv", ("nhs_number",), [(G,)])
    # The register as it was in June (each file is the whole register on its date): September's says who is
    # registered now. B lived in Colchester then; L and M are in June's register only.
    _write(
        landing / "gp_register_20250630.csv",
        FEEDS_BY_NAME["gp_register"].written,
        [
            _gp(A, "1950-10-15", "1", "CM1 1AA", "F81001"),
            _gp(B, "1940-09-02", "2", "CO1 1CC", "F81100"),
            _gp(L_LEFT, "1970-07-07", "1", "CM1 1AA", "F81001"),
            _gp(M_DIED, "1930-03-03", "2", "CM1 1AA", "F81001"),
        ],
    )
    _write(
        landing / "gp_register_20250930.csv",
        FEEDS_BY_NAME["gp_register"].written,
        [
            _gp(A, "1950-10-15", "1", "CM1 1AA", "F81001"),  # A: born October 1950
            _gp(B, "1940-09-02", "2", "CM1 1AA", "F81001"),  # B: the register wins
            _gp(G, "1960-01-01", "1", "CM1 1AA", "F81001"),  # G: opted out
            _gp(H, "1980-03-03", "2", "CO1 1CC", "F81100", end="2025-06-30"),  # H: left the practice
            _gp(I, "1990-04-04", "1", "CO1 1CC", "F81100", end="2025-12-31"),  # I: leaves after the as-of date
            _gp(
                N[:3] + " " + N[3:6] + " " + N[6:], "2001-09-30", "2", "CM1 1AA", "F81001", death="2025-09-30"
            ),  # N: died on the as-of date
        ],
    )
    _write(
        landing / "apc_RAJ_20250930.csv",
        FEEDS_BY_NAME["apc"].written,
        [
            # B in hospital with a different postcode and practice: the register's values win.
            _episode("E1", "S1", B, "1940-09-02", "2", "CO1 1CC", "F81100", "2025-09-01", "2025-09-05"),
            # C is in no register: two spells, one person; attributes from the latest episode.
            _episode("E2", "S2", C, "1975-06-06", "1", "CM2 2BB", "F81002", "2025-07-01", "2025-07-03"),
            _episode("E3", "S3", C, "1975-06-06", "1", "CO1 1CC", "F81100", "2025-09-10", "2025-09-12"),
            # D: an invalid NHS number on a two-episode spell: one person known only by the spell.
            _episode("E4", "S4", D_INVALID, "1930-01-01", "2", "CM1 1AA", "F81001", "2025-09-01", "2025-09-03"),
            _episode(
                "E5", "S4", D_INVALID, "1930-01-01", "2", "CM1 1AA", "F81001", "2025-09-03", "2025-09-08", epiorder=2
            ),
            # G's admission is removed with the opt-out.
            _episode("E6", "S6", G, "1960-01-01", "1", "CM1 1AA", "F81001", "2025-09-01", "2025-09-02"),
            # K died in hospital: the date of death is the discharge date.
            _episode(
                "E7",
                "S7",
                K,
                "1935-05-05",
                "1",
                "CM2 2BB",
                "F81002",
                "2025-09-20",
                "2025-09-25",
                dismeth="4",
                disdest="79",
            ),
        ],
    )
    _write(
        landing / "cld_E10000012_20250630.csv",
        FEEDS_BY_NAME["cld"].written,
        [
            # B's event, first submission (Release 1 client type), repeated in the next quarter.
            _event("2025-06-30", "EC0000002", B, reference="old-ref", client_type="Service User"),
        ],
    )
    _write(
        landing / "cld_E10000012_20250930.csv",
        FEEDS_BY_NAME["cld"].written,
        [
            _event("2025-09-30", "EC0000002", B, reference="new-ref"),
            # E: no NHS number at all: a person known by the council's id.
            _event("2025-09-30", "EC0000005", "", gender="Female"),
            # F: the number on one row, missing on the other: one person.
            _event("2025-09-30", "EC0000006", F, gender="Male", start="2025-04-01"),
            _event("2025-09-30", "EC0000006", "", gender="Male", start="2025-08-01"),
            # G (opted out) has a row without a number: it cannot be matched to the opt-out, so it stays.
            _event("2025-09-30", "EC0000007", "", gender="Male"),
            # J: social care only, died (no number).
            _event("2025-09-30", "EC0000010", "", gender="Male", dob="1931-12-12", death="2025-08-15"),
        ],
    )


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    import psycopg

    home = tmp_path_factory.mktemp("person-rules")
    build_landing(home / "landing")
    with marts_built_from(home / "landing", home, KEY, timeout=600) as url, psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM marts.person")
        names = [d.name for d in cur.description]
        rows = {row[0]: dict(zip(names, row, strict=False)) for row in cur.fetchall()}
        ranked = {row[0] for row in conn.execute("SELECT person_id FROM marts.risk_stratification")}
        events = conn.execute(
            "SELECT client_type, submissions, latest_reporting_period_end_date::text "
            "FROM intermediate.int_cld_event_deduplicated WHERE la_person_key = %s",
            (local_transit("E10000012", "person|EC0000002"),),
        ).fetchall()
    yield {"people": rows, "b_events": events, "ranked": ranked}


def test_one_row_per_person_across_the_feeds(people):
    # A B G(council id only) H I N from the register and social care; C D K from hospital; E F J from social care;
    # L and M from June's register.
    assert len(people["people"]) == 14


def test_age_band_is_at_the_as_of_date_as_if_born_on_the_first_of_the_month(people):
    a = people["people"][person_id(A)]
    assert (a["birth_year"], a["age_band"]) == (1950, "65-74")  # October 1950: 74 on 2025-09-30
    b = people["people"][person_id(B)]
    assert b["age_band"] == "85+"  # September 1940: 85 on 2025-09-30


def test_the_register_wins_over_hospital_and_social_care(people):
    b = people["people"][person_id(B)]
    assert (b["lsoa_code"], b["gp_practice_code"], b["sex"]) == ("E01021001", "F81001", "2")
    assert b["in_hospital_data"] and b["in_social_care_data"] and b["is_linked"]
    assert b["link_method"] == "nhs_number" and b["is_registered"]


def test_someone_in_no_register_takes_the_latest_hospital_record(people):
    c = people["people"][person_id(C)]
    assert (c["lsoa_code"], c["gp_practice_code"], c["sex"]) == ("E01021100", "F81100", "1")
    assert not c["is_registered"] and c["in_hospital_data"] and not c["in_social_care_data"]


def test_an_invalid_nhs_number_makes_a_person_of_the_spell(people):
    d = people["people"][local_person("RAJ", "spell|S4")]
    assert d["link_method"] == "local_id_only" and d["in_hospital_data"] and not d["is_linked"]
    assert d["age_band"] == "85+"


def test_a_missing_nhs_number_makes_a_person_of_the_council_id(people):
    e = people["people"][local_person("E10000012", "person|EC0000005")]
    assert (e["link_method"], e["sex"], e["in_social_care_data"]) == ("local_id_only", "2", True)


def test_a_council_person_with_the_number_on_one_row_is_one_person(people):
    f = people["people"][person_id(F)]
    assert f["link_method"] == "nhs_number" and f["sex"] == "1"
    assert local_person("E10000012", "person|EC0000006") not in people["people"]


def test_an_opted_out_person_is_absent_except_where_no_number_tied_the_row_to_them(people):
    assert person_id(G) not in people["people"]
    g_council = people["people"][local_person("E10000012", "person|EC0000007")]
    assert not g_council["in_hospital_data"] and g_council["link_method"] == "local_id_only"


def test_registration_ends_and_deaths_on_the_as_of_date(people):
    assert not people["people"][person_id(H)]["is_registered"]  # left on 2025-06-30
    assert people["people"][person_id(I)]["is_registered"]  # leaves on 2025-12-31
    n = people["people"][person_id(N)]  # died on the as-of date
    assert not n["is_registered"] and str(n["date_of_death"]) == "2025-09-01"  # published as its month


def test_deaths_known_only_to_social_care_or_hospital(people):
    j = people["people"][local_person("E10000012", "person|EC0000010")]
    assert str(j["date_of_death"]) == "2025-08-01"
    k = people["people"][person_id(K)]
    assert str(k["date_of_death"]) == "2025-09-01" and not k["is_registered"]


def test_a_repeated_social_care_event_is_kept_once_from_its_latest_submission(people):
    # Submitted in June (Release 1 "Service User") and again in September with another Event_Reference.
    assert people["b_events"] == [("Service user", 2, "2025-09-30")]


def test_the_latest_register_snapshot_says_who_is_registered_now(people):
    # L (left) and M (died) are in June's snapshot, not in September's: not registered, and not ranked for risk,
    # though the two files' rows are both held (two snapshots do not stack).
    for number in (L_LEFT, M_DIED):
        assert not people["people"][person_id(number)]["is_registered"]
        assert person_id(number) not in people["ranked"]
    assert people["people"][person_id(A)]["is_registered"] and person_id(A) in people["ranked"]
    # B's address is September's, not June's.
    assert people["people"][person_id(B)]["lsoa_code"] == "E01021001"
