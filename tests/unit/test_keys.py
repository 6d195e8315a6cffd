"""Keys fail closed: no key, no load; a key file others can read is refused; a key is never shown."""

import os

import pytest

from pophealth.identity.keys import (
    KeyError_,
    LinkageKey,
    VaultPrivateKey,
    VaultPublicKey,
    ensure_demo_key,
    load_linkage_key,
    load_vault_private_key,
    load_vault_public_key,
)


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv("POPHEALTH_LINKAGE_KEY", raising=False)
    monkeypatch.delenv("POPHEALTH_LINKAGE_KEY_FILE", raising=False)


def test_no_key_refuses_with_a_clear_message():
    with pytest.raises(KeyError_, match="no linkage key"):
        load_linkage_key()


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    assert load_linkage_key().secret_bytes() == bytes.fromhex("ab" * 32)


@pytest.mark.parametrize("bad", ["ab" * 31, "zz" * 32, "ab" * 33])
def test_a_malformed_key_is_refused_without_echoing_it(monkeypatch, bad):
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", bad)
    with pytest.raises(KeyError_) as raised:
        load_linkage_key()
    assert bad not in str(raised.value)


def test_key_file_must_be_private(monkeypatch, tmp_path):
    path = tmp_path / "key"
    path.write_text("cd" * 32)
    os.chmod(path, 0o644)
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY_FILE", str(path))
    with pytest.raises(KeyError_, match="chmod 600"):
        load_linkage_key()
    os.chmod(path, 0o600)
    assert load_linkage_key().secret_bytes() == bytes.fromhex("cd" * 32)


def test_missing_key_file(monkeypatch, tmp_path):
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY_FILE", str(tmp_path / "nope"))
    with pytest.raises(KeyError_, match="does not exist"):
        load_linkage_key()


def test_demo_key_is_created_once_and_private(tmp_path):
    path = tmp_path / "keys" / "linkage.key"
    assert ensure_demo_key(path) is True
    assert ensure_demo_key(path) is False
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    LinkageKey.from_hex(path.read_text(), "demo")


def test_a_key_is_never_shown():
    key = LinkageKey.from_hex("ef" * 32, "test")
    assert "ef" * 32 not in f"{key} {key!r}"


def test_keys_are_compared_in_constant_time(monkeypatch):
    """`==` on two keys goes through hmac.compare_digest, whose time does not depend on where the bytes differ
    (a plain bytes `==` stops at the first difference, which a caller can time)."""
    import hmac

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((len(a), len(b))) or real(a, b))
    same, other = LinkageKey.from_hex("ef" * 32, "test"), LinkageKey.from_hex("ef" * 31 + "00", "test")
    assert same == LinkageKey.from_hex("ef" * 32, "test")
    assert same != other
    assert compared == [(32, 32), (32, 32)]


# -- the vault key, and keys held by Airflow --------------------------------------------------------------------


@pytest.fixture
def no_vault_key_in_env(monkeypatch):
    for name in (
        "POPHEALTH_VAULT_KEY",
        "POPHEALTH_VAULT_KEY_FILE",
        "POPHEALTH_VAULT_PUBLIC_KEY",
        "POPHEALTH_VAULT_PUBLIC_KEY_FILE",
        "POPHEALTH_VAULT_PRIVATE_KEY",
        "POPHEALTH_VAULT_PRIVATE_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_vault_key_pair_is_its_own_and_fails_closed(no_vault_key_in_env, monkeypatch):
    with pytest.raises(KeyError_, match="no vault public key"):
        load_vault_public_key()
    with pytest.raises(KeyError_, match="no vault private key"):
        load_vault_private_key()
    private = VaultPrivateKey.from_hex("ab" * 32, "test")
    monkeypatch.setenv("POPHEALTH_VAULT_PUBLIC_KEY", private.public_hex())
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    assert load_vault_public_key().version == private.version != load_linkage_key().version
    assert load_vault_public_key().version.startswith("v-") and load_linkage_key().version.startswith("k-")


def test_the_old_symmetric_vault_key_alone_is_refused_naming_the_new_settings(no_vault_key_in_env, monkeypatch):
    monkeypatch.setenv("POPHEALTH_VAULT_KEY", "ab" * 32)
    for load in (load_vault_public_key, load_vault_private_key):
        with pytest.raises(KeyError_, match="no longer used") as refused:
            load()
        assert "POPHEALTH_VAULT_PUBLIC_KEY_FILE" in str(refused.value)
        assert "POPHEALTH_VAULT_PRIVATE_KEY_FILE" in str(refused.value) and "ab" * 32 not in str(refused.value)


def test_the_private_key_is_never_taken_from_an_airflow_connection(no_vault_key_in_env, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POPHEALTH_VAULT_PRIVATE_KEY", f"generic://:{'e1' * 32}@")
    with pytest.raises(KeyError_, match="no vault private key"):
        load_vault_private_key()


def test_the_demo_makes_the_vault_key_pair_and_keeps_the_private_half_apart(tmp_path):
    public_file = tmp_path / "keys" / "vault_public.key"
    assert ensure_demo_key(public_file) is True and ensure_demo_key(public_file) is False
    private_file = tmp_path / "keys" / "vault_private.key"
    assert oct(private_file.stat().st_mode & 0o777) == "0o600"
    private = VaultPrivateKey.from_hex(private_file.read_text(), "demo")
    assert VaultPublicKey.from_hex(public_file.read_text(), "demo") == private.public_key()


def test_a_key_can_come_from_an_airflow_connection_and_is_then_masked(no_vault_key_in_env, monkeypatch):
    # Any Airflow secrets backend serves connections; the environment is the simplest of them.
    monkeypatch.setenv("AIRFLOW_CONN_POPHEALTH_LINKAGE_KEY", f"generic://:{'e1' * 32}@")
    key = load_linkage_key()
    assert key.secret_bytes() == bytes.fromhex("e1" * 32)
    from airflow.sdk._shared.secrets_masker import redact

    assert "e1" * 32 not in str(redact(f"a log line holding {'e1' * 32}"))


def test_a_key_from_the_environment_is_masked_in_airflow_logs(monkeypatch):
    import airflow.sdk  # noqa: F401  (inside a task, Airflow is always imported)
    from airflow.sdk._shared.secrets_masker import redact

    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", "7c" * 32)
    load_linkage_key()
    assert "7c" * 32 not in str(redact(f"POPHEALTH_LINKAGE_KEY={'7c' * 32}"))


def test_no_airflow_connection_still_fails_closed(no_vault_key_in_env, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING_ELSE", "generic://x@y")
    with pytest.raises(KeyError_, match="pophealth_vault_public_key"):
        load_vault_public_key()
