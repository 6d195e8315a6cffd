"""The pseudonym and the NHS number check, against independent computations.

A source that pseudonymises on its own premises must get the same person_id as the platform: these are the
vectors to give it. They were computed with OpenSSL, not with Python, e.g.
`printf %s 9434765919 | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f`.
"""

import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pophealth.contract.identifiers import NhsNumber, NhsNumberCheck, check_nhs_number
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import Pseudonymiser

KEY_0_TO_31 = bytes(range(32)).hex()
KEY_5A = "5a" * 32

VECTORS = [
    (KEY_0_TO_31, "9434765919", "dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c"),
    (KEY_0_TO_31, "4010232137", "fe23268e07ee2f7905429b833e657b591adef6a4ec3b952ecf8ccdcbb015b8d2"),
    (KEY_0_TO_31, "999 000 0018", "a9232021e78b7a864a4be7b89a81babe3a95a4abdbdb0e87bfe585ecabb0d424"),
    (KEY_5A, "943-476-5919", "0bcbbe8e219ed2ec25dcf4f7e33eb4d26e6e4c246fdbe140ca12371a4f44f18a"),
    (KEY_5A, "4010232137", "9ffaed720632140e59bc351d425fec5497e376dc89b3e5ab8cfc76ae7309c28c"),
]


@pytest.mark.parametrize("key, number, person_id", VECTORS)
def test_known_vectors_computed_with_openssl(key, number, person_id):
    assert Pseudonymiser(LinkageKey.from_hex(key, "test")).person_id(NhsNumber(number)).value == person_id


def independent_check(raw: str | None) -> NhsNumberCheck:
    """The contract's rule, written again from extracts.md without the platform's code."""
    if raw is None:
        return NhsNumberCheck.MISSING
    digits = raw.replace(" ", "").replace("-", "")
    if digits == "":
        return NhsNumberCheck.MISSING
    if len(digits) != 10 or any(ch not in "0123456789" for ch in digits) or digits == digits[0] * 10:
        return NhsNumberCheck.INVALID
    total = 0
    for position, ch in enumerate(digits[:9]):
        total += int(ch) * (10 - position)
    remainder = total % 11
    check = 0 if remainder == 0 else 11 - remainder
    if check == 10 or check != int(digits[9]):
        return NhsNumberCheck.INVALID
    return NhsNumberCheck.TEST_RANGE if digits[:3] == "999" else NhsNumberCheck.VALID


nhs_like = st.one_of(
    st.text(alphabet="0123456789", min_size=10, max_size=10),
    st.text(alphabet="0123456789 -", min_size=0, max_size=14),
    st.text(alphabet="0123456789ABX -", min_size=8, max_size=13),
    st.builds(lambda n: f"999{n:07d}", st.integers(0, 9_999_999)),
)


@given(nhs_like)
def test_the_check_agrees_with_an_independent_reading_of_the_contract(raw):
    assert check_nhs_number(raw) is independent_check(raw)


@given(st.binary(min_size=32, max_size=32), st.integers(0, 999_999_999))
def test_person_id_is_hmac_sha256_of_the_ten_digits_for_every_key(secret, nine):
    first_nine = f"{nine:09d}"
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=False))
    check = (11 - total % 11) % 11
    number = first_nine + str(check)
    if check == 10 or len(set(number)) == 1:
        return
    expected = hmac.new(secret, number.encode("ascii"), hashlib.sha256).hexdigest()
    spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
    pseudonymiser = Pseudonymiser(LinkageKey(secret))
    assert pseudonymiser.person_id(NhsNumber(spaced)).value == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
