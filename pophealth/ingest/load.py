"""Loading one extract: stage it (validated and pseudonymised) in a batch table, then publish or refuse it.

The walk of one file, three steps of its group's `load` task (operate/orchestration.py, `load_files`):
1. `stage_extract`: read the file as a stream, pseudonymise every row in memory, COPY the rows into
   `load_batch.load_<id>`, quarantine the rows that cannot be loaded (with a reason, never a value),
   and count everything in `audit.load`, including the rows of people on the opt-out list in force
   (loaded: the list decides what each purpose may use at the marts build, see identity/purposes.py). One
   transaction: a file is staged whole or not at all.
2. the quality gate runs on the batch table (`pophealth.quality.gates`).
3. `publish_load`: in one transaction, replace any earlier load of the same feed, provider and period
   (a resubmission) and move the batch into the raw table; or `refuse_load` drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
from psycopg import sql

from pophealth.contract import agreements
from pophealth.contract.feeds import FEEDS_BY_NAME, Feed
from pophealth.identity import vault
from pophealth.identity.keys import KeyError_, load_linkage_key, load_vault_public_key
from pophealth.identity.pseudonymise import PostcodeLookup, Pseudonymiser
from pophealth.ingest import pieces
from pophealth.ingest.feeds import RowContext, identity_columns_present
from pophealth.ingest.landing import (
    SYMLINK_REASON,
    ExtractFile,
    FileRejected,
    identify,
    open_extract,
    scan,
    settled,
    sha256_of,
    why_not_an_extract,
)
from pophealth.warehouse import audit, db
from pophealth.warehouse.schema import optout_list_in_force, prepare_warehouse, warehouse_key_version

log = logging.getLogger(__name__)

#: Ingest works with the loader role's grants only: raw, the batch area, opt-outs, vault writes, load audit.
LOADER = "loader"


class LoadRefused(Exception):
    """A file that was not loaded; the message is for the data engineer and holds no value from the file."""


@dataclass(frozen=True)
class StageOutcome:
    load_id: int
    file_name: str
    feed: str
    status: str  # validated, duplicate
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_opted_out: int = 0  # of the rows loaded: people on the opt-out list in force (direct care only)


def batch_table(load_id: int) -> str:
    return f"load_batch.load_{int(load_id)}"


def _meta_columns(feed: Feed) -> tuple[str, ...]:
    if feed.personal:
        return ("load_id", "source_row", "key_version")
    return ("load_id",)


#: A file recorded with one of these was dealt with as it is, and is not staged again. An opt-out list that a
#: later one superseded, or that was stale, is never published again (the list in force only goes forward);
#: an extract of another feed that was superseded is published again when it is delivered again (a period's
#: good file restored after a wrong resubmission).
SETTLED = {"optouts": ("published", "superseded", "stale")}
SETTLED_OTHER = ("published",)


def pending_extracts(landing: Path, feed: str) -> list[str]:
    """The complete files of a feed in the landing folder that are not already dealt with as they are now.

    Of opt-out lists, only the newest one, and only when it is not older than the list in force: the list in
    force is the one with the latest date, whatever order the files arrive in (`stale_optout_lists`)."""
    extracts = settled([e for e in scan(landing).extracts if e.feed == feed])
    if not extracts:
        return []
    prepare_warehouse()
    return [str(e.path) for e, _ in _pending(extracts, feed)]


def _pending(extracts: list[ExtractFile], feed: str) -> list[tuple[ExtractFile, str]]:
    """Of a feed's extracts, those not dealt with as they are now (pending_extracts), each with its sha256 (read
    once per look)."""
    if not extracts:
        return []
    with db.connect(role=LOADER) as conn:
        mark_interrupted_loads(conn)
        seen = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT file_name, file_sha256 FROM audit.load WHERE feed = %s AND status = ANY(%s)",
                (feed, list(SETTLED.get(feed, SETTLED_OTHER))),
            )
        }
        # A period whose latest delivery was refused: delivering the published file again resolves it (it is
        # recorded as a duplicate), so such a file is not skipped.
        refused = {(row["provider"], row["period_end"]) for row in audit.latest_refusals(conn, feed)}
        in_force = optout_list_in_force(conn) if feed == "optouts" else None
    digests = [(e, sha256_of(e.path)[0]) for e in extracts]
    pending = [(e, sha) for e, sha in digests if (e.name, sha) not in seen or (e.provider, e.period_end) in refused]
    if feed == "optouts":
        newest = max((e.period_end for e, _ in pending if e.period_end is not None), default=None)
        pending = [
            (e, sha)
            for e, sha in pending
            if newest is not None and e.period_end == newest and (in_force is None or newest >= in_force[1])
        ]
    return pending


#: A load with one of these has not finished: its file is still to be loaded (a load whose process died, found
#: `interrupted` by `mark_interrupted_loads`, and a staged load never published are taken again).
UNFINISHED = ("loading", "validated", "interrupted")


def awaiting_extracts(landing: Path, feeds: tuple[str, ...] | list[str]) -> list[str]:
    """The files of these feeds in the landing folder that are still to be loaded: new or changed, being
    written or not, and not yet tried as they are now. A file that was tried and refused (or found a duplicate,
    or stale) is not awaited: a corrected file, which is new, is. This is what a scheduled load waits for before
    a later feed of the load order, and what a build of the marts waits for (pophealth/operate/orchestration.py)."""
    extracts = [e for e in scan(landing).extracts if e.feed in feeds]  # being written or not: it is coming
    if not extracts:
        return []
    prepare_warehouse()
    pending = [found for feed in feeds for found in _pending([e for e in extracts if e.feed == feed], feed)]
    if not pending:
        return []
    with db.connect(role=LOADER) as conn:
        tried = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT file_name, file_sha256 FROM audit.load WHERE feed = ANY(%s) AND status <> ALL(%s)",
                (list(feeds), list(UNFINISHED)),
            )
        }
    return [str(e.path) for e, sha in pending if (e.name, sha) not in tried]


def _stale_message(period_end: date | None, newer: date | None, where: str) -> str:
    return (
        f"stale: this opt-out list is dated {period_end}, before {where} ({newer}); an older list never "
        "replaces a newer one, so nothing of it was loaded"
    )


def _in_force_message(period_end: date | None, in_force: tuple[int, date]) -> str:
    return _stale_message(period_end, in_force[1], f"the list in force (load {in_force[0]})")


def stale_optout_lists(landing: Path, run_id: str | None = None) -> list[str]:
    """Record, once each, the opt-out lists in the landing folder that will never be in force as `stale`, with
    why; returns their messages. pending_extracts passes over exactly these: the lists older than the newest one
    waiting, or than the list in force."""
    waiting = [e for p in pending_extracts(landing, "optouts") if (e := identify(Path(p))) is not None]
    messages = []
    with db.connect(role=LOADER) as conn:
        in_force = optout_list_in_force(conn)
        seen = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT file_name, file_sha256 FROM audit.load WHERE feed = 'optouts' AND status = ANY(%s)",
                (list(SETTLED["optouts"]),),
            )
        }
        for extract in settled([e for e in scan(landing).extracts if e.feed == "optouts"]):
            sha, size = sha256_of(extract.path)
            if extract in waiting or (extract.name, sha) in seen:
                continue
            if waiting:
                message = _stale_message(
                    extract.period_end, waiting[0].period_end, "a newer list in the landing folder"
                )
            else:
                # Neither waiting nor loaded: older than the list in force, so there is one.
                assert in_force is not None
                message = _in_force_message(extract.period_end, in_force)
            _insert_audit(conn, extract, run_id, sha, size, "stale", message)
            messages.append(f"{extract.name}: {message}")
    for message in messages:
        log.warning(message)
    return messages


def _insert_audit(
    conn: psycopg.Connection,
    extract: ExtractFile,
    run_id: str | None,
    sha: str,
    size: int,
    status: str,
    message: str | None = None,
) -> int:
    return db.one_row(
        conn.execute(
            """INSERT INTO audit.load (run_id, feed, provider, period_end, file_name, file_sha256, file_bytes, status,
                                   message, finished_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s <> 'loading' THEN now() END)
           RETURNING load_id""",
            (
                run_id,
                extract.feed,
                extract.provider,
                extract.period_end,
                extract.name,
                sha,
                size,
                status,
                message,
                status,
            ),
        )
    )[0]


def _close_unpublished(conn: psycopg.Connection, load_id: int, status: str, message: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(batch_table(load_id))))
    vault.drop_batch(conn, load_id)
    conn.execute(
        "UPDATE audit.load SET status = %s, message = %s, finished_at = now() WHERE load_id = %s",
        (status, message, load_id),
    )


def _refuse(load_id: int, status: str, message: str) -> None:
    with db.connect(role=LOADER) as conn:
        _close_unpublished(conn, load_id, status, message)


def _published_as(
    conn: psycopg.Connection, feed: str, provider: str | None, period_end: date | None, sha: str
) -> int | None:
    """The load that published this very file for this provider and period, if one did."""
    row = conn.execute(
        """SELECT load_id FROM audit.load WHERE feed = %s AND provider IS NOT DISTINCT FROM %s
           AND period_end IS NOT DISTINCT FROM %s AND file_sha256 = %s AND status = 'published'""",
        (feed, provider, period_end, sha),
    ).fetchone()
    return row[0] if row else None


def _published_postcodes(conn: psycopg.Connection) -> PostcodeLookup:
    """The postcode lookup as last published (raw.ref_postcode): a lookup its gate refused is never used, and
    nothing in the landing folder is read for it. Read on the staging connection (no connection of its own)."""
    rows = conn.execute("SELECT postcode_digest, lsoa_code, locality_code FROM raw.ref_postcode").fetchall()
    if not rows:
        raise LoadRefused(
            "no postcode lookup is published: postcodes cannot be reduced to LSOA, so nothing is loaded; deliver a "
            "ref_postcode_lookup.csv that passes its gate first (a lookup published before postcodes were kept "
            "must be delivered again)"
        )
    return PostcodeLookup.from_rows(rows)


def _publish_postcodes(conn: psycopg.Connection, load_id: int) -> int:
    """The lookup's postcodes replace the last published ones (raw.ref_postcode: public geography, read by
    the loader only). Runs in publish_load's transaction, before the batch table goes."""
    conn.execute("DELETE FROM raw.ref_postcode")
    count = conn.execute(
        sql.SQL(
            """INSERT INTO raw.ref_postcode (load_id, postcode_digest, lsoa_code, locality_code, la_code)
           SELECT DISTINCT ON (postcode_digest) load_id, postcode_digest, lsoa_code, locality_code, la_code FROM {}
           ORDER BY postcode_digest, lsoa_code"""
        ).format(sql.SQL(batch_table(load_id)))
    ).rowcount
    log.info("postcode lookup of load %d published: %d postcodes", load_id, count)
    return count


