"""The vault's encryption: HPKE sealed to the vault's public key, opened only with its private key, each
ciphertext bound to its pseudonym; and the private key's one road (never a DAG, never Airflow)."""

import ast
from pathlib import Path

import pytest

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


def test_the_loader_writes_with_the_public_key_and_only_the_private_key_opens():
    nonce, ciphertext = sealer().encrypt("nhs", PERSON, b"9434765919")
    assert b"9434765919" not in nonce + ciphertext
    assert opener().decrypt("nhs", PERSON, nonce, ciphertext) == b"9434765919"
    with pytest.raises(VaultError, match="does not open"):
        opener("22" * 32).decrypt("nhs", PERSON, nonce, ciphertext)
    # The public half has no way to open anything.
    assert not hasattr(sealer(), "decrypt")


def test_both_halves_carry_one_version_and_the_public_key_is_not_the_private_one():
    key = private()
    assert key.version == key.public_key().version and key.version.startswith("v-")
    assert key.public_hex() != "11" * 32
    assert VaultPrivateKey.from_hex("22" * 32, "other").version != key.version


def test_a_ciphertext_moved_to_another_person_or_kind_does_not_open():
    nonce, ciphertext = sealer().encrypt("nhs", PERSON, b"9434765919")
    with pytest.raises(VaultError):
        opener().decrypt("nhs", OTHER, nonce, ciphertext)
    with pytest.raises(VaultError):
        opener().decrypt("local", PERSON, nonce, ciphertext)


def test_the_same_number_encrypts_differently_each_time():
    first = sealer().encrypt("nhs", PERSON, b"9434765919")
    second = sealer().encrypt("nhs", PERSON, b"9434765919")
    assert first[0] != second[0] and first[1] != second[1]


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
