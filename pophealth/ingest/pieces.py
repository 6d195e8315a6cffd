"""A file's rows staged in pieces: by the loading process, or, a large file, by worker processes forked for it.

Staging is Python for every row (reading it, checking it, the keyed hashes, the vault's seals): one core's work,
22 times a bare COPY of the same rows at 10% of Essex (issue 19). A file of at least `WORKERS_FROM_BYTES` (1 MB) is
staged by `staging_processes()` forked workers: each reads the whole file and stages every W-th piece of
`PIECE_ROWS` rows; the loading process writes the pieces to the batch table's COPY in the file's order. A smaller
file, or a machine of one core, is staged by the loading process, through the same `_stage_piece`, piece after
piece. Either way the batch table, the quarantine, the counts and the vault's entries are the same
(tests/robustness/test_staging_pieces.py).

The workers are forked after the file's keys and data key are in memory, and inherit them; nothing but staged
pieces (pseudonymised COPY rows, sealed vault entries, reasons without values) comes back through their pipes.
They never touch the loading process's database connections, and log nothing.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pophealth.contract.feeds import Feed
from pophealth.identity.vault import VaultSeals
from pophealth.ingest.feeds import TRANSFORMS, RowContext, RowProblem
from pophealth.ingest.landing import CsvReader, FileRejected, open_extract
from pophealth.warehouse import db

#: Rows in a worker's piece: big enough that a piece's trip through a pipe is small beside its staging, small enough
#: that the workers' shares of a hospital file (5,000 to 12,000 rows at Essex scale) come out about even. With pieces
#: of 5,000, a file of 12,000 rows gave one worker 7,000 rows and the other 5,000. Two Essex hospital files: 0.86 s in
#: pieces of 5,000, 0.72 s in pieces of 1,000; the register's 1.56 million rows the same (18.4 / 18.3 s; issue 19).
PIECE_ROWS = 1_000
#: Rows in a piece the loading process stages itself: small, so that PostgreSQL reads each piece's COPY while the next
#: is staged (200,000 hospital rows: 18.0 s in pieces of 5,000, 16.8 s in pieces of 500, 16.8 s in pieces of 100).
PIECE_ROWS_HERE = 500
#: A file smaller than this is staged by the loading process alone: at about 3,000 hospital rows (500 KB, 0.16 s of
#: staging), forking and every worker reading the whole file cost what they give; two hospital files of 1 MB (5,700
#: rows) took 0.57 s alone and 0.44 s with two workers (issue 19).
WORKERS_FROM_BYTES = 512 << 10
ENV_STAGING_PROCESSES = "POPHEALTH_STAGING_PROCESSES"

log = logging.getLogger(__name__)  # the loading process's only: a worker logs nothing

#: A file's data rows as landing.open_extract reads them: (row number, 1 = the first data row; the row by column).
Rows = Iterator[tuple[int, dict[str, str]]]


def staging_processes() -> int:
    """Worker processes for a large file: POPHEALTH_STAGING_PROCESSES, else one per core (1: none)."""
    configured = os.environ.get(ENV_STAGING_PROCESSES, "").strip()
    if configured:
        if not configured.isascii() or not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"{ENV_STAGING_PROCESSES} must be a whole number of 1 or more, not {configured!r}")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Piece:
    """What staging one piece of a file made: nothing in it is identifiable."""

    rows_read: int = 0
    rows_loaded: int = 0
    copy_data: bytes = b""  # the loaded rows, as the batch table's COPY text
    quarantine: list[tuple[int, str | None, str]] = field(default_factory=list)  # source row, column, reason
    vault_lines: list[tuple[str, bytes]] = field(default_factory=list)  # VaultSeals.take
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Staging:
    """Everything a piece needs that is the same for the whole file; built by load._stage."""

    path: Path
    feed: Feed
    ctx: RowContext
    load_id: int
    key_version: str | None
    width: int  # the header's columns
    tx: Any  # the batch table COPY's adapters (db.copy_transformer)
    seals: VaultSeals | None  # a personal feed's: its ctx's pseudonymiser tells it every identity


@dataclass
class Totals:
    workers: int = 0  # the worker processes that staged the file; 0: the loading process alone
    rows_read: int = 0
    rows_loaded: int = 0
    quarantine: list[tuple[int, str | None, str]] = field(default_factory=list)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)  # RowContext.counters, summed

    def add(self, piece: Piece) -> None:
        self.rows_read += piece.rows_read
        self.rows_loaded += piece.rows_loaded
        self.quarantine.extend(piece.quarantine)
        self.counters.update(piece.counters)


def _stage_piece(staging: Staging, rows: Rows) -> Piece:
    """Stage the rows of one piece: each loaded (its COPY line, its identities sealed) or quarantined with a reason."""
    ctx, seals, width = staging.ctx, staging.seals, staging.width
    transform, copy_row, personal = TRANSFORMS[staging.feed.name], staging.feed.copy_row, staging.feed.personal
    load_id, key_version = staging.load_id, staging.key_version
    tx, copy_line = staging.tx, db.copy_line
    piece = Piece()
    lines = bytearray()
    ctx.counters = dict.fromkeys(ctx.counters, 0)
    for row_number, row in rows:
        piece.rows_read += 1
        if "__width__" in row:
            piece.quarantine.append((row_number, None, f"row has {row['__width__']} fields, the header has {width}"))
            continue
        counted = dict(ctx.counters)
        try:
            values = transform(row, ctx)
        except RowProblem as problem:
            piece.quarantine.append((row_number, problem.column, problem.reason))
            ctx.counters.update(counted)  # a quarantined row is not counted as loaded anything
            if seals:
                seals.drop_row()
            continue
        head = (load_id, row_number, key_version) if personal else (load_id,)
        copy_line(head + copy_row(values), tx, lines)
        if seals:
            seals.keep_row()
        piece.rows_loaded += 1
    piece.copy_data = bytes(lines)
    piece.counters = dict(ctx.counters)
    if seals:
        piece.vault_lines = seals.take()
    return piece


def _pieces_of(rows: Rows, mine: Callable[[int], bool], size: int) -> Iterator[Rows]:
    """The pieces of a file's rows that are `mine` (by their number, from 0), each as an iterator over its rows; the
    rows of the others are read past, so that every reader sees the whole file, and its errors where they are."""
    number = 0
    while True:
        piece = itertools.islice(rows, size)
        first = next(piece, None)
        if first is None:
            return
        if mine(number):
            yield itertools.chain((first,), piece)
        else:
            collections.deque(piece, maxlen=0)  # read past, in C
        number += 1


def stage_rows(
    staging: Staging,
    reader: CsvReader,
    write_rows: Callable[[bytes], None],
    write_vault: Callable[[list[tuple[str, bytes]]], None] | None,
) -> Totals:
    """Stage every row of the file, writing each piece (rows, vault entries) in the file's order; raises
    FileRejected where reading the file, or a row, refuses the whole file."""
    processes = staging_processes()
    pieces = None
    if processes > 1 and staging.path.stat().st_size >= WORKERS_FROM_BYTES:
        pieces = _start_workers(staging, processes)
    totals = Totals(workers=processes if pieces is not None else 0)
    if pieces is None:
        pieces = _here(staging, reader)
    try:
        for piece in pieces:
            write_rows(piece.copy_data)
            if write_vault is not None:
                write_vault(piece.vault_lines)
            totals.add(piece)
    finally:
        pieces.close()  # the workers stopped now, whatever stopped the file (a refusal, the server gone)
    staging.ctx.counters = {name: totals.counters[name] for name in staging.ctx.counters}
    return totals


def _here(staging: Staging, reader: CsvReader) -> Generator[Piece]:
    for rows in _pieces_of(reader.rows, lambda _: True, PIECE_ROWS_HERE):
        yield _stage_piece(staging, rows)


# --- the workers ----------------------------------------------------------------------------------------------

_END = "end"


class WorkerFailed(Exception):
    """A worker's crash, as the loading process reports it: the exception's class and where, never its text."""

    def __init__(self, exception: str, site: str):
        super().__init__(exception, site)
        self.exception, self.site = exception, site


def code_site(exc: BaseException) -> str:
    """Where an exception was raised, as file:line of its last 4 frames: code locations only, never a value."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _work(staging: Staging, index: int, count: int, out: Connection) -> None:
    """A worker: stage the pieces whose number is `index` modulo `count`, send each, then the end."""
    try:
        handle, reader = open_extract(staging.path, staging.feed.contract_columns, staging.feed.required_columns)
        with handle:
            for rows in _pieces_of(reader.rows, lambda n: n % count == index, PIECE_ROWS):
                out.send(_stage_piece(staging, rows))
        out.send(_END)
    except FileRejected as rejected:
        out.send(FileRejected(str(rejected)))
    except BaseException as exc:  # noqa: BLE001  reported by class and place only: its text may hold a value
        out.send(WorkerFailed(type(exc).__name__, code_site(exc)))


