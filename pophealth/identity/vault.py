"""The re-identification vault: pseudonym -> the identifier it was made from, encrypted, for direct care.

Case finding only helps if a clinician can act on it. The loader stores, for every pseudonym it makes from
an identifier, that identifier encrypted by envelope (the standard pattern): each file's load makes one random
256-bit **data key**, seals it once to the **vault's public key** with HPKE (RFC 9180: X25519, HKDF-SHA256,
AES-256-GCM, from `cryptography`; bound to the data key's id, the load and the vault key version) and stores that
wrapped key once (`vault.data_key`); each entry is AES-256-GCM under the data key, with a fresh random 96-bit
nonce, bound to its pseudonym and kind (associated data), so a ciphertext moved to another row, or to another
file's data key, does not open. The data key lives in the loader's memory for that file only and is dropped
when the file is done: the loader holds the public key only, and after the file it has nothing that opens an
entry, not even its own; whoever runs a load, or reads a worker's environment, finds nothing that opens one.
One HPKE per file instead of one per identity: the public-key work no longer grows with the people.

Entries written before the envelope (no `data_key_id`; the `nonce` column holds HPKE's encapsulated key) still
open here (the legacy form: read, never written); a vault-key rotation re-encrypts them into the envelope form.

Reading goes through one path only (`reidentify`): the `reidentifier` login records a request with its
purpose in the append-only, hash-chained `audit.reidentification` (committed first), the database checks the
request against its limits (a Caldicott guardian approves beyond them), releases the ciphertexts of that
request with their wrapped data keys, and this module opens them with the vault's **private** key, which only
this path and the key custodian's rotations read. Analysts have no grant on any of it
(pophealth/warehouse/access.sql).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from pophealth.contract.identifiers import IdentifierError, NhsNumber, PersonId
from pophealth.identity.keys import VaultPrivateKey, VaultPublicKey
from pophealth.warehouse import db

#: Entries kept in memory per file to skip re-encrypting a pseudonym seen on an earlier row (an episode
#: per row, many rows per person); cleared when full, so memory stays bounded whatever the file size.
_RECENT_LIMIT = 200_000
#: AES-GCM's 96-bit nonce, random per entry: a data key takes one file's entries (a rotation's, the vault's), far
#: below the 2^32 encryptions NIST SP 800-38D allows one key with random nonces.
_NONCE_BYTES = 12


class VaultError(RuntimeError):
    """A re-identification that cannot be done; the message never holds an identifier."""


_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_DOES_NOT_OPEN = "a vault entry does not open with this vault private key (wrong key, or tampered)"


def _info(kind: str, pseudonym: str) -> bytes:
    return f"pophealth vault|{kind}|{pseudonym}".encode()


def _data_key_info(data_key_id: str, load_id: int | None, vault_key_version: str) -> bytes:
    made_by = "" if load_id is None else str(int(load_id))
    return f"pophealth vault data key|{data_key_id}|{made_by}|{vault_key_version}".encode()


class DataKey:
    """One file's (or one rotation's) AES-256-GCM key for its vault entries; never stored but wrapped."""

    __slots__ = ("_aead", "_secret", "id", "load_id")

    def __init__(self, data_key_id: str, load_id: int | None, secret: bytes):
        self.id, self.load_id, self._secret = data_key_id, load_id, secret
        self._aead = AESGCM(secret)

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"DataKey({self.id})"

    def encrypt(self, kind: str, pseudonym: str, clear: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, clear, _info(kind, pseudonym))

    def decrypt(self, kind: str, pseudonym: str, nonce: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(bytes(nonce), bytes(ciphertext), _info(kind, pseudonym))
        except Exception:  # InvalidTag: another row's entry, another data key's, or tampered
            raise VaultError(_DOES_NOT_OPEN) from None


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored (vault.data_key): sealed to the vault's public key, useless without the private one."""

    data_key_id: str
    load_id: int | None
    vault_key_version: str
    wrapped: bytes


class VaultSealer:
    """Writes vault entries with the public key: what the loader holds. It has no way to open one."""

    __slots__ = ("_public", "version")

    def __init__(self, key: VaultPublicKey):
        self._public = key.x25519()
        self.version = key.version

    def new_data_key(self, load_id: int | None) -> tuple[DataKey, WrappedKey]:
        """A fresh data key for one file (`load_id`) or one rotation (None), and its wrapped form to store."""
        data_key = DataKey(str(uuid.uuid4()), load_id, AESGCM.generate_key(bit_length=256))
        return data_key, self.wrap(data_key)

    def wrap(self, data_key: DataKey) -> WrappedKey:
        info = _data_key_info(data_key.id, data_key.load_id, self.version)
        return WrappedKey(
            data_key.id, data_key.load_id, self.version, _SUITE.encrypt(data_key._secret, self._public, info=info)
        )