#: The opt-out list last read by this process, under what identifies its contents (`_optout_set`): a load task
#: stages every file of a feed in one process (54 monthly hospital files for Essex), and reading the list again for
#: each file took 73 ms at Essex's 82,372 opt-outs, about 4 s of staging (issue 19). One list at most.
_optouts_read: dict[tuple[object, ...], frozenset[str]] = {}


def _optout_set(conn: psycopg.Connection, key_version: str) -> frozenset[str]:
    published = conn.execute(
        """SELECT key_version, load_id, published_at, pg_postmaster_start_time() FROM audit.load
           WHERE feed = 'optouts' AND status = 'published'"""
    ).fetchone()
    if not published:
        raise LoadRefused(
            "no national data opt-out list has been loaded yet: personal data cannot be loaded before opt-outs "
            "can be applied (load an optouts_<YYYYMMDD>.csv first)"
        )
    if published[0] != key_version:
        raise LoadRefused(
            f"the opt-out list in the warehouse was pseudonymised under key {published[0]}, not {key_version}: "
            "load the opt-out list again under the current key first"
        )
    # restricted.optout changes only with the published list: a new list is a new load, and a re-key empties the
    # table and unpublishes the list (identity.rekey). So the published load, under its key, on this server (its
    # socket and start), says which list the table holds.
    held = (conn.info.host, conn.info.port, conn.info.dbname, *published)
    if held not in _optouts_read:
        # One array in one row, not a row per person: read row by row, the list took half the staging of a small
        # file. (A text joined by commas reads in half the time, but would split a key that held a comma; read once
        # per process, the difference no longer counts.)
        keys = db.one_row(conn.execute("SELECT array_agg(nhs_number_key) FROM restricted.optout"))[0]
        _optouts_read.clear()
        _optouts_read[held] = frozenset(keys or ())
    return _optouts_read[held]


