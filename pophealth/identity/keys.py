"""The platform's keys, where they come from, and the refusal to go on without them (fail closed).

- The **linkage key** makes the transit pseudonyms (`nhs_number_key` in raw, and the local pseudonyms). Every
  source that pseudonymises on its own premises holds it too, so anything made with it alone can be
  reversed by a source (hash every NHS number): it never leaves raw.
- The **vault key pair** (X25519) encrypts the re-identification vault (transit pseudonym -> NHS number).
  The pipeline (the loader, every Airflow task) holds the **public** key only: it can write the vault and
  never read it. The **private** key is read by `pophealth reidentify` and by the key custodian's rotations
  alone (no Airflow connection is looked up for it). Neither is the linkage key.
- The **secondary-use key** and the **direct-care key** key the transit pseudonym again, once per purpose
  (pophealth/identity/purposes.py): the ids analysts see in `marts`/`reporting`, and the ids care teams see in
  `direct_care`. No source holds either, and they differ, so the two ids of one person cannot be joined.

Each is 32 random bytes given as 64 hex characters, looked up in this order:
1. the environment variable (`POPHEALTH_LINKAGE_KEY`, `POPHEALTH_VAULT_PUBLIC_KEY`, ...);
2. the file it names (`..._FILE`), which must not be readable by group or others (a secret key's file);
3. an Airflow connection (`pophealth_linkage_key`, `pophealth_vault_public_key`; the key is its password), so a
   deployment can keep keys in any Airflow secrets backend (Vault, AWS/GCP/Azure secret managers).
A key is never printed: its class masks itself, it is registered with Airflow's secrets masker as soon as
it is read, and its version is a one-way fingerprint, safe to store on every row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from pophealth import config

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class KeyError_(RuntimeError):
    """No usable key: the load must not start. The message says what to do, never the key."""


@dataclass(frozen=True)
class KeySource:
    """Where one kind of key is looked for."""

    purpose: str  # "linkage key", "vault key": said in messages
    env: str
    env_file: str
    airflow_conn_id: str | None  # None: never looked up in Airflow (the vault's private key)
    fingerprint_label: bytes
    secret: bool = True  # a public key's file may be readable by others


LINKAGE = KeySource(
    "linkage key",
    config.ENV_LINKAGE_KEY,
    config.ENV_LINKAGE_KEY_FILE,
    "pophealth_linkage_key",
    b"pophealth key version|",
)
#: Both halves of the vault's key pair have one version: the fingerprint of the public key.
_VAULT_PAIR_LABEL = b"pophealth vault key pair version|"
VAULT_PUBLIC = KeySource(
    "vault public key",
    config.ENV_VAULT_PUBLIC_KEY,
    config.ENV_VAULT_PUBLIC_KEY_FILE,
    "pophealth_vault_public_key",
    _VAULT_PAIR_LABEL,
    secret=False,
)
VAULT_PRIVATE = KeySource(
    "vault private key", config.ENV_VAULT_PRIVATE_KEY, config.ENV_VAULT_PRIVATE_KEY_FILE, None, _VAULT_PAIR_LABEL
)
SECONDARY_USE = KeySource(
    "secondary-use key",
    config.ENV_SECONDARY_USE_KEY,
    config.ENV_SECONDARY_USE_KEY_FILE,
    "pophealth_secondary_use_key",
    b"pophealth secondary-use key version|",
)
DIRECT_CARE = KeySource(
    "direct-care key",
    config.ENV_DIRECT_CARE_KEY,
    config.ENV_DIRECT_CARE_KEY_FILE,
    "pophealth_direct_care_key",
    b"pophealth direct-care key version|",
)
#: Every key the pipeline holds, with the file name the local demo keeps it in (POPHEALTH_HOME/keys/<name>).
#: Not the vault's private key: the demo keeps it in keys/vault_private.key, and gives it to no pipeline.
ALL_KEYS: tuple[tuple[KeySource, str], ...] = (
    (LINKAGE, "linkage.key"),
    (VAULT_PUBLIC, "vault_public.key"),
    (SECONDARY_USE, "secondary_use.key"),
    (DIRECT_CARE, "direct_care.key"),
)
DEMO_VAULT_PRIVATE_KEY_FILE = "vault_private.key"
_VERSION_PREFIX = {
    LINKAGE.purpose: "k-",
    VAULT_PUBLIC.purpose: "v-",
    VAULT_PRIVATE.purpose: "v-",
    SECONDARY_USE.purpose: "s-",
    DIRECT_CARE.purpose: "d-",
}


class _Key:
    __slots__ = ("_secret", "version")
    source: KeySource

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise KeyError_(f"the {self.source.purpose} must be 32 bytes (64 hexadecimal characters)")
        self._secret = secret
        # A fingerprint, not the key: which key made a row, without revealing it.
        fingerprint = hashlib.sha256(self.source.fingerprint_label + secret).hexdigest()[:12]
        self.version = _VERSION_PREFIX[self.source.purpose] + fingerprint

    @classmethod
    def from_hex(cls, text: str, where: str) -> Self:
        text = text.strip()
        if not _HEX64.match(text):
            raise KeyError_(f"the {cls.source.purpose} in {where} is not 64 hexadecimal characters")
        return cls(bytes.fromhex(text))

    def secret_bytes(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant-time: how long a comparison takes must not tell a caller how many leading bytes matched.
        return (
            type(other) is type(self)
            and isinstance(other, _Key)  # isinstance: for the type checker
            and hmac.compare_digest(other._secret, self._secret)
        )

    def __hash__(self) -> int:
        return hash(self.version)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a key is not serialisable")


class LinkageKey(_Key):
    __slots__ = ()
    source = LINKAGE


class VaultPublicKey(_Key):
    """The vault's X25519 public key: encrypts (seals) vault entries; cannot open them."""

    __slots__ = ()
    source = VAULT_PUBLIC

    def x25519(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self._secret)