class VaultOpener(VaultSealer):
    """Opens vault entries with the private key (re-identification, rotations), and can write them too.

    Each data key is unwrapped once per opener (one HPKE per file's key, not per entry): an opener lives for one
    re-identification or one rotation, and its keys go with it."""

    __slots__ = ("_opened", "_private")

    def __init__(self, key: VaultPrivateKey):
        super().__init__(key.public_key())
        self._private = key.x25519()
        self._opened: dict[tuple[str, int | None, bytes], DataKey] = {}

    def open_data_key(self, data_key_id: str, load_id: int | None, wrapped: bytes) -> DataKey:
        data_key_id = str(data_key_id)
        # Cached by the whole stored row, so a row that names a cached id with another load or wrapping is
        # unwrapped (and refused) on its own.
        row = (data_key_id, load_id, bytes(wrapped))
        opened = self._opened.get(row)
        if opened is None:
            info = _data_key_info(data_key_id, load_id, self.version)
            try:
                secret = _SUITE.decrypt(bytes(wrapped), self._private, info=info)
            except Exception:  # InvalidTag, or ValueError for a malformed key
                raise VaultError(
                    "a vault data key does not open with this vault private key (wrong key, or tampered)"
                ) from None
            opened = self._opened[row] = DataKey(data_key_id, load_id, secret)
        return opened

    def decrypt(
        self,
        kind: str,
        pseudonym: str,
        nonce: bytes,
        ciphertext: bytes,
        data_key: tuple[str, int | None, bytes] | None,
    ) -> bytes:
        """Open an entry: `data_key` is its (data_key_id, load_id, wrapped) from vault.data_key, or None for an
        entry of the legacy form (one HPKE per entry, `nonce` its encapsulated key)."""
        if data_key is not None:
            return self.open_data_key(*data_key).decrypt(kind, pseudonym, nonce, ciphertext)
        try:
            return _SUITE.decrypt(bytes(nonce) + bytes(ciphertext), self._private, info=_info(kind, pseudonym))
        except Exception:  # cryptography raises InvalidTag, or ValueError for a malformed entry
            raise VaultError(_DOES_NOT_OPEN) from None


def vault_batch_table(load_id: int) -> str:
    return f"load_batch.vault_{int(load_id)}"


class VaultSeals:
    """Seals the identities of the rows a piece of a file keeps (pophealth/ingest/pieces.py), as COPY lines of the
    file's vault batch table; it may run in a worker process that staged the piece.

    Identities seen while a row is transformed are held until the row is known to be loaded (`keep_row`);
    a quarantined row's identities are dropped (`drop_row`), so the vault holds nobody the raw tables do not
    (opted-out people included: their care team may re-identify them). A pseudonym is sealed once per piece
    (an episode per row, many rows per person); `VaultWriter` keeps the first of each across the pieces.
    """

    __slots__ = ("_data_key", "_lines", "_row", "_sealed", "_tx")

    def __init__(self, data_key: DataKey, tx: Any):
        """`tx`: the adapters of the vault batch's COPY (db.copy_transformer)."""
        self._data_key = data_key
        self._row: list[tuple[str, str, bytes]] = []
        self._sealed: set[str] = set()
        self._lines: list[tuple[str, bytes]] = []
        self._tx = tx

    def __repr__(self) -> str:  # never the data key or an identity
        return "VaultSeals(***)"

    def on_identity(self, kind: str, pseudonym: str, clear: bytes) -> None:
        self._row.append((kind, pseudonym, clear))

    def drop_row(self) -> None:
        self._row.clear()

    def keep_row(self) -> None:
        for kind, pseudonym, clear in self._row:
            if pseudonym in self._sealed:
                continue
            self._sealed.add(pseudonym)
            nonce, ciphertext = self._data_key.encrypt(kind, pseudonym, clear)
            line = bytearray()
            db.copy_line((pseudonym, kind, nonce, ciphertext), self._tx, line)
            self._lines.append((pseudonym, bytes(line)))
        self._row.clear()

    def take(self) -> list[tuple[str, bytes]]:
        """The piece's entries, (pseudonym, COPY line) in the order first kept; the next piece starts afresh."""
        lines, self._lines, self._sealed = self._lines, [], set()
        return lines


