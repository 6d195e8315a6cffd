"""The re-identification vault: pseudonym -> the identifier it was made from, encrypted, for direct care.

Case finding only helps if a clinician can act on it. The loader stores, for every pseudonym it makes from
an identifier, that identifier sealed to the **vault's public key** with HPKE (RFC 9180: X25519, HKDF-SHA256,
AES-256-GCM, from `cryptography`). The loader holds the public key only: it can write the vault and never
read it, so whoever runs a load, or reads a worker's environment, finds nothing that opens an entry. Each
entry is bound to its pseudonym and kind (HPKE `info`), so a ciphertext moved to another row does not open.
The `nonce` column holds the entry's encapsulated key (HPKE `enc`, used once), the `ciphertext` the rest.

Reading goes through one path only (`reidentify`): the `reidentifier` login records a request with its
purpose in the append-only, hash-chained `audit.reidentification` (committed first), the database checks the
request against its limits (a Caldicott guardian approves beyond them), releases the ciphertexts of that
request, and this module opens them with the vault's **private** key, which only this path and the key
custodian's rotations read. Analysts have no grant on any of it (pophealth/warehouse/access.sql).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import psycopg
from cryptography.hazmat.primitives import hpke
from psycopg import sql

from pophealth.contract.identifiers import IdentifierError, NhsNumber, PersonId
from pophealth.identity.keys import VaultPrivateKey, VaultPublicKey
from pophealth.warehouse import db

#: Entries kept in memory per file to skip re-encrypting a pseudonym seen on an earlier row (an episode
#: per row, many rows per person); cleared when full, so memory stays bounded whatever the file size.
_RECENT_LIMIT = 200_000


class VaultError(RuntimeError):
    """A re-identification that cannot be done; the message never holds an identifier."""


_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_ENC_BYTES = hpke.KEM.X25519.enc_length()


def _info(kind: str, pseudonym: str) -> bytes:
    return f"pophealth vault|{kind}|{pseudonym}".encode()


class VaultSealer:
    """Writes vault entries with the public key: what the loader holds. It has no way to open one."""

    __slots__ = ("_public", "version")

    def __init__(self, key: VaultPublicKey):
        self._public = key.x25519()
        self.version = key.version

    def encrypt(self, kind: str, pseudonym: str, clear: bytes) -> tuple[bytes, bytes]:
        sealed = _SUITE.encrypt(clear, self._public, info=_info(kind, pseudonym))
        return sealed[:_ENC_BYTES], sealed[_ENC_BYTES:]


class VaultOpener(VaultSealer):
    """Opens vault entries with the private key (re-identification, rotations), and can write them too."""

    __slots__ = ("_private",)

    def __init__(self, key: VaultPrivateKey):
        super().__init__(key.public_key())
        self._private = key.x25519()

    def decrypt(self, kind: str, pseudonym: str, nonce: bytes, ciphertext: bytes) -> bytes:
        try:
            return _SUITE.decrypt(bytes(nonce) + bytes(ciphertext), self._private, info=_info(kind, pseudonym))
        except Exception:  # cryptography raises InvalidTag, or ValueError for a malformed entry
            raise VaultError(
                "a vault entry does not open with this vault private key (wrong key, or tampered)"
            ) from None


def vault_batch_table(load_id: int) -> str:
    return f"load_batch.vault_{int(load_id)}"


@dataclass
class VaultWriter:
    """Collects the identities of one file's loaded rows into its own batch table, as ciphertext.

    Identities seen while a row is transformed are held until the row is known to be loaded (`keep_row`);
    a quarantined row's identities are dropped (`drop_row`), so the vault holds nobody the raw tables do not
    (opted-out people included: their care team may re-identify them).
    """

    cipher: VaultSealer
    load_id: int
    linkage_key_version: str
    sink: psycopg.Copy | None = None  # the COPY into the batch table (open_batch)
    _row: list[tuple[str, str, bytes]] = field(default_factory=list)
    _recent: set[str] = field(default_factory=set)
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
            assert self.sink is not None, "open_batch gives the sealer its COPY before any row is kept"
            self.sink.write_row(
                (pseudonym, kind, nonce, ciphertext, self.cipher.version, self.linkage_key_version, self.load_id)
            )
            self.stored += 1
        self._row.clear()


COPY_COLUMNS = ("pseudonym", "kind", "nonce", "ciphertext", "vault_key_version", "linkage_key_version", "load_id")


def open_batch(conn: psycopg.Connection, load_id: int) -> AbstractContextManager[psycopg.Copy]:
    """Create the file's vault batch table; returns the COPY context to write into."""
    table = sql.SQL(vault_batch_table(load_id))
    # Spelled out rather than LIKE vault.identity: the loader may write the vault but not read it.
    conn.execute(
        sql.SQL("""CREATE TABLE {} (pseudonym text NOT NULL, kind text NOT NULL, nonce bytea NOT NULL,
        ciphertext bytea NOT NULL, vault_key_version text NOT NULL, linkage_key_version text NOT NULL,
        load_id bigint NOT NULL)""").format(table)
    )
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    return conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table, columns))


def publish_batch(conn: psycopg.Connection, load_id: int) -> int:
    """Move a published load's vault batch into the vault (first entry per pseudonym wins); returns rows added."""
    table = sql.SQL(vault_batch_table(load_id))
    exists = db.one_row(conn.execute("SELECT to_regclass(%s)", (vault_batch_table(load_id),)))[0]
    if exists is None:
        return 0
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    added = conn.execute(
        sql.SQL(
            "INSERT INTO vault.identity ({cols}) SELECT DISTINCT ON (pseudonym) {cols} FROM {t} "
            "ORDER BY pseudonym ON CONFLICT (pseudonym) DO NOTHING"
        ).format(cols=columns, t=table)
    ).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return added


def drop_batch(conn: psycopg.Connection, load_id: int) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(vault_batch_table(load_id))))


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
                    "SELECT person_id, bound_to, nonce, ciphertext, vault_key_version FROM vault.reidentify(%s)",
                    (request_id,),
                ).fetchall()
            except psycopg.Error as exc:
                raise VaultError(f"re-identification request {request_id}: {_database_message(exc)}") from None
    except psycopg.Error as exc:
        raise VaultError(f"re-identification refused: {_database_message(exc)}") from None
    found: dict[PersonId, NhsNumber] = {}
    for person_id, bound_to, nonce, ciphertext, version in rows:
        if version != cipher.version:
            raise VaultError(
                f"the vault entry was written under vault key {version}, not {cipher.version}: "
                "use the private key of that pair"
            )
        digits = cipher.decrypt("nhs", bound_to, nonce, ciphertext).decode("ascii")
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
