"""Every bad input of the corpus (spec.CASES) through the package's real functions on a real PostgreSQL:
stage (`load.stage_extract`), the load gate (`orchestration.gate_load`), publish (`load.publish_load`).

For each case: no crash (a refusal is a `LoadRefused` or the gate's failure, with a clear message and no
value from the file); nothing of a refused file is stored; every row of an accepted file is loaded or
quarantined with its reason; the load audit adds up; a provider's period is never held twice.
"""

from __future__ import annotations

import gzip
import shutil
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.robustness.spec import (
    CASES,
    FORMULA_VALUES,
    LAST_ROW,
    MILLION,
    OWN_TEST,
    PROVIDER,
    Case,
    write_million,
)

pytestmark = pytest.mark.integration

RAW = "raw.apc_episode"
TABLE_CASES = [c for c in CASES if c.id not in OWN_TEST]


@dataclass
class Delivered:
    verdict: str  # loaded, refused, gate_failed, duplicate, not_an_extract
    message: str
    load_id: int | None


def deliver(path: Path, run_id: str) -> Delivered:
    """What an ingest DAG does with one file: stage, gate, publish; a refusal is an outcome, not a crash."""
    from airflow.sdk.exceptions import AirflowFailException

    from pophealth.ingest.landing import identify
    from pophealth.ingest.load import LoadRefused, publish_load, stage_extract
    from pophealth.operate.orchestration import gate_load

    try:
        staged = stage_extract(path, run_id)
    except LoadRefused as refused:
        return Delivered("refused" if identify(path) else "not_an_extract", str(refused), None)
    if staged.status == "duplicate":
        return Delivered("duplicate", "", staged.load_id)
    try:
        gate_load(staged.load_id, run_id)
    except AirflowFailException as failed:
        return Delivered("gate_failed", str(failed), staged.load_id)
    publish_load(staged.load_id)
    return Delivered("loaded", "", staged.load_id)


def snapshot(warehouse) -> dict[str, object]:
    return {
        "raw rows": warehouse.value(f"SELECT count(*) FROM {RAW}"),
        "vault entries": warehouse.value("SELECT count(*) FROM vault.identity"),
        # A refused or failed file's data key goes with its batch (vault.drop_batch): none is left wrapping nothing.
        "vault data keys": warehouse.value("SELECT count(*) FROM vault.data_key"),
        "quarantined rows": warehouse.value("SELECT count(*) FROM audit.quarantine"),
        "batch tables": leftover_batches(warehouse),
    }


def leftover_batches(warehouse) -> list[str]:
    return [r[0] for r in warehouse.query("SELECT tablename FROM pg_tables WHERE schemaname = 'load_batch' ORDER BY 1")]


def case_path(warehouse, case: Case) -> Path:
    folder = warehouse.home / "cases" / case.id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(warehouse.landing / "ref_postcode_lookup.csv", folder)
    # Each case its own period, so that the cases do not resubmit one another's files.
    period = date(2026, 1, 1) + timedelta(days=CASES.index(case))
    return folder / (case.file_name or f"apc_{PROVIDER}_{period:%Y%m%d}.csv")


def messages_of(warehouse, load_id: int | None) -> list[str]:
    if load_id is None:
        return []
    return [m for (m,) in warehouse.query("SELECT message FROM audit.load WHERE load_id = %s", (load_id,)) if m] + [
        f"{c}: {r}"
        for c, r in warehouse.query("SELECT column_name, reason FROM audit.quarantine WHERE load_id = %s", (load_id,))
    ]


def assert_no_identifiable_value(texts: list[str], values: set[str]) -> None:
    for text in texts:
        assert "Traceback" not in text, text
        leaked = sorted(v for v in values if v in text)
        assert not leaked, f"a message holds {len(leaked)} identifiable value(s) from the file"


def assert_accounted(warehouse, load_id: int, rows_in_file: int, case: Case) -> None:
    """Every row of the file loaded or quarantined with its reason, and the audit adds up."""
    read, loaded, quarantined, opted_out, extra = warehouse.query(
        "SELECT rows_read, rows_loaded, rows_quarantined, rows_opted_out, extra_columns FROM audit.load "
        "WHERE load_id = %s",
        (load_id,),
    )[0]
    assert read == rows_in_file
    assert read == loaded + quarantined and opted_out <= loaded
    assert warehouse.value(f"SELECT count(*) FROM {RAW} WHERE load_id = %s", (load_id,)) == loaded
    expected = {rows_in_file if r == LAST_ROW else r: reason for r, reason in case.expect.quarantined.items()}
    reasons = {
        row: f"{column}: {reason}" if column else reason
        for row, column, reason in warehouse.query(
            "SELECT source_row, column_name, reason FROM audit.quarantine WHERE load_id = %s", (load_id,)
        )
    }
    assert sorted(reasons) == sorted(expected), reasons
    for row, fragment in expected.items():
        assert fragment in reasons[row], (row, reasons[row])
    assert list(extra or []) == list(case.expect.extra_columns)
    for row, check in case.expect.nhs_number_check.items():
        person, stored = warehouse.query(
            f"SELECT nhs_number_key, nhs_number_check FROM {RAW} WHERE load_id = %s AND source_row = %s", (load_id, row)
        )[0]
        assert stored == check
        assert (person is None) == (check == "invalid")


