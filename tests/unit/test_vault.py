"""The vault's encryption: AES-256-GCM under the vault key, each ciphertext bound to its pseudonym."""

import pytest

from pophealth.keys import VaultKey
from pophealth.vault import VaultCipher, VaultError

PERSON = "ab" * 32
OTHER = "cd" * 32


def cipher(hex_key: str = "11" * 32) -> VaultCipher:
    return VaultCipher(VaultKey.from_hex(hex_key, "test"))


def test_an_identifier_comes_back_only_with_the_vault_key():
    nonce, ciphertext = cipher().encrypt("nhs", PERSON, b"9434765919")
    assert b"9434765919" not in ciphertext
    assert cipher().decrypt("nhs", PERSON, nonce, ciphertext) == b"9434765919"
    with pytest.raises(VaultError, match="does not decrypt"):
        cipher("22" * 32).decrypt("nhs", PERSON, nonce, ciphertext)


def test_a_ciphertext_moved_to_another_person_or_kind_does_not_decrypt():
    nonce, ciphertext = cipher().encrypt("nhs", PERSON, b"9434765919")
    with pytest.raises(VaultError):
        cipher().decrypt("nhs", OTHER, nonce, ciphertext)
    with pytest.raises(VaultError):
        cipher().decrypt("local", PERSON, nonce, ciphertext)


def test_the_same_number_encrypts_differently_each_time():
    first = cipher().encrypt("nhs", PERSON, b"9434765919")
    second = cipher().encrypt("nhs", PERSON, b"9434765919")
    assert first[0] != second[0] and first[1] != second[1]
