"""A large file is staged by worker processes (pophealth/ingest/pieces.py), and what they stage is exactly what the
loading process stages alone: the same rows in the same order, the same quarantine, the same counts, the same
vault entries. A file the workers cannot read is refused with the same message; a worker that crashes or dies
fails the load, visibly, and never hangs it.

The pieces are made tiny here (7 rows), so that a hospital file of the small world is many pieces, and every
file counts as large."""

from __future__ import annotations

import logging
import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.robustness.spec import PROVIDER, csv_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def pieces_small(monkeypatch):
    from pophealth.ingest import pieces

    monkeypatch.setattr(pieces, "PIECE_ROWS", 7)
    monkeypatch.setattr(pieces, "PIECE_ROWS_HERE", 5)
    monkeypatch.setattr(pieces, "WORKERS_FROM_BYTES", 0)
    return pieces


def hospital_file(warehouse, name: str, *, nul_at: int | None = None) -> tuple[Path, int]:
    """The world's good hospital rows with bad ones among them, as a file of its own period: returns it and its rows."""
    good = warehouse.good
    rows = [list(r) for r in good.rows * (1 + 120 // len(good.rows))]  # episodes repeated: staging does not mind
    rows[2][good.col("epiorder")] = "0"  # quarantined: epiorder
    rows[9][good.col("admidate")] = "2020-02-30"  # quarantined: not in the calendar
    rows[11][good.col("nhs_number")] = "123"  # loaded, unlinked
    rows[19].append("one too many")  # quarantined: the row's width
    rows[30][good.col("procode")] = "RXX"  # quarantined: another provider
    content = csv_bytes(good.header, rows)
    if nul_at is not None:
        lines = content.split(b"\n")
        lines[nul_at] = lines[nul_at].replace(b",", b",\x00", 1)
        content = b"\n".join(lines)
    folder = warehouse.home / "pieces"
    folder.mkdir(exist_ok=True)
    path = folder / f"apc_{PROVIDER}_{name}.csv"
    path.write_bytes(content)
    return path, len(rows)


def staged(warehouse, load_id: int) -> dict:
    """Everything a staged load holds, less its load id, its time and the vault entries' random nonces and
    ciphertexts."""
    return {
        "rows": [
            r[0]
            for r in warehouse.query(f"SELECT to_jsonb(b) - 'load_id' - 'loaded_at' FROM load_batch.load_{load_id} b")
        ],
        "quarantine": warehouse.query(
            "SELECT source_row, column_name, reason FROM audit.quarantine WHERE load_id = %s ORDER BY source_row",
            (load_id,),
        ),
        "counts": warehouse.query(
            """SELECT status, rows_read, rows_loaded, rows_quarantined, rows_opted_out, rows_test_range, rows_unlinked,
                      vault_entries FROM audit.load WHERE load_id = %s""",
            (load_id,),
        ),
        "vault": warehouse.query(f"SELECT pseudonym, kind FROM load_batch.vault_{load_id}"),
    }


def stage_by(processes: int, path: Path, monkeypatch, caplog) -> tuple[int, str]:
    """Stage the file with this many staging processes; returns its load id and how the log says it was staged."""
    from pophealth.ingest.load import stage_extract

    monkeypatch.setenv("POPHEALTH_STAGING_PROCESSES", str(processes))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pophealth.ingest.load"):
        load_id = stage_extract(path, f"pieces__{processes}").load_id
    said = [r.getMessage() for r in caplog.records if "staged" in r.getMessage()]
    return load_id, said[-1].rsplit(", ", 1)[-1]


def test_workers_stage_a_file_exactly_as_the_loading_process_does(warehouse, pieces_small, monkeypatch, caplog):
    from pophealth.ingest.load import refuse_load

    path, rows = hospital_file(warehouse, "20270101")
    assert rows > 4 * 7, "the file is many pieces"
    by_workers, said = stage_by(2, path, monkeypatch, caplog)
    assert said == "by 2 worker processes"
    first = staged(warehouse, by_workers)
    refuse_load(by_workers, "staged again by the loading process alone")
    here, said = stage_by(1, path, monkeypatch, caplog)
    assert said == "by the loading process"
    second = staged(warehouse, here)
    refuse_load(here, "test done")

    assert first == second
    # In the file's order (the table's physical order is the COPY's), every row loaded or quarantined.
    assert [r["source_row"] for r in first["rows"]] == sorted(r["source_row"] for r in first["rows"])
    assert [q[0] for q in first["quarantine"]] == [3, 10, 20, 31]
    assert first["counts"][0][1:4] == (rows, rows - 4, 4)
    assert first["counts"][0][6] == 1  # the invalid NHS number: loaded, unlinked
    assert len({p for p, _ in first["vault"]}) == len(first["vault"]) == first["counts"][0][7]


def test_a_file_the_workers_cannot_read_is_refused_as_the_loading_process_refuses_it(
    warehouse, pieces_small, monkeypatch
):
    from pophealth.ingest.load import LoadRefused, stage_extract

    path, _ = hospital_file(warehouse, "20270102", nul_at=40)  # in a late piece
    messages = []
    for processes in (2, 1):
        monkeypatch.setenv("POPHEALTH_STAGING_PROCESSES", str(processes))
        with pytest.raises(LoadRefused) as refused:
            stage_extract(path, f"pieces__nul__{processes}")
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert "NUL byte (line 41)" in messages[0]
    assert warehouse.query("SELECT tablename FROM pg_tables WHERE schemaname = 'load_batch'") == []


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_worker_that_crashes_or_dies_fails_the_load_visibly_and_says_no_value(
    warehouse, pieces_small, monkeypatch, how
):
    from pophealth.ingest.load import LoadFailed, stage_extract

    path, _ = hospital_file(warehouse, f"2027020{'1' if how == 'raises' else '2'}")
    good = warehouse.good
    secret = good.rows[-1][good.col("nhs_number")]  # on many rows of the file, the first in its second piece or later
    parent, transform = os.getpid(), pieces_small.TRANSFORMS["apc"]

    def broken(row, ctx):
        if os.getpid() != parent and row.get("nhs_number") == secret:
            if how == "dies":
                os._exit(3)
            raise ValueError(f"a value of the file: {secret}")
        return transform(row, ctx)

    monkeypatch.setitem(pieces_small.TRANSFORMS, "apc", broken)
    monkeypatch.setenv("POPHEALTH_STAGING_PROCESSES", "2")
    with pytest.raises(LoadFailed) as failed:
        stage_extract(path, f"pieces__{how}")
    message = str(failed.value)
    assert secret not in message
    assert ("ValueError" if how == "raises" else "a staging worker that stopped") in message
    status, recorded = warehouse.query("SELECT status, message FROM audit.load WHERE file_name = %s", (path.name,))[0]
    assert status == "failed" and secret not in recorded
    assert warehouse.query("SELECT tablename FROM pg_tables WHERE schemaname = 'load_batch'") == []


_VALUE = st.one_of(
    st.none(),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
    st.dates(),
    st.integers(-(2**31), 2**31 - 1),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9),
    st.binary(max_size=40),
)
_TYPES = {type(None): "text", str: "text", date: "date", int: "bigint", Decimal: "numeric", bytes: "bytea"}


@settings(max_examples=60, deadline=None)
@given(st.lists(_VALUE, min_size=1, max_size=8))
def test_a_row_formatted_away_from_its_connection_is_read_back_as_it_was(warehouse, values):
    """db.copy_line, which the workers format COPY rows with, against the real server: any text (tabs, newlines,
    backslashes, any script), dates, numbers, bytes and nulls come back as they went in."""
    from psycopg import sql

    from pophealth.warehouse import db

    with db.connect() as conn:
        columns = [sql.SQL("c{} {}").format(sql.SQL(str(i)), sql.SQL(_TYPES[type(v)])) for i, v in enumerate(values)]
        conn.execute(sql.SQL("CREATE TEMP TABLE formatted ({})").format(sql.SQL(", ").join(columns)))
        line = bytearray()
        db.copy_line(tuple(values), db.copy_transformer(conn), line)
        with conn.cursor() as cur, cur.copy("COPY formatted FROM STDIN") as copy:
            copy.write(bytes(line))
        back = conn.execute("SELECT * FROM formatted").fetchall()
        conn.rollback()
    assert back == [tuple(values)]


@pytest.mark.parametrize("setting", ["two", "0", "-1", "2.5"])
def test_a_staging_processes_setting_that_is_not_a_count_stops_the_load_before_anything_is_recorded(
    warehouse, monkeypatch, setting
):
    from pophealth.ingest.load import LoadRefused, stage_extract

    path, _ = hospital_file(warehouse, "20270301")
    monkeypatch.setenv("POPHEALTH_STAGING_PROCESSES", setting)
    with pytest.raises(LoadRefused, match="POPHEALTH_STAGING_PROCESSES must be a whole number of 1 or more"):
        stage_extract(path, "pieces__setting")
    assert warehouse.query("SELECT count(*) FROM audit.load WHERE file_name = %s", (path.name,)) == [(0,)]


def test_a_file_whose_workers_cannot_start_is_staged_by_the_loading_process_and_the_log_says_so(
    warehouse, pieces_small, monkeypatch, caplog
):
    from pophealth.ingest.load import refuse_load

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")  # what fork says with no processes left

    monkeypatch.setattr(pieces_small.os, "fork", no_fork)
    path, rows = hospital_file(warehouse, "20270401")
    load_id, said = stage_by(2, path, monkeypatch, caplog)
    assert said == "by the loading process"
    assert any("staging workers could not be started (BlockingIOError)" in r.getMessage() for r in caplog.records)
    assert staged(warehouse, load_id)["counts"][0][1:4] == (rows, rows - 4, 4)
    refuse_load(load_id, "test done")