def _check_key_is_the_warehouses(conn: psycopg.Connection, key_version: str) -> None:
    # A load under another key would make pseudonyms that link to nobody: refuse it.
    current = warehouse_key_version(conn)
    if current is not None and current != key_version:
        raise LoadRefused(
            f"the linkage key in use (version {key_version}) is not the warehouse's key (version {current}); "
            "use the key the warehouse was built or last re-keyed with"
        )


@contextmanager
def _vault_copy(conn: psycopg.Connection | None, writer: vault.VaultWriter | None) -> Iterator[None]:
    if conn is None or writer is None:
        yield
        return
    with vault.open_batch(conn, writer):
        yield


@dataclass(frozen=True)
class EarlierAttempt:
    load_id: int
    status: str
    message: str | None


def earlier_attempt(path: str | Path, run_id: str) -> EarlierAttempt | None:
    """The newest load of this file (by its content) in this run, for a retried task to take up where the earlier
    try left it: published, staged (`validated`), refused; None when no try got as far as recording one."""
    path = Path(path)
    if not path.is_file():
        return None
    sha, _ = sha256_of(path)
    with db.connect(role=LOADER) as conn:
        mark_interrupted_loads(conn)  # a try cut off while staging left `loading`: it is `interrupted` now
        row = conn.execute(
            """SELECT load_id, status, message FROM audit.load WHERE run_id = %s AND file_sha256 = %s
               ORDER BY load_id DESC LIMIT 1""",
            (run_id, sha),
        ).fetchone()
    return EarlierAttempt(*row) if row and row[1] not in ("loading", "interrupted") else None