@dataclass
class VaultWriter:
    """Writes one file's vault entries into its own batch table, each pseudonym once (`write`). The file's data
    key is set by `open_batch`, for `VaultSeals`, and dropped when the file is done."""

    cipher: VaultSealer
    load_id: int
    linkage_key_version: str
    sink: psycopg.Copy | None = None  # the COPY into the batch table (open_batch)
    data_key: DataKey | None = field(default=None, repr=False)
    _recent: set[str] = field(default_factory=set)
    stored: int = 0

    def write(self, lines: list[tuple[str, bytes]]) -> None:
        """A piece's entries (VaultSeals.take), in the file's order: a pseudonym written recently is not again."""
        assert self.sink is not None, "open_batch sets the sink before any piece"
        recent, kept = self._recent, []
        for pseudonym, line in lines:
            if pseudonym in recent:
                continue
            if len(recent) >= _RECENT_LIMIT:
                recent.clear()
            recent.add(pseudonym)
            kept.append(line)
        self.sink.write(b"".join(kept))
        self.stored += len(kept)


#: What the loader writes per entry; the rest of a batch row (data key, versions, load) is the table's default.
COPY_COLUMNS = ("pseudonym", "kind", "nonce", "ciphertext")
ENTRY_COLUMNS = (*COPY_COLUMNS, "data_key_id", "vault_key_version", "linkage_key_version", "load_id")


def store_data_key(conn: psycopg.Connection, wrapped: WrappedKey) -> None:
    conn.execute(
        "INSERT INTO vault.data_key (data_key_id, wrapped, vault_key_version, load_id) VALUES (%s, %s, %s, %s)",
        (wrapped.data_key_id, wrapped.wrapped, wrapped.vault_key_version, wrapped.load_id),
    )


@contextmanager
def open_batch(conn: psycopg.Connection, writer: VaultWriter) -> Iterator[psycopg.Copy]:
    """Make the file's data key (stored wrapped), create its vault batch table, and give the writer the COPY
    into it; when the file is done the writer's data key is dropped."""
    data_key, wrapped = writer.cipher.new_data_key(writer.load_id)
    store_data_key(conn, wrapped)
    table = sql.SQL(vault_batch_table(writer.load_id))
    # Spelled out rather than LIKE vault.identity: the loader may write the vault but not read it. What is the
    # same for every entry of the file is a default, not written per row.
    conn.execute(
        sql.SQL("""CREATE TABLE {} (pseudonym text NOT NULL, kind text NOT NULL, nonce bytea NOT NULL,
        ciphertext bytea NOT NULL, data_key_id uuid NOT NULL DEFAULT {}, vault_key_version text NOT NULL DEFAULT {},
        linkage_key_version text NOT NULL DEFAULT {}, load_id bigint NOT NULL DEFAULT {})""").format(
            table,
            sql.Literal(data_key.id),
            sql.Literal(writer.cipher.version),
            sql.Literal(writer.linkage_key_version),
            sql.Literal(int(writer.load_id)),
        )
    )
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    writer.data_key = data_key
    try:
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, columns)) as copy:
            writer.sink = copy
            yield copy
    finally:
        writer.data_key = writer.sink = None  # the file is done: the loader keeps nothing that opens its entries


def _drop_unused_data_keys(conn: psycopg.Connection, load_id: int) -> None:
    """Remove the load's data key when no entry uses it. Only the load's own entries are sealed under its key."""
    conn.execute(
        # A read of the vault (PostgreSQL plans it so): done only for a load that added no entry, or was refused.
        """DELETE FROM vault.data_key k WHERE k.load_id = %s
           AND NOT EXISTS (SELECT FROM vault.identity v WHERE v.data_key_id = k.data_key_id)""",
        (load_id,),
    )


def insert_entries(vault: sql.Composable, batch: sql.Composable) -> sql.Composed:
    """The statement that moves a batch's entries into a vault: a pseudonym already stored, or twice in the batch
    (VaultWriter keeps only the recent ones from repeating), is skipped by ON CONFLICT; its entries all seal the
    same identity, so which one is kept does not matter.

    In the pseudonyms' order: keyed hashes are random, so in the file's order each entry would go to another leaf of
    the pseudonym index, and at Essex scale that index (314 MB at 2.5 million entries) no longer stays in the
    caches. Sorted, the entries of one leaf come one after another. Publishing at Essex scale, the sort included
    (two runs each): the register's 1.55 million entries 13.7 / 13.4 s to 9.2 / 9.0 s, the 54 hospital files'
    entries 16.6 / 16.8 s to 15.0 / 14.9 s (a file's sorted batch still meets the index at random places); at 10%
    of Essex the register's, replayed, 0.93 s to 0.73 s (issue 19)."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ENTRY_COLUMNS)
    return sql.SQL(
        "INSERT INTO {vault} ({cols}) SELECT {cols} FROM {batch} ORDER BY pseudonym ON CONFLICT (pseudonym) DO NOTHING"
    ).format(vault=vault, cols=columns, batch=batch)


def publish_batch(conn: psycopg.Connection, load_id: int) -> int:
    """Move a published load's vault batch into the vault (insert_entries); returns rows added."""
    table = sql.SQL(vault_batch_table(load_id))
    exists = db.one_row(conn.execute("SELECT to_regclass(%s)", (vault_batch_table(load_id),)))[0]
    if exists is None:
        return 0
    added = conn.execute(insert_entries(sql.SQL("vault.identity"), table)).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    if not added:  # every pseudonym of the file already stored: its key wraps nothing
        _drop_unused_data_keys(conn, load_id)
    return added


