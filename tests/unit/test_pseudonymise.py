"""Pseudonymisation: the contract's keyed hash, domain-separated local pseudonyms, reduced dates and places."""

import hashlib
import hmac
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from pophealth.contract.identifiers import NhsNumber
from pophealth.identity.keys import LinkageKey
from pophealth.identity.pseudonymise import KeyedHash, Pseudonymiser, birth_year_month, normalise_postcode

KEY_HEX = "0f" * 32


def test_person_id_is_the_hmac_a_source_computes_on_its_own_premises():
    # What extracts.md tells a source to compute: lowercase hex HMAC-SHA256 of the ten ASCII digits.
    expected = hmac.new(bytes.fromhex(KEY_HEX), b"9434765919", hashlib.sha256).hexdigest()
    pseudonymiser = Pseudonymiser(LinkageKey.from_hex(KEY_HEX, "test"))
    assert pseudonymiser.person_id(NhsNumber("943-476-5919")).value == expected


@given(key=st.binary(max_size=200), prefix=st.binary(max_size=80), value=st.binary(max_size=300))
def test_the_keyed_hash_is_the_standard_librarys_hmac_sha256_for_any_key_prefix_and_value(key, prefix, value):
    # Keys shorter than, equal to and longer than SHA-256's 64-byte block (a longer one is hashed first).
    expected = hmac.new(key, prefix + value, hashlib.sha256).hexdigest()
    keyed = KeyedHash(key, prefix)
    assert keyed.hexdigest(value) == expected
    assert keyed.hexdigest(value) == expected  # the prepared states are copied, never used up
    assert key.hex() not in repr(keyed) or not key


def test_a_different_key_gives_a_different_pseudonym():
    a = Pseudonymiser(LinkageKey.from_hex(KEY_HEX, "test")).person_id(NhsNumber("9434765919"))
    b = Pseudonymiser(LinkageKey.from_hex("1e" * 32, "test")).person_id(NhsNumber("9434765919"))
    assert a != b


def test_local_pseudonyms_are_separated_from_person_ids_and_between_sources():
    pseudonymiser = Pseudonymiser(LinkageKey.from_hex(KEY_HEX, "test"))
    person = pseudonymiser.person_id(NhsNumber("9434765919")).value
    assert pseudonymiser.local("RAJ", "9434765919").value != person
    assert pseudonymiser.local("RAJ", "spell|1") != pseudonymiser.local("RDE", "spell|1")
    assert pseudonymiser.local("RAJ", "spell|1") == pseudonymiser.local(" RAJ ", "spell|1 ")


def test_key_version_is_a_fingerprint_not_the_key():
    key = LinkageKey.from_hex(KEY_HEX, "test")
    assert KEY_HEX not in key.version and KEY_HEX not in repr(key)
    assert key.version == LinkageKey.from_hex(KEY_HEX, "again").version


def test_date_of_birth_keeps_year_and_month_only():
    assert birth_year_month(date(1950, 3, 17)) == (1950, 3)
    assert birth_year_month(None) == (None, None)


def test_postcodes_compare_without_spaces_or_case():
    assert normalise_postcode(" cm1  1aa ") == normalise_postcode("CM11AA") == "CM11AA"