def stage_extract(path: str | Path, run_id: str | None = None) -> StageOutcome:
    """Validate, pseudonymise and stage one file. Raises LoadRefused (after recording why) when it cannot."""
    path = Path(path)
    extract = identify(path)
    if extract is None:
        raise LoadRefused(
            f"{path.name}: the file name does not match any feed of the extract contract ({why_not_an_extract(path)})"
        )
    if path.is_symlink():
        raise LoadRefused(f"{path.name}: {SYMLINK_REASON}")
    if not path.is_file():
        raise LoadRefused(f"{path.name}: the file is no longer in the landing folder")
    try:
        pieces.staging_processes()  # a setting that cannot be read stops the load before anything is recorded
    except ValueError as setting:
        raise LoadRefused(f"{path.name}: not loaded: {setting}") from None
    feed = FEEDS_BY_NAME[extract.feed]
    sha, size = sha256_of(path)
    # This connection stays open while the file is staged: its lock on the load says the load is alive.
    with db.connect(role=LOADER) as conn:
        mark_interrupted_loads(conn)
        earlier = _published_as(conn, extract.feed, extract.provider, extract.period_end, sha)
        if earlier:
            load_id = _insert_audit(
                conn, extract, run_id, sha, size, "duplicate", f"the same file was already published as load {earlier}"
            )
            return StageOutcome(load_id, extract.name, extract.feed, "duplicate")
        in_force = optout_list_in_force(conn) if extract.feed == "optouts" else None
        if in_force and extract.period_end is not None and extract.period_end < in_force[1]:
            message = _in_force_message(extract.period_end, in_force)
            _insert_audit(conn, extract, run_id, sha, size, "stale", message)
            conn.commit()  # recorded, then refused
            raise LoadRefused(f"{extract.name}: {message}")
        load_id = _insert_audit(conn, extract, run_id, sha, size, "loading")
        conn.execute("SELECT pg_advisory_lock(hashtext('pophealth load'), %s::int)", (load_id,))
        conn.commit()  # the row is seen as loading only once its lock is held
        try:
            agreements.check_agreement(extract.feed, extract.provider)  # before anything from the file is stored
            return _stage(extract, feed, load_id, conn)
        except (FileRejected, LoadRefused, KeyError_, agreements.NoAgreement) as exc:
            _refuse(load_id, "rejected", str(exc))
            raise LoadRefused(f"{extract.name}: {exc}") from None
        except psycopg.OperationalError:
            raise  # the server stopped or the connection went: the lock case, recorded `interrupted` next time
        except Exception as exc:  # noqa: BLE001  anything else is a crash: recorded, never mistaken for an interruption
            message = crash_message(exc)
            log.error("%s: %s (load %d); where: %s", extract.name, message, load_id, _crash_site(exc))
            _refuse(load_id, "failed", message)
            raise LoadFailed(f"{extract.name}: {message}") from None


