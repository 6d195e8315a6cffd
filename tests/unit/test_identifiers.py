"""NHS numbers, pseudonyms and ICD-10 codes as types: validation as the contract says, and no accidental printing."""

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pophealth.contract.identifiers import (
    Icd10Code,
    IdentifierError,
    NhsNumber,
    NhsNumberCheck,
    PersonId,
    check_nhs_number,
    nhs_check_digit,
)

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("9434765919", NhsNumberCheck.VALID),  # the NHS's published example
        ("943 476 5919", NhsNumberCheck.VALID),  # spaces are normalised away
        ("943-476-5919", NhsNumberCheck.VALID),  # so are hyphens
        ("9434765918", NhsNumberCheck.INVALID),  # wrong check digit
        ("943476591", NhsNumberCheck.INVALID),  # 9 digits
        ("94347659190", NhsNumberCheck.INVALID),  # 11 digits
        ("94347A5919", NhsNumberCheck.INVALID),  # a letter
        ("1111111111", NhsNumberCheck.INVALID),  # all one digit (passes Modulus 11, still invalid)
        ("0000000000", NhsNumberCheck.INVALID),
        ("9990000018", NhsNumberCheck.TEST_RANGE),  # valid, in the 999 test range
        ("", NhsNumberCheck.MISSING),
        ("   ", NhsNumberCheck.MISSING),
        (None, NhsNumberCheck.MISSING),
    ],
)
def test_nhs_number_checks_follow_the_contract(raw, expected):
    assert check_nhs_number(raw) is expected


def test_check_digit_worked_by_hand():
    # the published example's check digit is 9: 9*10+4*9+3*8+4*7+7*6+6*5+5*4+9*3+1*2 = 299; 299 mod 11 = 2; 11-2 = 9
    assert nhs_check_digit("943476591") == 9


def test_a_remainder_that_needs_check_digit_ten_is_invalid():
    # 11 - (sum mod 11) = 10 happens when sum mod 11 = 1: no digit can make such a number valid.
    nine = next(f"{n:09d}" for n in range(1000, 100000) if nhs_check_digit(f"{n:09d}") is None)
    assert all(check_nhs_number(nine + str(d)) is NhsNumberCheck.INVALID for d in range(10))


@given(nine_digits)
def test_every_number_with_its_check_digit_is_valid_and_every_other_digit_is_not(nine):
    check = nhs_check_digit(nine)
    if check is None or len(set(nine + str(check))) == 1:
        return
    assert check_nhs_number(nine + str(check)).linkable
    for other in set(range(10)) - {check}:
        assert check_nhs_number(nine + str(other)) is NhsNumberCheck.INVALID


def test_an_nhs_number_never_shows_its_digits():
    number = NhsNumber("943 476 5919")
    for shown in (str(number), repr(number), f"{number}", f"{number!r}", "%s" % number):  # noqa: UP031  (%-formatting is one of the ways tried)
        assert "9434765919" not in shown and "943" not in shown
    with pytest.raises(TypeError):
        pickle.dumps(number)


def test_an_invalid_number_is_refused_without_echoing_it():
    with pytest.raises(IdentifierError) as raised:
        NhsNumber("9434765918")
    assert "9434765918" not in str(raised.value)


def test_a_pseudonym_is_not_an_nhs_number():
    with pytest.raises(IdentifierError):
        PersonId("9434765919")
    assert str(PersonId("a" * 64)) == "a" * 64


@pytest.mark.parametrize(
    "raw, code, three",
    [("S72.0", "S720", "S72"), ("s720", "S720", "S72"), (" W19 ", "W19", "W19"), ("R54X", "R54X", "R54")],
)
def test_icd10_codes_are_normalised(raw, code, three):
    parsed = Icd10Code.parse(raw)
    assert parsed.value == code and parsed.three_character == three


@pytest.mark.parametrize("raw", ["", "72.0", "SS72", "S7"])
def test_not_icd10(raw):
    with pytest.raises(IdentifierError):
        Icd10Code.parse(raw)
