"""The re-identification vault: pseudonym -> the identifier it was made from, encrypted, for direct care.

Case finding only helps if a clinician can act on it. The loader stores, for every pseudonym it makes from
an identifier, that identifier encrypted with AES-256-GCM under the **vault key** (never the linkage key,
never in the warehouse). The ciphertext is bound to its pseudonym and kind as associated data, so a
ciphertext moved to another row does not decrypt.

Reading goes through one path only (`reidentify`): the `reidentifier` login records a request with its
purpose in the append-only `audit.reidentification` (committed first), then the database releases the
ciphertexts of that request, and this module decrypts them with the vault key. Analysts have no grant on
any of it (pophealth/access.sql).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from pophealth import db
from pophealth.identifiers import IdentifierError, NhsNumber, PersonId
from pophealth.keys import VaultKey

#: Entries kept in memory per file to skip re-encrypting a pseudonym seen on an earlier row (an episode
#: per row, many rows per person); cleared when full, so memory stays bounded whatever the file size.
_RECENT_LIMIT = 200_000


class VaultError(RuntimeError):
    """A re-identification that cannot be done; the message never holds an identifier."""


class VaultCipher:
    __slots__ = ("_aead", "version")

    def __init__(self, key: VaultKey):
        self._aead = AESGCM(key.secret_bytes())
        self.version = key.version

    def encrypt(self, kind: str, pseudonym: str, clear: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, clear, f"{kind}|{pseudonym}".encode())

    def decrypt(self, kind: str, pseudonym: str, nonce: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(bytes(nonce), bytes(ciphertext), f"{kind}|{pseudonym}".encode())
        except InvalidTag:
            raise VaultError("a vault entry does not decrypt with this vault key (wrong key, or tampered)") from None


def vault_batch_table(load_id: int) -> str:
    return f"load_batch.vault_{int(load_id)}"


@dataclass
class VaultWriter:
    """Collects the identities of one file's loaded rows into its own batch table, as ciphertext.

    Identities seen while a row is transformed are held until the row is known to be loaded (`keep_row`);
    a quarantined row's identities are dropped (`drop_row`), so the vault holds nobody the raw tables do not
    (opted-out people included: their care team may re-identify them).
    """

    cipher: VaultCipher
    load_id: int
    linkage_key_version: str
    sink: object = None  # the COPY into the batch table (open_batch)
    _row: list = field(default_factory=list)
    _recent: set = field(default_factory=set)
    stored: int = 0

    def on_identity(self, kind: str, pseudonym: str, clear: bytes) -> None:
        self._row.append((kind, pseudonym, clear))

    def drop_row(self) -> None:
        self._row.clear()

    def keep_row(self) -> None:
        for kind, pseudonym, clear in self._row:
            if pseudonym in self._recent:
                continue
            if len(self._recent) >= _RECENT_LIMIT:
                self._recent.clear()
            self._recent.add(pseudonym)
            nonce, ciphertext = self.cipher.encrypt(kind, pseudonym, clear)
            self.sink.write_row((pseudonym, kind, nonce, ciphertext, self.cipher.version,
                                  self.linkage_key_version, self.load_id))
            self.stored += 1
        self._row.clear()


COPY_COLUMNS = ("pseudonym", "kind", "nonce", "ciphertext", "vault_key_version", "linkage_key_version", "load_id")


def open_batch(conn: psycopg.Connection, load_id: int):
    """Create the file's vault batch table; returns the COPY context to write into."""
    table = sql.SQL(vault_batch_table(load_id))
    # Spelled out rather than LIKE vault.identity: the loader may write the vault but not read it.
    conn.execute(sql.SQL("""CREATE TABLE {} (pseudonym text NOT NULL, kind text NOT NULL, nonce bytea NOT NULL,
        ciphertext bytea NOT NULL, vault_key_version text NOT NULL, linkage_key_version text NOT NULL,
        load_id bigint NOT NULL)""").format(table))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    return conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, columns))


def publish_batch(conn: psycopg.Connection, load_id: int) -> int:
    """Move a published load's vault batch into the vault (first entry per pseudonym wins); returns rows added."""
    table = sql.SQL(vault_batch_table(load_id))
    exists = conn.execute("SELECT to_regclass(%s)", (vault_batch_table(load_id),)).fetchone()[0]
    if exists is None:
        return 0
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    added = conn.execute(sql.SQL(
        "INSERT INTO vault.identity ({cols}) SELECT DISTINCT ON (pseudonym) {cols} FROM {t} "
        "ORDER BY pseudonym ON CONFLICT (pseudonym) DO NOTHING").format(cols=columns, t=table)).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return added


def drop_batch(conn: psycopg.Connection, load_id: int) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(vault_batch_table(load_id))))


@dataclass(frozen=True)
class Reidentified:
    request_id: int
    found: dict[PersonId, NhsNumber]
    not_found: list[PersonId]


def reidentify(person_ids: list[str], purpose: str, on_behalf_of: str, key: VaultKey,
               conninfo: str | None = None) -> Reidentified:
    """Re-identify people for direct care, as the `reidentifier` login. Every call is in the audit log first.

    `person_ids` are direct-care ids (direct_care.case_finding); the database refuses a secondary-use id."""
    wanted = []
    for value in person_ids:
        try:
            wanted.append(PersonId(value.strip().lower()))
        except IdentifierError:
            raise VaultError("a person_id is 64 hexadecimal characters; one given is not") from None
    if not wanted:
        raise VaultError("name at least one person_id")
    cipher = VaultCipher(key)
    url = conninfo or db.warehouse().with_user("reidentifier").url()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Autocommit: the request is committed before the read, as vault.reidentify requires.
            request_id = conn.execute("SELECT vault.request_reidentification(%s, %s, %s)",
                                      ([p.value for p in wanted], purpose, on_behalf_of)).fetchone()[0]
            rows = conn.execute("SELECT person_id, bound_to, nonce, ciphertext, vault_key_version "
                                "FROM vault.reidentify(%s)", (request_id,)).fetchall()
    except psycopg.Error as exc:
        message = (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc).splitlines()[0]
        raise VaultError(f"re-identification refused: {message}") from None
    found: dict[PersonId, NhsNumber] = {}
    for person_id, bound_to, nonce, ciphertext, version in rows:
        if version != cipher.version:
            raise VaultError(f"the vault entry was written under vault key {version}, not {cipher.version}")
        digits = cipher.decrypt("nhs", bound_to, nonce, ciphertext).decode("ascii")
        found[PersonId(person_id)] = NhsNumber(digits)
    return Reidentified(request_id, found, [p for p in wanted if p not in found])
