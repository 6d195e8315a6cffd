"""Pseudonyms by purpose: the ids analysts and care teams see, keyed again under keys no source holds.

The transit pseudonym (the at-source HMAC of the NHS number under the linkage key, and the local
pseudonyms made with a key derived from it) links records on arrival. Every source holds the linkage key,
and there are only about 10^9 NHS numbers, so a transit pseudonym can be reversed by anyone at a source: it
stays in `raw` (and the internal staging and intermediate models) and is never published.

Each published purpose has its own key and its own id for the same person:
- `secondary_use` (`marts`, `reporting`: planning, commissioning, BCF), read by `analyst`;
- `direct_care` (`direct_care.case_finding`), read by `care_team`; only these ids can be re-identified.

Where the mapping lives, and why that is safe: this module, a Python step of the marts DAG before dbt runs
(`assign_purpose_pseudonyms`), reads each transit pseudonym that raw holds and is not mapped yet, computes
its two ids with the purpose keys in this process, and writes `restricted.pseudonym` (transit -> both ids).
The keys never leave this process: not to dbt, not to PostgreSQL (no key in any SQL text, so none in a server
log). `restricted` is readable by the warehouse owner alone (dbt, which joins the mapping in its mart models);
no grant gives it to analyst, care_team, ig_auditor or loader, so no relation that those roles read holds both
ids of a person, nor a transit pseudonym. An id is stable while its key is: the mapping is kept, so a person
keeps their ids from build to build (and through a rotation of the linkage key, which re-keys the transit side
only). A purpose key is rotated with `pophealth rotate-key --purpose`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pophealth.identity.keys import DirectCareKey, KeyError_, SecondaryUseKey, load_purpose_key
from pophealth.identity.pseudonymise import KeyedHash
from pophealth.warehouse import db
from pophealth.warehouse.schema import optout_list_in_force

PURPOSES = ("secondary_use", "direct_care")
#: The columns of raw whose values can become a published person or spell: every one is mapped.
TRANSIT_COLUMNS = (
    ("raw", "gp_register", "nhs_number_key"),
    ("raw", "apc_episode", "nhs_number_key"),
    ("raw", "apc_episode", "spell_key"),
    ("raw", "cld_event", "nhs_number_key"),
    ("raw", "cld_event", "la_person_key"),
)
_BATCH = 20_000


class PublishedIdsRefused(RuntimeError):
    """The published ids cannot be made (no key, not the key the ids were made with, no opt-out list); says why."""


@dataclass(frozen=True)
class Assigned:
    new_transit_pseudonyms: int
    key_versions: dict[str, str]


class PurposeKeyring:
    """The two purpose keys, as keyed hashes ready to copy; never printed."""

    __slots__ = ("_macs", "versions")

    def __init__(self, keys: dict[str, SecondaryUseKey | DirectCareKey]):
        self._macs = {
            purpose: KeyedHash(key.secret_bytes(), f"pophealth|{purpose}|".encode()) for purpose, key in keys.items()
        }
        self.versions = {purpose: key.version for purpose, key in keys.items()}

    @classmethod
    def load(cls) -> PurposeKeyring:
        try:
            return cls({purpose: load_purpose_key(purpose) for purpose in PURPOSES})
        except KeyError_ as exc:
            raise PublishedIdsRefused(
                f"{exc} Without it no published id can be made: the marts are not built."
            ) from None

    def hashes(self, purpose: str) -> Callable[[str], str]:
        """One purpose's ids as one function (transit pseudonym -> id): called twice for each of millions."""
        hexdigest = self._macs[purpose].hexdigest
        return lambda transit: hexdigest(transit.encode("ascii"))

    def id_for(self, purpose: str, transit: str) -> str:
        return self.hashes(purpose)(transit)

    def __repr__(self) -> str:
        return f"PurposeKeyring(versions={self.versions})"


