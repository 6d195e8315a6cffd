"""The vault's encryption: by envelope, a data key per file sealed (HPKE) to the vault's public key and each entry
under it, opened only with the private key, each ciphertext bound to its pseudonym and its file's data key; and
the private key's one road (never a DAG, never Airflow)."""

import ast
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke

from pophealth.identity.keys import VaultPrivateKey
from pophealth.identity.vault import VaultError, VaultOpener, VaultSealer

REPO = Path(__file__).resolve().parents[2]
PERSON = "ab" * 32
OTHER = "cd" * 32


def private(hex_key: str = "11" * 32) -> VaultPrivateKey:
    return VaultPrivateKey.from_hex(hex_key, "test")


def sealer(hex_key: str = "11" * 32) -> VaultSealer:
    """What the loader holds: the public half only."""
    return VaultSealer(private(hex_key).public_key())


def opener(hex_key: str = "11" * 32) -> VaultOpener:
    return VaultOpener(private(hex_key))


def entry(clear: bytes = b"9434765919", pseudonym: str = PERSON, load_id: int = 7):
    """As a load writes one: its file's data key, sealed to the public key, and the entry under that data key."""
    data_key, wrapped = sealer().new_data_key(load_id)
    nonce, ciphertext = data_key.encrypt("nhs", pseudonym, clear)
    return nonce, ciphertext, (wrapped.data_key_id, load_id, wrapped.wrapped)


def test_the_loader_writes_with_the_public_key_and_only_the_private_key_opens():
    nonce, ciphertext, data_key = entry()
    assert b"9434765919" not in nonce + ciphertext + data_key[2]
    assert opener().decrypt("nhs", PERSON, nonce, ciphertext, data_key) == b"9434765919"
    with pytest.raises(VaultError, match="does not open"):
        opener("22" * 32).decrypt("nhs", PERSON, nonce, ciphertext, data_key)


def test_the_loader_holds_nothing_that_unwraps_a_data_key():
    # The public half has no way to open anything: no private key, no unwrapping, no decryption.
    held = sealer()
    assert not any(hasattr(held, name) for name in ("decrypt", "open_data_key", "_private"))
    data_key, wrapped = held.new_data_key(7)
    # The data key is stored only wrapped: its secret is in no stored byte, nor in its printed form.
    assert data_key._secret not in wrapped.wrapped and data_key._secret.hex() not in repr(data_key)
    assert wrapped.vault_key_version == held.version


def test_both_halves_carry_one_version_and_the_public_key_is_not_the_private_one():
    key = private()
    assert key.version == key.public_key().version and key.version.startswith("v-")
    assert key.public_hex() != "11" * 32
    assert VaultPrivateKey.from_hex("22" * 32, "other").version != key.version


def test_a_ciphertext_moved_to_another_person_or_kind_does_not_open():
    nonce, ciphertext, data_key = entry()
    with pytest.raises(VaultError):
        opener().decrypt("nhs", OTHER, nonce, ciphertext, data_key)
    with pytest.raises(VaultError):
        opener().decrypt("local", PERSON, nonce, ciphertext, data_key)


def test_an_entry_given_another_files_data_key_does_not_open():
    nonce, ciphertext, _ = entry(load_id=7)
    other_file = entry(load_id=8)[2]
    with pytest.raises(VaultError, match="does not open"):
        opener().decrypt("nhs", PERSON, nonce, ciphertext, other_file)


def test_a_wrapped_data_key_is_bound_to_its_id_and_its_load():
    nonce, ciphertext, (data_key_id, load_id, wrapped) = entry(load_id=7)
    with pytest.raises(VaultError, match="data key does not open"):
        opener().open_data_key(data_key_id, 8, wrapped)  # claimed by another load
    with pytest.raises(VaultError, match="data key does not open"):
        opener().open_data_key(entry()[2][0], load_id, wrapped)  # moved to another key row
    assert opener().decrypt("nhs", PERSON, nonce, ciphertext, (data_key_id, load_id, wrapped)) == b"9434765919"


def test_the_same_number_encrypts_differently_each_time():
    data_key, _ = sealer().new_data_key(7)
    first = data_key.encrypt("nhs", PERSON, b"9434765919")
    second = data_key.encrypt("nhs", PERSON, b"9434765919")
    assert first[0] != second[0] and first[1] != second[1]


def test_an_entry_of_the_legacy_form_one_hpke_per_entry_still_opens():
    # As entries were written before the envelope: HPKE to the public key, bound to kind and pseudonym.
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sealed = suite.encrypt(
        b"9434765919", private().public_key().x25519(), info=f"pophealth vault|nhs|{PERSON}".encode()
    )
    enc, rest = sealed[:32], sealed[32:]
    assert opener().decrypt("nhs", PERSON, enc, rest, None) == b"9434765919"
    with pytest.raises(VaultError, match="does not open"):
        opener().decrypt("nhs", OTHER, enc, rest, None)


def _callers(name: str) -> set[str]:
    """Every file of the package and the DAGs that calls `name`, by reading their code."""
    found = set()
    for path in [*(REPO / "pophealth").rglob("*.py"), *(REPO / "dags").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    found.add(str(path.relative_to(REPO)))
    return found


def test_the_private_key_is_read_by_the_command_line_alone_never_by_a_dag_or_a_task():
    # cli.py's _vault_private_key serves `reidentify` and `rotate-key` only (tests/integration/test_vault_insiders.py
    # runs the loads with a private-key setting that would fail if anything read it).
    assert _callers("load_vault_private_key") == {"pophealth/cli.py"}
    assert _callers("_vault_private_key") == {"pophealth/cli.py"}
    assert _callers("VaultOpener") <= {"pophealth/identity/vault.py", "pophealth/identity/rekey.py"}


def test_airflow_is_never_given_the_private_key(monkeypatch, tmp_path):
    from pophealth.operate.airflow_runner import airflow_env

    monkeypatch.setenv("POPHEALTH_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://nobody@localhost/none")
    monkeypatch.setenv("POPHEALTH_VAULT_PRIVATE_KEY", "11" * 32)
    monkeypatch.setenv("POPHEALTH_VAULT_PRIVATE_KEY_FILE", str(tmp_path / "vault_private.key"))
    monkeypatch.setenv("POPHEALTH_VAULT_PUBLIC_KEY", private().public_hex())
    env = airflow_env()
    assert "POPHEALTH_VAULT_PRIVATE_KEY" not in env and "POPHEALTH_VAULT_PRIVATE_KEY_FILE" not in env
    assert "11" * 32 not in "".join(env.values())
    assert env["POPHEALTH_VAULT_PUBLIC_KEY"] == private().public_hex()