@dataclass
class _Worker:
    pid: int
    pieces: Connection  # the read end of the worker's pipe

    def next(self) -> object:
        """The worker's next piece (or its end, or its failure); a worker gone without a word is a failure."""
        try:
            return self.pieces.recv()
        except EOFError:  # every write end closed: the worker is gone
            _, status = os.waitpid(self.pid, 0)
            self.pid = 0
            return WorkerFailed("a staging worker that stopped", f"exit code {os.waitstatus_to_exitcode(status)}")

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
        self.pieces.close()


def _start_workers(staging: Staging, count: int) -> Generator[Piece] | None:
    """The file's pieces from `count` forked workers; None when this process cannot fork them (it then stages
    the file itself).

    os.fork, not multiprocessing.Process: a Celery worker's task process counts as daemonic to multiprocessing,
    which refuses it children (seen on the cluster: every large file fell back to the loading process). Each worker
    sends its pieces through a pipe of its own; the pipe's small buffer is what bounds the pieces in flight, and
    its end (EOF) says the worker is gone. A worker leaves by os._exit: nothing of the loading process (its
    connections, its log handlers, Airflow's) runs again in it."""
    workers: list[_Worker] = []
    try:
        for index in range(count):
            pieces, out = multiprocessing.Pipe(duplex=False)
            try:
                pid = os.fork()
            except OSError:
                pieces.close()  # this worker's pipe too, not only the workers started before it
                out.close()
                raise
            if pid == 0:  # the worker
                code = 1
                try:
                    # Stopped as a process is, not by the loading process's own handlers (Airflow's, the CLI's);
                    # a runtime that will not let it change them leaves them (the worker works all the same).
                    with contextlib.suppress(ValueError, OSError):
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                    pieces.close()
                    _work(staging, index, count, out)
                    out.close()
                    code = 0
                finally:
                    os._exit(code)
            out.close()  # the worker's alone now: its end is the pipe's EOF
            workers.append(_Worker(pid, pieces))
    except OSError as cannot:  # no memory or processes left
        for worker in workers:
            worker.stop()
        log.warning(
            "%s: staging workers could not be started (%s); the loading process stages the file alone",
            staging.path.name,
            type(cannot).__name__,
        )
        return None
    return _from_workers(workers)


def _from_workers(workers: list[_Worker]) -> Generator[Piece]:
    try:
        number = 0
        while True:
            got = workers[number % len(workers)].next()
            if isinstance(got, Exception):
                raise got
            if got == _END:
                return
            assert isinstance(got, Piece)
            yield got
            number += 1
    finally:
        for worker in workers:
            worker.stop()