def recorded_versions(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT purpose, key_version FROM restricted.purpose_key").fetchall())


def _check_versions(conn: psycopg.Connection, keyring: PurposeKeyring) -> None:
    recorded = recorded_versions(conn)
    for purpose, version in keyring.versions.items():
        if purpose not in recorded:
            conn.execute(
                "INSERT INTO restricted.purpose_key (purpose, key_version) VALUES (%s, %s)", (purpose, version)
            )
        elif recorded[purpose] != version:
            raise PublishedIdsRefused(
                f"the {purpose.replace('_', '-')} key in use (version {version}) is not the one the warehouse's "
                f"{purpose.replace('_', '-')} ids were made with (version {recorded[purpose]}): use that key, or "
                f"rotate to the new one with `pophealth rotate-key --purpose {purpose} --new-key-file FILE`"
            )


def _require_optout_list(conn: psycopg.Connection) -> None:
    # Without a list in force the secondary-use marts could not leave opted-out people out: build nothing.
    if optout_list_in_force(conn) is None:
        raise PublishedIdsRefused(
            "no national data opt-out list is in force (none loaded yet, or emptied by a linkage key rotation): "
            "the secondary-use marts cannot leave opted-out people out, so nothing is built; load the latest "
            "optouts_<YYYYMMDD>.csv first"
        )


def _unmapped_query() -> str:
    """The transit pseudonyms of raw not yet mapped, each once. Each value is looked up in the mapping before the
    duplicates go: once most are mapped, few are left to sort. At Essex scale, read through the cursor that streams
    them: 2.2 s against 4.2 s with nothing new, 3.5 s against 4.5 s with everything new (issue 19)."""
    union = " UNION ALL ".join(
        f"SELECT {column} AS transit FROM {schema}.{table} WHERE {column} IS NOT NULL"
        for schema, table, column in TRANSIT_COLUMNS
    )
    return (
        f"SELECT DISTINCT t.transit FROM ({union}) t "
        "WHERE NOT EXISTS (SELECT FROM restricted.pseudonym p WHERE p.transit_key = t.transit)"
    )


def rebuilds_indexes(new: int, mapped: int) -> bool:
    """Whether `new` pseudonyms are many enough, beside the `mapped` ones, to build the mapping's unique indexes again
    after inserting them rather than keep the indexes up row by row.

    The three indexes are on keyed hashes, so each new row lands at a random place in each of them; once they
    outgrow the server's caches, every row costs three random page writes. At Essex scale (2,044,154 new
    pseudonyms into an empty mapping) the COPY into the indexed table took 29.6 s; the COPY without indexes 2.4 s,
    and building the three 6.5 s (issue 19). Building again costs in proportion to everything mapped, keeping up
    to what is new: about 3 us a row against 13, so from a third of those mapped new, a build is cheaper."""
    return new > 0 and new * 3 >= mapped


def assign_purpose_pseudonyms(progress: Callable[[str], None] | None = None) -> Assigned:
    """Give every transit pseudonym in raw its secondary-use and direct-care ids (those it has keep them).

    The new ones are written to a temporary table first, then added to the mapping in one statement: in the transit
    pseudonyms' order, or, when they are many (`rebuilds_indexes`), with the mapping's unique constraints dropped
    and made again, in the same transaction. A duplicate id then fails the transaction as the constraint would
    have, and nobody sees the mapping without its constraints: the ALTERs lock it until the commit."""
    keyring = PurposeKeyring.load()  # fail closed: no key, no ids, no marts
    added = 0
    with db.connect() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pophealth purpose pseudonyms'))")
        _require_optout_list(conn)
        _check_versions(conn, keyring)
        conn.execute(
            "CREATE TEMPORARY TABLE new_pseudonym (transit_key text, secondary_use_id text, direct_care_id text) "
            "ON COMMIT DROP"
        )
        secondary_use, direct_care = keyring.hashes("secondary_use"), keyring.hashes("direct_care")
        # A second connection streams the unmapped pseudonyms (one connection cannot read and COPY at once). It is
        # closed before the mapping is written: its read's lock on the mapping would stop the ALTERs for good.
        with db.connect() as reading, reading.cursor(name="unmapped") as unmapped, conn.cursor() as writer:
            unmapped.execute(_unmapped_query())
            with writer.copy("COPY new_pseudonym FROM STDIN") as copy:
                while batch := unmapped.fetchmany(_BATCH):
                    for (transit,) in batch:
                        copy.write_row((transit, secondary_use(transit), direct_care(transit)))
                    added += len(batch)
                    if progress and added % (_BATCH * 25) == 0:
                        progress(f"  {added:,} pseudonyms given their published ids")
        if added:
            try:
                _add_to_mapping(conn, added)
            except psycopg.errors.UniqueViolation as exc:
                # Not the server's message: it names the key, and a transit pseudonym must not reach a log.
                raise PublishedIdsRefused(
                    f"a new pseudonym's published id is already another's ({exc.diag.constraint_name}): nothing was "
                    "assigned and no marts are built; restricted.pseudonym has been changed by hand, or a key reused"
                ) from None
        conn.execute("ANALYZE restricted.pseudonym")
    return Assigned(added, keyring.versions)


def _add_to_mapping(conn: psycopg.Connection, added: int) -> None:
    mapped = db.one_row(
        conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'restricted.pseudonym'::regclass")
    )[0]
    constraints: list[tuple[str, str]] = []
    if rebuilds_indexes(added, mapped):
        # The unique constraints as schema.sql made them, read back so that they are made again exactly.
        constraints = conn.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = 'restricted.pseudonym'::regclass AND contype IN ('p', 'u') ORDER BY conname"""
        ).fetchall()
    for name, _ in constraints:
        conn.execute(sql.SQL("ALTER TABLE restricted.pseudonym DROP CONSTRAINT {}").format(sql.Identifier(name)))
    # Kept up row by row, in the transit pseudonyms' order: the primary key's pages are then written one after another.
    conn.execute(
        "INSERT INTO restricted.pseudonym (transit_key, secondary_use_id, direct_care_id) "
        "SELECT transit_key, secondary_use_id, direct_care_id FROM new_pseudonym"
        + ("" if constraints else " ORDER BY transit_key")
    )
    if constraints:
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # each index's sort in memory at Essex scale
    for name, definition in constraints:
        conn.execute(
            sql.SQL("ALTER TABLE restricted.pseudonym ADD CONSTRAINT {} {}").format(
                sql.Identifier(name), sql.SQL(definition)
            )
        )


def rotate_purpose_key(
    purpose: str, new_key: SecondaryUseKey | DirectCareKey, progress: Callable[[str], None] = print
) -> dict[str, object]:
    """Re-key every id of one purpose under a new key, in one transaction; the other purpose is untouched.

    The published ids of that purpose all change (that is the point of rotating): analysts' or care teams'
    saved ids stop matching, and the marts are rebuilt next."""
    if purpose not in PURPOSES:
        raise PublishedIdsRefused(f"no purpose {purpose!r}: one of {', '.join(PURPOSES)}")
    current = load_purpose_key(purpose)
    if current == new_key:
        raise PublishedIdsRefused("the new key is the current key")
    old_ring = PurposeKeyring({purpose: current})
    new_ring = PurposeKeyring({purpose: new_key})
    column = f"{purpose}_id"
    with db.connect() as conn:
        conn.execute("LOCK TABLE restricted.pseudonym, restricted.purpose_key IN ACCESS EXCLUSIVE MODE")
        recorded = recorded_versions(conn).get(purpose)
        if recorded is not None and recorded != old_ring.versions[purpose]:
            raise PublishedIdsRefused(
                f"the warehouse's {purpose} ids were made with key {recorded}, not with the "
                f"current key given ({old_ring.versions[purpose]})"
            )
        conn.execute(
            "CREATE TEMPORARY TABLE purpose_rekey (transit_key text PRIMARY KEY, new_id text NOT NULL) ON COMMIT DROP"
        )
        transits = [r[0] for r in conn.execute("SELECT transit_key FROM restricted.pseudonym")]
        with conn.cursor().copy("COPY purpose_rekey FROM STDIN") as copy:
            for transit in transits:
                copy.write_row((transit, new_ring.id_for(purpose, transit)))
        # Unique ids: swap through the temporary table in one statement.
        rekeyed = conn.execute(
            f"UPDATE restricted.pseudonym p SET {column} = r.new_id FROM purpose_rekey r "
            "WHERE r.transit_key = p.transit_key"
        ).rowcount
        conn.execute(
            """INSERT INTO restricted.purpose_key (purpose, key_version) VALUES (%s, %s)
                        ON CONFLICT (purpose) DO UPDATE SET key_version = excluded.key_version, set_at = now()""",
            (purpose, new_ring.versions[purpose]),
        )
        conn.execute(
            """INSERT INTO audit.key_rotation (purpose, old_key_version, new_key_version, pseudonyms_mapped,
                                                        rows_rekeyed) VALUES (%s, %s, %s, %s, %s)""",
            (
                purpose,
                old_ring.versions[purpose],
                new_ring.versions[purpose],
                rekeyed,
                json.dumps({f"restricted.pseudonym.{column}": rekeyed}),
            ),
        )
    progress(
        f"Re-keyed {rekeyed:,} {purpose.replace('_', '-')} ids ({old_ring.versions[purpose]} -> "
        f"{new_ring.versions[purpose]}); rebuild the marts to publish them."
    )
    return {
        "purpose": purpose,
        "old": old_ring.versions[purpose],
        "new": new_ring.versions[purpose],
        "rekeyed": rekeyed,
    }


def record_optouts_by_purpose(run_id: str | None = None) -> dict[str, int]:
    """After a marts build: how many people each purpose left out under the opt-out list in force (audit)."""
    with db.connect() as conn:
        in_force = optout_list_in_force(conn)
        ((left_out,),) = conn.execute(
            """SELECT count(*) FROM intermediate.int_person p
               WHERE EXISTS (SELECT FROM restricted.optout o WHERE o.nhs_number_key = p.person_key)"""
        ).fetchall()
        ((on_list,),) = conn.execute("SELECT count(*) FROM restricted.optout").fetchall()
        counts = {"secondary_use": left_out, "direct_care": 0}
        for purpose, people in counts.items():
            conn.execute(
                """INSERT INTO audit.optout_by_purpose (run_id, optout_load_id, optout_period_end, purpose,
                                                        people_on_list, people_left_out)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                (
                    run_id,
                    in_force[0] if in_force else None,
                    in_force[1] if in_force else None,
                    purpose,
                    on_list,
                    people,
                ),
            )
    return counts