class LoadFailed(LoadRefused):
    """A load that crashed: recorded `failed`; the message names the exception's class, never its text (which
    can hold a value from the file, e.g. the character a codec could not encode)."""


def crash_message(exc: BaseException) -> str:
    name = exc.exception if isinstance(exc, pieces.WorkerFailed) else type(exc).__name__
    return (
        f"the load failed with {name} (a crash, not a rule of the contract); nothing of the "
        "file was stored; a person must look at it: the marts are not rebuilt until the period has a good load"
    )


def _crash_site(exc: BaseException) -> str:
    """Where the exception was raised, as file:line of each frame: code locations only, no values."""
    return exc.site if isinstance(exc, pieces.WorkerFailed) else pieces.code_site(exc)


INTERRUPTED = (
    "the load was cut off before it was staged (its process or the database stopped); nothing of the "
    "file was stored, and the file is loaded again by the next run"
)


def mark_interrupted_loads(conn: psycopg.Connection) -> int:
    """Loads still `loading` whose process is gone (its connection, and so its lock, went with it) become
    `interrupted`: staging is one transaction, so nothing of them was stored. Returns how many."""
    return conn.execute(
        """UPDATE audit.load SET status = 'interrupted', message = %s, finished_at = now()
           WHERE status = 'loading' AND pg_try_advisory_xact_lock(hashtext('pophealth load'), load_id::int)""",
        (INTERRUPTED,),
    ).rowcount


#: Where each feed's rows say its data starts: a hospital file holds the spells finished in its period (the
#: unfinished ones as they stand at its end), so the earliest discharge (else the earliest episode end); a social
#: care file says its own reporting period. Periods of the contract are whole months (a month, a quarter, a year,
#: the year to date), so coverage starts on the first day of that month.
COVERAGE_START = {
    "apc": "coalesce(min(disdate), min(epiend))",
    "cld": "min(reporting_period_start_date)",
}


def _coverage(
    conn: psycopg.Connection, table: str, feed: str, period_end: date | None
) -> tuple[date | None, date | None]:
    """(covers_from, covers_to) of a staged load, from its rows: see COVERAGE_START. A register snapshot covers its
    one date; reference data and opt-out lists cover no period."""
    if feed == "gp_register":
        return period_end, period_end
    if feed not in COVERAGE_START or period_end is None:
        return None, None
    start = db.one_row(
        conn.execute(
            sql.SQL("SELECT date_trunc('month', {})::date FROM {}").format(
                sql.SQL(COVERAGE_START[feed]), sql.SQL(table)
            )
        )
    )[0]
    # No row dated (every row unfinished): the file is taken to cover the month of its period end.
    start = start or period_end.replace(day=1)
    return min(start, period_end.replace(day=1)), period_end


