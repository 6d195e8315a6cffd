"""Rotating the linkage key: re-keying every pseudonym in the warehouse without re-reading any source.

The key custodian runs this with the old linkage key (the usual place), the new one (a file) and the vault's
private key. It cannot do without the private key: a new pseudonym is the new key's HMAC of the NHS number,
and the number is in the warehouse only inside the vault (a pseudonym cannot be re-keyed from the old one
without changing what every source computes at source). It runs from the custodian's shell, never in
Airflow. The mapping old pseudonym -> new pseudonym is made from the vault (decrypt the identifier, hash it
under the new key), lives only in a temporary table of the custodian's own session, and is gone at commit:
it is never stored. Everything happens in one transaction that first takes exclusive locks on every table
it changes, so an analyst's query waits and then sees the new pseudonyms; there is no moment where old
and new are both readable.

What it changes: the transit pseudonym columns of raw and intermediate tables and of the purpose mapping
(`restricted.pseudonym.transit_key`); the vault (new pseudonyms, ciphertexts bound to them); each raw row's key
version. The published ids (marts, reporting, direct_care) are keyed under the purpose keys and do not change:
analysts and care teams keep following the same people, and the marts need no rebuild. The opt-out list holds
pseudonyms of people who are, by design, not in the vault: it is emptied and its loads marked `rekeyed`, so no
personal load can start until the opt-out list is loaded again under the new key (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pophealth.contract.feeds import PSEUDONYM_COLUMNS
from pophealth.contract.identifiers import NhsNumber
from pophealth.identity.keys import LinkageKey, VaultPrivateKey, VaultPublicKey
from pophealth.identity.pseudonymise import Pseudonymiser
from pophealth.identity.vault import VaultError, VaultOpener, VaultSealer, store_data_key
from pophealth.warehouse import db
from pophealth.warehouse.schema import PERSONAL_TABLES, prepare_warehouse, warehouse_key_version

#: Columns that hold a transit pseudonym wherever they appear (docs/architecture.md, "Names"): the raw tables' (the
#: NHS number's nhs_number_key and the local pseudonyms, from the feeds' declarations), and those the intermediate
#: models and the purpose mapping make of them.
REKEYED_COLUMNS = (*PSEUDONYM_COLUMNS, "person_key", "transit_key")
#: Schemas whose tables hold transit pseudonyms (staging is views; marts, reporting and direct_care hold ids
#: keyed by purpose, which a linkage key rotation leaves as they are). The opt-out list is emptied instead.
REKEYED_SCHEMAS = ("raw", "intermediate", "restricted")
_BATCH = 5_000


class RotationRefused(RuntimeError):
    """The rotation did not happen (nothing was changed); the message says why."""


@dataclass(frozen=True)
class Rotation:
    old_version: str
    new_version: str
    pseudonyms_mapped: int
    rows_rekeyed: dict[str, int]


def _pseudonym_columns(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            """SELECT c.table_schema, c.table_name, c.column_name
           FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE' AND c.table_schema = ANY(%s) AND c.column_name = ANY(%s)
             AND (c.table_schema, c.table_name) <> ('restricted', 'optout')
           ORDER BY 1, 2, 3""",
            (list(REKEYED_SCHEMAS), list(REKEYED_COLUMNS)),
        )
    ]


def _build_mapping(
    conn: psycopg.Connection, old: LinkageKey, new: LinkageKey, cipher: VaultOpener, progress: Callable[[str], None]
) -> tuple[int, str, set[str]]:
    """Fill the session's temporary mapping from the vault, each identity encrypted again under one new data key
    (its pseudonym, so its associated data, changes); returns how many pseudonyms it maps, the new data key's
    id (stored wrapped here) and the ids of the data keys the old entries used."""
    conn.execute("""CREATE TEMPORARY TABLE rekey_map (old_pseudonym text PRIMARY KEY, new_pseudonym text NOT NULL,
                        kind text NOT NULL, nonce bytea NOT NULL, ciphertext bytea NOT NULL,
                        load_id bigint NOT NULL) ON COMMIT DROP""")
    old_side, new_side = Pseudonymiser(old), Pseudonymiser(new)
    data_key, sealed_key = cipher.new_data_key(None)
    store_data_key(conn, sealed_key)
    used: set[str] = set()
    mapped = 0
    with conn.cursor(name="vault_entries") as entries:
        entries.execute(
            "SELECT v.pseudonym, v.kind, v.nonce, v.ciphertext, v.vault_key_version, v.linkage_key_version, "
            "v.load_id, v.data_key_id, k.load_id, k.wrapped FROM vault.identity v "
            "LEFT JOIN vault.data_key k USING (data_key_id)"
        )
        while batch := entries.fetchmany(_BATCH):
            rows = []
            for pseudonym, kind, nonce, ciphertext, vault_version, linkage_version, load_id, *data_key_row in batch:
                if vault_version != cipher.version:
                    raise RotationRefused(
                        f"vault entries were written under vault key {vault_version}, "
                        f"not the one given ({cipher.version})"
                    )
                if linkage_version != old.version:
                    raise RotationRefused(
                        f"vault entries were made under linkage key {linkage_version}, "
                        f"not the old key given ({old.version})"
                    )
                key_id, key_load_id, wrapped = data_key_row
                if key_id is not None:
                    used.add(str(key_id))
                opens_with = None if key_id is None else (key_id, key_load_id, wrapped)
                clear = cipher.decrypt(kind, pseudonym, nonce, ciphertext, opens_with)
                if kind == "nhs":
                    number = NhsNumber(clear.decode("ascii"))
                    if old_side.person_id(number).value != pseudonym:
                        raise RotationRefused("the old key given did not make the vault's pseudonyms")
                    renamed = new_side.person_id(number).value
                else:
                    source, _, local_id = clear.decode("utf-8").partition("|")
                    renamed = new_side.local(source, local_id).value
                new_nonce, new_ciphertext = data_key.encrypt(kind, renamed, clear)
                rows.append((pseudonym, renamed, kind, new_nonce, new_ciphertext, load_id))
            with conn.cursor().copy("COPY rekey_map FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            mapped += len(rows)
            if mapped % (_BATCH * 40) == 0:
                progress(f"  mapped {mapped:,} pseudonyms")
    conn.execute("ANALYZE rekey_map")
    return mapped, data_key.id, used


def rotate_linkage_key(
    old: LinkageKey,
    new: LinkageKey,
    vault_key: VaultPrivateKey,
    progress: Callable[[str], None] = print,
    before_commit: Callable[[], None] | None = None,
) -> Rotation:
    """Re-key the warehouse from `old` to `new` in one transaction. Raises RotationRefused, changing nothing."""
    if old == new:
        raise RotationRefused("the new key is the old key")
    prepare_warehouse()
    cipher = VaultOpener(vault_key)
    with db.connect() as conn:
        current = warehouse_key_version(conn)
        if current is None:
            raise RotationRefused("the warehouse holds no pseudonyms yet: there is nothing to re-key")
        if current != old.version:
            raise RotationRefused(f"the warehouse is keyed with {current}, not with the old key given ({old.version})")
        columns = _pseudonym_columns(conn)
        tables = sorted(
            {(s, t) for s, t, _ in columns} | {("vault", "identity"), ("vault", "data_key"), ("restricted", "optout")}
        )
        # Analysts' queries wait on these locks, then see the new pseudonyms: never a mixture.
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
            )
        )
        progress(f"Building the mapping from the vault ({old.version} -> {new.version}) ...")
        mapped, data_key_id, used_keys = _build_mapping(conn, old, new, cipher, progress)
        unmapped = {}
        for schema, table, column in columns:
            ((count,),) = conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {t} x WHERE x.{c} IS NOT NULL AND NOT EXISTS "
                    "(SELECT FROM rekey_map m WHERE m.old_pseudonym = x.{c})"
                ).format(t=sql.Identifier(schema, table), c=sql.Identifier(column))
            ).fetchall()
            if count:
                unmapped[f"{schema}.{table}.{column}"] = count
        if unmapped:
            raise RotationRefused(
                "some pseudonyms have no vault entry (from extracts pseudonymised at source, with no identifiable "
                "record here), so they cannot be re-keyed; ask those sources to resend under the new key. "
                "Rows per column: " + ", ".join(f"{k} {v:,}" for k, v in unmapped.items())
            )
        rekeyed: dict[str, int] = {}
        for schema, table, column in columns:
            rekeyed[f"{schema}.{table}.{column}"] = conn.execute(
                sql.SQL("UPDATE {t} x SET {c} = m.new_pseudonym FROM rekey_map m WHERE x.{c} = m.old_pseudonym").format(
                    t=sql.Identifier(schema, table), c=sql.Identifier(column)
                )
            ).rowcount
        for table in PERSONAL_TABLES:
            conn.execute(sql.SQL("UPDATE {} SET key_version = %s").format(sql.SQL(table)), (new.version,))
        conn.execute("DELETE FROM vault.identity")
        conn.execute("DELETE FROM vault.data_key WHERE data_key_id = ANY(%s::uuid[])", (sorted(used_keys),))
        conn.execute(
            """INSERT INTO vault.identity (pseudonym, kind, nonce, ciphertext, vault_key_version,
                                                    linkage_key_version, load_id, data_key_id)
                        SELECT m.new_pseudonym, m.kind, m.nonce, m.ciphertext, %s, %s, m.load_id, %s
                        FROM rekey_map m""",
            (cipher.version, new.version, data_key_id),
        )
        rekeyed["restricted.optout.nhs_number_key (emptied: load the opt-out list again)"] = conn.execute(
            "DELETE FROM restricted.optout"
        ).rowcount
        # 'rekeyed', not 'superseded': the same file is loaded again under the new key (pending_extracts).
        conn.execute("""UPDATE audit.load SET status = 'rekeyed',
                               message = 'pseudonymised under a key that has been rotated: load it again'
                        WHERE feed = 'optouts' AND status = 'published'""")
        conn.execute(
            """INSERT INTO audit.key_rotation
                            (old_key_version, new_key_version, pseudonyms_mapped, rows_rekeyed)
                        VALUES (%s, %s, %s, %s)""",
            (old.version, new.version, mapped, json.dumps(rekeyed)),
        )
        if before_commit:
            before_commit()
    progress(
        f"Re-keyed {sum(v for k, v in rekeyed.items() if 'optout' not in k):,} values in "
        f"{len(columns)} columns; {mapped:,} pseudonyms mapped; the mapping was not kept."
    )
    return Rotation(old.version, new.version, mapped, rekeyed)


def rotate_vault_key(
    old: VaultPrivateKey,
    new: VaultPublicKey,
    progress: Callable[[str], None] = print,
    before_commit: Callable[[], None] | None = None,
) -> Rotation:
    """Move the vault from the old key pair to the new public key, in one transaction.

    Each data key is unwrapped with the old private key and wrapped again to the new public key (one HPKE each,
    whatever the entries: the entries, bound to their pseudonyms, stay as they are, and the data keys are the
    ones their loads made and dropped, so nothing becomes readable by anyone it was not before). Entries of the
    legacy form (one HPKE per entry) are opened and encrypted again, under one new data key: after a rotation the
    vault holds the envelope form only. The new private key is not needed here (the custodian keeps it for
    `pophealth reidentify`). Loads in flight write with the old public key, so the rotation is refused while a
    load's vault batch is waiting to be published. Recorded in audit.key_rotation (purpose `vault`). Raises
    RotationRefused, changing nothing."""
    if old.version == new.version:
        raise RotationRefused("the new vault key pair is the old one")
    prepare_warehouse()
    opener, sealer = VaultOpener(old), VaultSealer(new)
    with db.connect() as conn:
        conn.execute("LOCK TABLE vault.identity, vault.data_key IN ACCESS EXCLUSIVE MODE")
        waiting = db.one_row(
            conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'load_batch' AND tablename ~ '^vault_[0-9]+$'"
            )
        )[0]
        if waiting:
            raise RotationRefused(
                f"{waiting} load(s) have vault entries waiting to be published under the old "
                "public key: let them finish (or fail), then rotate"
            )
        versions = [
            v
            for (v,) in conn.execute(
                "SELECT vault_key_version FROM vault.identity UNION SELECT vault_key_version FROM vault.data_key"
            )
        ]
        if any(v != opener.version for v in versions):
            raise RotationRefused(
                f"the vault holds entries under {', '.join(sorted(versions))}, not only under the "
                f"old key pair given ({opener.version})"
            )
        try:
            rewrapped = [
                sealer.wrap(opener.open_data_key(data_key_id, load_id, wrapped))
                for data_key_id, load_id, wrapped in conn.execute(
                    "SELECT data_key_id, load_id, wrapped FROM vault.data_key"
                )
            ]
            legacy = []
            with conn.cursor(name="legacy_entries") as entries:
                entries.execute(
                    "SELECT pseudonym, kind, nonce, ciphertext FROM vault.identity WHERE data_key_id IS NULL"
                )
                while batch := entries.fetchmany(_BATCH):
                    legacy += [(p, k, opener.decrypt(k, p, n, c, None)) for p, k, n, c in batch]
        except VaultError as exc:
            raise RotationRefused(str(exc)) from None
        conn.execute(
            "CREATE TEMPORARY TABLE vault_rewrap (data_key_id uuid PRIMARY KEY, wrapped bytea NOT NULL) ON COMMIT DROP"
        )
        with conn.cursor().copy("COPY vault_rewrap FROM STDIN") as copy:
            for key in rewrapped:
                copy.write_row((key.data_key_id, key.wrapped))
        conn.execute(
            """UPDATE vault.data_key k SET wrapped = r.wrapped, vault_key_version = %s
               FROM vault_rewrap r WHERE r.data_key_id = k.data_key_id""",
            (sealer.version,),
        )
        if legacy:
            data_key, wrapped = sealer.new_data_key(None)
            store_data_key(conn, wrapped)
            conn.execute(
                "CREATE TEMPORARY TABLE vault_reseal (pseudonym text PRIMARY KEY, nonce bytea NOT NULL, "
                "ciphertext bytea NOT NULL) ON COMMIT DROP"
            )
            with conn.cursor().copy("COPY vault_reseal FROM STDIN") as copy:
                for pseudonym, kind, clear in legacy:
                    copy.write_row((pseudonym, *data_key.encrypt(kind, pseudonym, clear)))
            conn.execute(
                """UPDATE vault.identity v SET nonce = r.nonce, ciphertext = r.ciphertext, data_key_id = %s
                   FROM vault_reseal r WHERE r.pseudonym = v.pseudonym""",
                (data_key.id,),
            )
        moved = conn.execute("UPDATE vault.identity SET vault_key_version = %s", (sealer.version,)).rowcount
        rekeyed = {
            "vault.identity (now opened by the new key pair)": moved,
            "vault.data_key (wrapped again)": len(rewrapped),
            "vault.identity (legacy entries encrypted again, under a new data key)": len(legacy),
        }
        conn.execute(
            """INSERT INTO audit.key_rotation (old_key_version, new_key_version, pseudonyms_mapped,
                                                        rows_rekeyed, purpose)
                        VALUES (%s, %s, %s, %s, 'vault')""",
            (opener.version, sealer.version, moved, json.dumps(rekeyed)),
        )
        if before_commit:
            before_commit()
    progress(
        f"Moved {moved:,} vault entries from {opener.version} to {sealer.version}: {len(rewrapped):,} data keys "
        f"wrapped again, {len(legacy):,} legacy entries encrypted again."
    )
    return Rotation(opener.version, sealer.version, moved, rekeyed)