def drop_batch(conn: psycopg.Connection, load_id: int) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(vault_batch_table(load_id))))
    _drop_unused_data_keys(conn, load_id)


@dataclass(frozen=True)
class Reidentified:
    request_id: int
    found: dict[PersonId, NhsNumber]
    not_found: list[PersonId]


def _database_message(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc).splitlines()[0]


def reidentify(
    person_ids: list[str],
    purpose: str,
    on_behalf_of: str,
    key: VaultPrivateKey,
    conninfo: str | None = None,
    request_id: int | None = None,
) -> Reidentified:
    """Re-identify people for direct care, as the `reidentifier` login. Every call is in the audit log first.

    `person_ids` are direct-care ids (direct_care.case_finding). The database decides (vault.request_reidentification):
    it refuses, logging the refusal, a request with a secondary-use or unknown id, a purpose not on the list or no
    `on_behalf_of`; it holds one beyond the limits until a Caldicott guardian approves it. With `request_id`, the
    people of an earlier, approved request are collected instead (person_ids, purpose, on_behalf_of unused)."""
    wanted = []
    for value in person_ids:
        try:
            wanted.append(PersonId(value.strip().lower()))
        except IdentifierError:
            # Not sent to the database either: it could be an NHS number typed by mistake.
            raise VaultError("a person_id is 64 hexadecimal characters; one given is not") from None
    if not wanted and request_id is None:
        raise VaultError("name at least one person_id")
    cipher = VaultOpener(key)
    url = conninfo or db.warehouse().with_user("reidentifier").url()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Autocommit: the request (or its refusal) is committed before the read, as vault.reidentify requires.
            if request_id is None:
                request_id = db.one_row(
                    conn.execute(
                        "SELECT vault.request_reidentification(%s, %s, %s)",
                        ([p.value for p in wanted], purpose, on_behalf_of),
                    )
                )[0]
            else:
                wanted = [
                    PersonId(p)
                    for p in conn.execute(
                        "SELECT unnest(person_ids) FROM vault.my_request(%s)", (request_id,)
                    ).fetchall()
                    for p in p
                ]
            try:
                rows = conn.execute(
                    "SELECT person_id, bound_to, nonce, ciphertext, vault_key_version, data_key_id, data_key_load_id, "
                    "wrapped_key FROM vault.reidentify(%s)",
                    (request_id,),
                ).fetchall()
            except psycopg.Error as exc:
                raise VaultError(f"re-identification request {request_id}: {_database_message(exc)}") from None
    except psycopg.Error as exc:
        raise VaultError(f"re-identification refused: {_database_message(exc)}") from None
    found: dict[PersonId, NhsNumber] = {}
    for person_id, bound_to, nonce, ciphertext, version, data_key_id, data_key_load_id, wrapped in rows:
        if version != cipher.version:
            raise VaultError(
                f"the vault entry was written under vault key {version}, not {cipher.version}: "
                "use the private key of that pair"
            )
        data_key = None if data_key_id is None else (data_key_id, data_key_load_id, wrapped)
        digits = cipher.decrypt("nhs", bound_to, nonce, ciphertext, data_key).decode("ascii")
        found[PersonId(person_id)] = NhsNumber(digits)
    return Reidentified(request_id, found, [p for p in wanted if p not in found])


def decide(request_id: int, approve: bool, note: str, conninfo: str | None = None) -> str:
    """A Caldicott guardian approves or refuses a request held beyond the limits (vault.decide_reidentification).

    Runs as the `caldicott_guardian` login; the database refuses a decision on one's own request. Returns what
    was recorded."""
    url = conninfo or db.warehouse().with_user("caldicott_guardian").url()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return str(
                db.one_row(
                    conn.execute("SELECT vault.decide_reidentification(%s, %s, %s)", (request_id, approve, note))
                )[0]
            )
    except psycopg.Error as exc:
        raise VaultError(f"decision refused: {_database_message(exc)}") from None