@contextmanager
def _vault_connection(feed: Feed) -> Iterator[psycopg.Connection | None]:
    """The connection the vault's COPY runs on, beside the batch table's (one connection holds one COPY at a
    time); a feed that writes no vault entry opens none."""
    if not feed.personal:
        yield None
        return
    with db.connect(role=LOADER) as conn:
        yield conn


def _stage(extract: ExtractFile, feed: Feed, load_id: int, conn: psycopg.Connection) -> StageOutcome:
    """Stage the file in one transaction on `conn`, the connection that holds the load's lock (stage_extract):
    no connection of its own to open for each file. A failure rolls the transaction back, and the lock stays
    held while stage_extract records why."""
    needs_key = feed.personal or feed.name == "optouts"
    key = load_linkage_key() if needs_key else None  # fail closed: no key, no load
    key_version = key.version if key else None
    # The vault's public key too, for a personal feed (it writes, never reads): every identity the load
    # pseudonymises goes to the vault.
    vault_writer = None
    if feed.personal and key_version:  # always both: a personal feed needs the key, and has it or is refused
        vault_writer = vault.VaultWriter(vault.VaultSealer(load_vault_public_key()), load_id, key_version)
    table = batch_table(load_id)
    meta = _meta_columns(feed)
    with conn.transaction(), _vault_connection(feed) as vault_conn:
        postcodes = _published_postcodes(conn) if feed.personal else PostcodeLookup.empty()
        if key_version:
            _check_key_is_the_warehouses(conn, key_version)
        optouts = _optout_set(conn, key_version) if key_version and feed.personal else frozenset()
        ctx = RowContext(None, postcodes, optouts, extract.provider, extract.period_end)
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(sql.SQL(table), sql.SQL(feed.table))
        )
        for column in feed.staged_only:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(sql.SQL(table), sql.Identifier(column)))
        handle, reader = open_extract(extract.path, feed.contract_columns, feed.required_columns)
        with handle:
            problem = identity_columns_present(feed, reader.columns)
            if problem:
                raise FileRejected(problem)
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in meta + feed.table_columns + feed.staged_only)
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.SQL(table), columns)
            with conn.cursor() as cur, cur.copy(copy_sql) as copy, _vault_copy(vault_conn, vault_writer):
                # The file's data key exists from here (open_batch): every identity hashed is told to its seals.
                seals = None
                if vault_writer and vault_writer.data_key and vault_conn:
                    seals = vault.VaultSeals(vault_writer.data_key, db.copy_transformer(vault_conn))
                if key:
                    ctx.pseudonymiser = Pseudonymiser(key, on_identity=seals.on_identity if seals else None)
                staging = pieces.Staging(
                    extract.path, feed, ctx, load_id, key_version, len(reader.columns), db.copy_transformer(conn), seals
                )
                totals = pieces.stage_rows(staging, reader, copy.write, vault_writer.write if vault_writer else None)
        rows_read, rows_loaded = totals.rows_read, totals.rows_loaded
        quarantine = [(load_id, row, column, reason) for row, column, reason in totals.quarantine]
        if rows_read == 0:
            raise FileRejected("the file has a header but no data rows")
        if quarantine:
            with (
                conn.cursor() as cur,
                cur.copy("COPY audit.quarantine (load_id, source_row, column_name, reason) FROM STDIN") as copy,
            ):
                for entry in quarantine:
                    copy.write_row(entry)
        covers_from, covers_to = _coverage(conn, table, extract.feed, extract.period_end)
        conn.execute(
            """UPDATE audit.load SET status = 'validated', key_version = %s, rows_read = %s, rows_loaded = %s,
                      rows_quarantined = %s, rows_opted_out = %s, rows_test_range = %s, rows_unlinked = %s,
                      extra_columns = %s, vault_entries = %s, covers_from = %s, covers_to = %s
               WHERE load_id = %s""",
            (
                key.version if key else None,
                rows_read,
                rows_loaded,
                len(quarantine),
                ctx.counters["opted_out"],
                ctx.counters["test_range"],
                ctx.counters["unlinked"],
                reader.extra_columns,
                vault_writer.stored if vault_writer else 0,
                covers_from,
                covers_to,
                load_id,
            ),
        )
    log.info(
        "%s: staged %d of %d rows (%d quarantined; %d of people with an opt-out, for direct care only) as load %d, %s",
        extract.name,
        rows_loaded,
        rows_read,
        len(quarantine),
        ctx.counters["opted_out"],
        load_id,
        f"by {totals.workers} worker processes" if totals.workers else "by the loading process",
    )
    return StageOutcome(
        load_id,
        extract.name,
        extract.feed,
        "validated",
        rows_read,
        rows_loaded,
        len(quarantine),
        ctx.counters["opted_out"],
    )