def assert_period_held_once(warehouse, path: Path) -> None:
    """A provider's period is in the raw table once: the rows of its one published load, or nothing."""
    from pophealth.ingest.landing import identify

    extract = identify(path)
    if extract is None:
        return
    published = warehouse.query(
        "SELECT load_id, rows_loaded FROM audit.load WHERE feed = 'apc' AND provider = %s AND period_end = %s "
        "AND status = 'published'",
        (extract.provider, extract.period_end),
    )
    assert len(published) <= 1
    held = warehouse.value(
        f"SELECT count(*) FROM {RAW} r JOIN audit.load l USING (load_id) WHERE l.provider = %s AND l.period_end = %s",
        (extract.provider, extract.period_end),
    )
    assert held == (published[0][1] if published else 0)


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.id for c in TABLE_CASES])
def test_each_bad_input_gets_its_exact_outcome_and_loses_nothing(warehouse, case: Case):
    from pophealth.ingest.landing import scan
    from pophealth.ingest.load import pending_extracts

    path = case_path(warehouse, case)
    deliveries = case.deliveries(warehouse.good)
    before = snapshot(warehouse)
    results = []
    for n, content in enumerate(deliveries):
        path.write_bytes(content)
        results.append(deliver(path, run_id=f"robustness__{case.id}__{n}"))
    final = results[-1]
    expect = case.expect
    assert final.verdict == expect.verdict, final.message
    assert expect.message in final.message
    texts = [r.message for r in results] + [m for r in results for m in messages_of(warehouse, r.load_id)]
    assert_no_identifiable_value(texts, warehouse.good.identifiable_values() | set(case.secrets))
    assert leftover_batches(warehouse) == []
    assert_period_held_once(warehouse, path)

    if expect.verdict in ("refused", "gate_failed", "not_an_extract"):
        assert snapshot(warehouse) == before, "something of a refused file was stored"
        statuses = [s for (s,) in warehouse.query("SELECT status FROM audit.load WHERE file_name = %s", (path.name,))]
        assert (
            statuses == {"refused": ["rejected"], "gate_failed": ["gate_failed"], "not_an_extract": []}[expect.verdict]
        )
    if expect.verdict == "not_an_extract":
        assert path in scan(path.parent).unrecognised
        assert pending_extracts(path.parent, "apc") == []
        assert [why for name, why in scan(path.parent).not_extracts() if name == path.name][0].count(expect.message)
    if expect.verdict == "duplicate":
        first = results[0]
        assert first.verdict == "loaded"
        assert warehouse.value("SELECT status FROM audit.load WHERE load_id = %s", (final.load_id,)) == "duplicate"
        assert_accounted(warehouse, first.load_id, len(warehouse.good.rows), case)
    if expect.verdict == "loaded":
        last = gzip.decompress(deliveries[-1]) if path.name.endswith(".gz") else deliveries[-1]
        rows_in_file = len(last.rstrip(b"\r\n").splitlines()) - 1
        assert_accounted(warehouse, final.load_id, rows_in_file, case)
        earlier = [r.load_id for r in results[:-1]]
        if earlier:  # a resubmission: the earlier file is superseded, not added to
            assert [
                s for (s,) in warehouse.query("SELECT status FROM audit.load WHERE load_id = ANY(%s)", (earlier,))
            ] == ["superseded"]
    if case.id == "sql_and_formula_values":
        stored = warehouse.query(
            f"SELECT {', '.join(FORMULA_VALUES)} FROM {RAW} WHERE load_id = %s AND source_row = 2", (final.load_id,)
        )
        assert stored == [tuple(FORMULA_VALUES.values())]


@pytest.mark.long_world  # minutes: its module is handed out early, not left to end the run (tests/conftest.py)
def test_a_million_row_file_with_one_bad_row_loads_the_rest(warehouse, record_property):
    case = next(c for c in CASES if c.id == "million_rows_one_bad")
    path = case_path(warehouse, case)
    write_million(warehouse.good, path)
    before = snapshot(warehouse)
    from pophealth.ingest.load import stage_extract

    started = time.monotonic()
    staged = stage_extract(path, "robustness__million")
    seconds = time.monotonic() - started
    print(f"\nmillion-row file staged in {seconds:.1f} s ({MILLION / seconds:,.0f} rows/s)")
    record_property("million_stage_seconds", round(seconds, 1))
    assert (staged.rows_read, staged.rows_loaded, staged.rows_quarantined) == (MILLION, MILLION - 1, 1)
    from pophealth.ingest.load import publish_load
    from pophealth.operate.orchestration import gate_load

    started = time.monotonic()
    gate_load(staged.load_id, "robustness__million")
    publish_load(staged.load_id)
    print(f"gated and published in {time.monotonic() - started:.1f} s")
    assert_accounted(warehouse, staged.load_id, MILLION, case)
    assert snapshot(warehouse)["raw rows"] == before["raw rows"] + MILLION - 1
    assert leftover_batches(warehouse) == []
    path.unlink()