class VaultPrivateKey(_Key):
    """The vault's X25519 private key: opens vault entries. Its version is its public key's."""

    __slots__ = ()
    source = VAULT_PRIVATE

    def __init__(self, secret: bytes):
        super().__init__(secret)
        self.version = self.public_key().version

    def x25519(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._secret)

    def public_key(self) -> VaultPublicKey:
        return VaultPublicKey(self.x25519().public_key().public_bytes_raw())

    def public_hex(self) -> str:
        return self.public_key().secret_bytes().hex()


class SecondaryUseKey(_Key):
    __slots__ = ()
    source = SECONDARY_USE


class DirectCareKey(_Key):
    __slots__ = ()
    source = DIRECT_CARE


def _mask_in_airflow_logs(hex_text: str) -> None:
    """Register the key with Airflow's secrets masker when running inside Airflow (a no-op elsewhere)."""
    import sys

    if "airflow" not in sys.modules:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - an Airflow without the task SDK
        return
    mask_secret(hex_text.strip())
    mask_secret(hex_text.strip().lower())


def _from_airflow_connection(conn_id: str) -> str | None:
    """The key held as an Airflow connection's password (any secrets backend), or None when there is none."""
    import sys

    if "airflow" not in sys.modules and not any(k.startswith("AIRFLOW_CONN_") for k in os.environ):
        return None  # not in Airflow and no connection in the environment: do not pay Airflow's import
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # pragma: no cover
        return None
    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return connection.password or None


