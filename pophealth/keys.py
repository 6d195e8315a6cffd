"""The linkage key: where it comes from, and the refusal to go on without it (fail closed).

The key is 32 random bytes given as 64 hex characters, from `POPHEALTH_LINKAGE_KEY` or from the file
named by `POPHEALTH_LINKAGE_KEY_FILE` (which must not be readable by group or others). It is never
printed: `LinkageKey` masks itself, and its version is a one-way fingerprint, safe to store per row.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from pophealth import config

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class KeyError_(RuntimeError):
    """No usable key: the load must not start. The message says what to do, never the key."""


class LinkageKey:
    __slots__ = ("_secret", "version")

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise KeyError_("the linkage key must be 32 bytes (64 hexadecimal characters)")
        self._secret = secret
        # A fingerprint, not the key: which key pseudonymised a row, without revealing it.
        self.version = "k-" + hashlib.sha256(b"pophealth key version|" + secret).hexdigest()[:12]

    @classmethod
    def from_hex(cls, text: str, where: str) -> LinkageKey:
        text = text.strip()
        if not _HEX64.match(text):
            raise KeyError_(f"the linkage key in {where} is not 64 hexadecimal characters")
        return cls(bytes.fromhex(text))

    def secret_bytes(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"LinkageKey(version={self.version})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a key is not serialisable")


def load_linkage_key() -> LinkageKey:
    """The key from the environment or its file; raises KeyError_ with a clear message when there is none."""
    value = os.environ.get(config.ENV_LINKAGE_KEY)
    if value:
        return LinkageKey.from_hex(value, config.ENV_LINKAGE_KEY)
    file_name = os.environ.get(config.ENV_LINKAGE_KEY_FILE)
    if file_name:
        path = Path(file_name)
        if not path.is_file():
            raise KeyError_(f"{config.ENV_LINKAGE_KEY_FILE} names a file that does not exist: {path}")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyError_(
                f"the key file {path} can be read by others (mode {stat.filemode(mode)}); run: chmod 600 {path}"
            )
        return LinkageKey.from_hex(path.read_text(), str(path))
    raise KeyError_(
        "no linkage key: set POPHEALTH_LINKAGE_KEY (64 hex characters) or POPHEALTH_LINKAGE_KEY_FILE. "
        "Nothing was loaded."
    )


def ensure_demo_key(path: Path) -> bool:
    """Create a random key file for the local demo if there is none; True when one was created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return True
