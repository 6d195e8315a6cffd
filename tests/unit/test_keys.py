"""Keys fail closed: no key, no load; a key file others can read is refused; a key is never shown."""

import os

import pytest

from pophealth.keys import KeyError_, LinkageKey, ensure_demo_key, load_linkage_key


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