def _load(cls: type[_Key]) -> _Key:
    source = cls.source
    value = os.environ.get(source.env)
    if value:
        _mask_in_airflow_logs(value)
        return cls.from_hex(value, source.env)
    file_name = os.environ.get(source.env_file)
    if file_name:
        path = Path(file_name)
        if not path.is_file():
            raise KeyError_(f"{source.env_file} names a file that does not exist: {path}")
        mode = path.stat().st_mode
        if source.secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyError_(
                f"the key file {path} can be read by others (mode {stat.filemode(mode)}); run: chmod 600 {path}"
            )
        text = path.read_text()
        _mask_in_airflow_logs(text)
        return cls.from_hex(text, str(path))
    value = _from_airflow_connection(source.airflow_conn_id) if source.airflow_conn_id else None
    if value:
        _mask_in_airflow_logs(value)
        return cls.from_hex(value, f"the Airflow connection {source.airflow_conn_id}")
    if source in (VAULT_PUBLIC, VAULT_PRIVATE) and (
        os.environ.get(config.ENV_VAULT_KEY) or os.environ.get(config.ENV_VAULT_KEY_FILE)
    ):
        raise KeyError_(
            f"{config.ENV_VAULT_KEY} (one symmetric vault key) is no longer used: the vault has a key pair. Make "
            f"one with `pophealth vault-key-pair`, give the pipeline {config.ENV_VAULT_PUBLIC_KEY_FILE} and give "
            f"{config.ENV_VAULT_PRIVATE_KEY_FILE} to `pophealth reidentify` alone. Nothing was loaded."
        )
    where = f"{source.env} (64 hex characters) or {source.env_file}"
    if source.airflow_conn_id:
        where = (
            f"{source.env} (64 hex characters), {source.env_file}, or the Airflow connection {source.airflow_conn_id}"
        )
    raise KeyError_(f"no {source.purpose}: set {where}. Nothing was loaded.")


def load_linkage_key() -> LinkageKey:
    """The linkage key; raises KeyError_ with a clear message when there is none."""
    return _load(LinkageKey)  # type: ignore[return-value]


def load_vault_public_key() -> VaultPublicKey:
    """The vault's public key (all the pipeline needs to write the vault); raises KeyError_ when there is none."""
    return _load(VaultPublicKey)  # type: ignore[return-value]


def load_vault_private_key() -> VaultPrivateKey:
    """The vault's private key. Called by `pophealth reidentify` and the key custodian's rotations only, never
    by a DAG or a task (tests/unit/test_vault.py checks every caller); never from an Airflow connection."""
    return _load(VaultPrivateKey)  # type: ignore[return-value]


#: The key of each purpose of the published ids (pophealth/identity/purposes.py).
PURPOSE_KEYS: dict[str, type[SecondaryUseKey | DirectCareKey]] = {
    "secondary_use": SecondaryUseKey,
    "direct_care": DirectCareKey,
}


def load_purpose_key(purpose: str) -> SecondaryUseKey | DirectCareKey:
    """The key of one purpose (`secondary_use`, `direct_care`); raises KeyError_ when there is none."""
    return _load(PURPOSE_KEYS[purpose])  # type: ignore[return-value]


def new_key_hex() -> str:
    return secrets.token_hex(32)


def write_private_key_file(path: Path, hex_text: str | None = None) -> None:
    """Write a key file readable by its owner only; refuses to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write((hex_text or new_key_hex()) + "\n")


def new_vault_key_pair() -> tuple[str, str]:
    """A new vault key pair as (private hex, public hex)."""
    private = X25519PrivateKey.generate()
    return (private.private_bytes_raw().hex(), private.public_key().public_bytes_raw().hex())


def write_vault_key_pair(private_path: Path, public_path: Path) -> VaultPublicKey:
    """Write a new vault key pair: the private key readable by its owner only. Refuses to overwrite either."""
    if public_path.exists():
        raise FileExistsError(public_path)
    private_hex, public_hex = new_vault_key_pair()
    write_private_key_file(private_path, private_hex)
    write_private_key_file(public_path, public_hex)
    return VaultPublicKey.from_hex(public_hex, str(public_path))


def ensure_demo_key(path: Path) -> bool:
    """Create a random key file for the local demo if there is none; True when one was created.

    For the vault's public key (`vault_public.key`), the pair is made: the private key goes beside it in
    `vault_private.key` (mode 600), which the demo's pipeline is never given."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.name == dict((s.env, n) for s, n in ALL_KEYS)[VAULT_PUBLIC.env]:
        write_vault_key_pair(path.parent / DEMO_VAULT_PRIVATE_KEY_FILE, path)
        return True
    write_private_key_file(path)
    return True


def demo_vault_private_key_file() -> Path:
    return config.paths().demo_keys_dir / DEMO_VAULT_PRIVATE_KEY_FILE