def refuse_load(load_id: int, message: str) -> None:
    """A staged load that failed its quality gate: nothing of it is published."""
    _refuse(load_id, "gate_failed", message)


def publish_load(load_id: int) -> dict[str, int]:
    """Move a staged, gated load into its raw table in one transaction; returns what changed."""
    with db.connect(role=LOADER) as conn:
        row = conn.execute(
            "SELECT feed, provider, period_end, status, file_sha256 FROM audit.load WHERE load_id = %s FOR UPDATE",
            (load_id,),
        ).fetchone()
        if row is None:
            raise LoadRefused(f"load {load_id} does not exist")
        feed_name, provider, period_end, status, sha = row
        if status == "duplicate":
            return {}
        if status != "validated":
            raise LoadRefused(f"load {load_id} is {status}, not validated: it cannot be published")
        feed = FEEDS_BY_NAME[feed_name]
        # One publisher per feed at a time: two loads of one source never interleave.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pophealth publish ' || %s))", (feed_name,))
        in_force = optout_list_in_force(conn) if feed_name == "optouts" else None
        if in_force and period_end < in_force[1]:
            # Two lists staged at once, the newer published first: the older never replaces it.
            message = _in_force_message(period_end, in_force)
            _close_unpublished(conn, load_id, "stale", message)
            conn.commit()
            raise LoadRefused(f"load {load_id}: {message}")
        same = _published_as(conn, feed_name, provider, period_end, sha)
        if same:
            # Staged at the same time as the same file, which published first: as if it had come after it.
            _close_unpublished(
                conn, load_id, "duplicate", f"the same file was published as load {same} while this one was staged"
            )
            return {}
        scope = (
            ""
            if feed.replaces_whole_table
            else " AND provider IS NOT DISTINCT FROM %s AND period_end IS NOT DISTINCT FROM %s"
        )
        params: tuple = (feed_name,) if feed.replaces_whole_table else (feed_name, provider, period_end)
        replaced = [
            r[0]
            for r in conn.execute(
                "SELECT load_id FROM audit.load WHERE feed = %s AND status = 'published'" + scope, params
            )
        ]
        target = sql.SQL(feed.table)
        if replaced:
            conn.execute(sql.SQL("DELETE FROM {} WHERE load_id = ANY(%s)").format(target), (replaced,))
            conn.execute(
                "UPDATE audit.load SET status = 'superseded', superseded_by = %s WHERE load_id = ANY(%s)",
                (load_id, replaced),
            )
        columns = sql.SQL(", ").join(
            sql.Identifier(c) for c in ("load_id",) + _meta_columns(feed)[1:] + feed.table_columns
        )
        distinct = sql.SQL("DISTINCT") if feed.replaces_whole_table else sql.SQL("")
        published = conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} {} FROM {}").format(
                target, columns, distinct, columns, sql.SQL(batch_table(load_id))
            )
        ).rowcount
        if feed_name == "ref_postcode_lookup":
            _publish_postcodes(conn, load_id)  # before the batch table goes: it holds the postcodes
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(batch_table(load_id))))
        changes = {
            "published_rows": published,
            "replaced_loads": len(replaced),
            "vault_entries_added": vault.publish_batch(conn, load_id),
        }
        conn.execute(
            "UPDATE audit.load SET status = 'published', published_at = now(), finished_at = now() WHERE load_id = %s",
            (load_id,),
        )
    return changes
