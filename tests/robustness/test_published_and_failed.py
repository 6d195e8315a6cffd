"""Issue 22 on a real PostgreSQL: only the published postcode lookup is used, a crash is a failure that stops
the marts, a file that is not an extract is named, and a social care file repeating an event is refused by
its gate. The cases are in the corpus table (tests/robustness/spec.py: LOOKUP_AND_CRASH, docs/robustness.md)."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.robustness.spec import csv_bytes, good_bytes, with_values
from tests.robustness.test_bad_inputs import assert_no_identifiable_value, deliver

pytestmark = pytest.mark.integration

LOOKUP = "ref_postcode_lookup.csv"


def folder(warehouse, name: str) -> Path:
    path = warehouse.home / "issue22" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def execute(text: str, params: tuple = ()) -> None:
    from pophealth.warehouse import db

    with db.connect() as conn:
        conn.execute(text, params)


def localities(warehouse, load_id: int) -> set[str | None]:
    return {
        r[0]
        for r in warehouse.query("SELECT DISTINCT locality_code FROM raw.apc_episode WHERE load_id = %s", (load_id,))
    }


def published_localities(warehouse) -> set[str]:
    return {r[0] for r in warehouse.query("SELECT DISTINCT locality_code FROM raw.ref_postcode")}


def lookup_rows(warehouse) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO((warehouse.landing / LOOKUP).read_text())))
    return rows[0], rows[1:]


def apc_file(warehouse, name: str, period: str, content: bytes | None = None) -> Path:
    path = folder(warehouse, name) / f"apc_RAJ_{period}.csv"
    path.write_bytes(content if content is not None else good_bytes(warehouse.good))
    return path


def test_a_personal_load_uses_the_published_lookup_and_ignores_the_landing_folders(warehouse):
    original = published_localities(warehouse)
    assert original
    path = apc_file(warehouse, "lookup_in_folder_ignored", "20270131")
    header, rows = lookup_rows(warehouse)
    # A lookup in the landing folder that was never published: every postcode somewhere else. Not used.
    column = header.index("locality_code")
    (path.parent / LOOKUP).write_bytes(csv_bytes(header, [r[:column] + ["ELSEWHERE"] + r[column + 1 :] for r in rows]))
    result = deliver(path, "issue22__folder_lookup")
    assert result.verdict == "loaded", result.message
    stored = localities(warehouse, result.load_id) - {None}
    assert stored and stored <= original and "ELSEWHERE" not in stored
    # The lookup's postcodes are kept as one-way digests only: no full postcode at rest, so the scan finds none.
    from pophealth.governance import ig_report
    from pophealth.warehouse import db

    with db.connect() as conn:
        findings = ig_report.scan_warehouse(conn).findings
    assert warehouse.value("SELECT count(*) FROM raw.ref_postcode") > 0
    assert not [f for f in findings if f.relation == "raw.ref_postcode"], findings


def test_without_a_published_lookup_a_personal_load_is_refused(warehouse):
    saved = warehouse.query("SELECT load_id, postcode_digest, lsoa_code, locality_code, la_code FROM raw.ref_postcode")
    execute("DELETE FROM raw.ref_postcode")
    try:
        result = deliver(apc_file(warehouse, "no_lookup", "20270228"), "issue22__no_lookup")
    finally:
        from pophealth.warehouse import db

        with (
            db.connect() as conn,
            conn.cursor().copy(
                "COPY raw.ref_postcode (load_id, postcode_digest, lsoa_code, locality_code, la_code) FROM STDIN"
            ) as copy,
        ):
            for row in saved:
                copy.write_row(row)
    assert result.verdict == "refused"
    assert "no postcode lookup is published" in result.message


def test_a_lookup_without_locality_code_is_refused_and_personal_loads_go_on(warehouse):
    header, rows = lookup_rows(warehouse)
    keep = [i for i, c in enumerate(header) if c != "locality_code"]
    place = folder(warehouse, "lookup_no_locality")
    (place / LOOKUP).write_bytes(csv_bytes([header[i] for i in keep], [[r[i] for i in keep] for r in rows]))
    refused = deliver(place / LOOKUP, "issue22__lookup_no_locality")
    assert refused.verdict == "refused" and "missing required column(s): locality_code" in refused.message
    loaded = deliver(apc_file(warehouse, "after_no_locality", "20270331"), "issue22__after_no_locality")
    assert loaded.verdict == "loaded", loaded.message


def test_a_lookup_its_gate_refuses_is_never_used(warehouse):
    original = published_localities(warehouse)
    header, rows = lookup_rows(warehouse)
    column = header.index("locality_code")
    place = folder(warehouse, "lookup_gate_failed")
    (place / LOOKUP).write_bytes(csv_bytes(header, [r[:column] + ["NOT A CODE"] + r[column + 1 :] for r in rows]))
    refused = deliver(place / LOOKUP, "issue22__lookup_gate_failed")
    assert refused.verdict == "gate_failed" and "ref_postcode_lookup.locality_code.format" in refused.message
    assert published_localities(warehouse) == original
    loaded = deliver(apc_file(warehouse, "after_gate_failed", "20270430"), "issue22__after_gate_failed")
    assert loaded.verdict == "loaded", loaded.message
    assert localities(warehouse, loaded.load_id) - {None} <= original


def test_council_locality_codes_pass_the_gate_and_are_used(warehouse):
    header, rows = lookup_rows(warehouse)
    column, lsoa = header.index("locality_code"), header.index("lsoa_code")
    councils = ["GRAYS", "TILBURY", "STANFORD-LE-HOPE", "AVELEY_OCKENDON"]
    by_lsoa = {code: councils[i % len(councils)] for i, code in enumerate(sorted({r[lsoa] for r in rows}))}
    place = folder(warehouse, "lookup_council_codes")
    (place / LOOKUP).write_bytes(
        csv_bytes(
            header + ["la_code"], [r[:column] + [by_lsoa[r[lsoa]]] + r[column + 1 :] + ["E06000034"] for r in rows]
        )
    )
    published = deliver(place / LOOKUP, "issue22__lookup_council_codes")
    assert published.verdict == "loaded", published.message
    assert published_localities(warehouse) == set(by_lsoa.values())
    assert {r[0] for r in warehouse.query("SELECT DISTINCT la_code FROM raw.ref_postcode")} == {"E06000034"}
    loaded = deliver(apc_file(warehouse, "after_council_codes", "20270531"), "issue22__after_council_codes")
    assert loaded.verdict == "loaded", loaded.message
    stored = localities(warehouse, loaded.load_id) - {None}
    assert stored and stored <= set(councils)
    # The world's own lookup back in force (a byte changed, so it is a new delivery, not a duplicate).
    again = folder(warehouse, "lookup_restored") / LOOKUP
    again.write_bytes((warehouse.landing / LOOKUP).read_bytes() + b"\n")
    assert deliver(again, "issue22__lookup_restored").verdict == "loaded"


def test_a_crash_is_recorded_failed_stops_the_marts_and_needs_a_person(warehouse):
    """A value no rule expects, met by a column that changed under the loader (a real COPY error): not an
    interruption, but a failure that blocks the marts until a good file of the period is loaded."""
    from airflow.sdk.exceptions import AirflowFailException

    from pophealth.operate import status
    from pophealth.operate.orchestration import assert_loads_gated
    from pophealth.warehouse.audit import blocking_loads

    path = apc_file(warehouse, "crash", "20270630", with_values(warehouse.good, 2, sex="XX"))
    execute("ALTER TABLE raw.apc_episode ALTER COLUMN sex TYPE varchar(1)")
    try:
        crashed = deliver(path, "issue22__crash")
    finally:
        execute("ALTER TABLE raw.apc_episode ALTER COLUMN sex TYPE text")
    assert crashed.verdict == "refused"
    assert "StringDataRightTruncation" in crashed.message and "a person must look at it" in crashed.message
    ((load_id, state, message),) = warehouse.query(
        "SELECT load_id, status, message FROM audit.load WHERE file_name = %s", (path.name,)
    )
    assert state == "failed" and "StringDataRightTruncation" in message and "XX" not in message
    assert_no_identifiable_value([crashed.message, message], warehouse.good.identifiable_values())
    assert load_id in [b["load_id"] for b in blocking_loads()]
    with pytest.raises(AirflowFailException, match=path.name):
        assert_loads_gated()
    found = status.collect(path.parent)
    assert not found.healthy
    assert any(path.name in p and "FAILED (a crash; needs a person)" in p for p in found.problems)
    # A good file of the period replaces it: no longer blocking.
    path.write_bytes(good_bytes(warehouse.good))
    assert deliver(path, "issue22__after_crash").verdict == "loaded"
    assert load_id not in [b["load_id"] for b in blocking_loads()]


def test_files_that_are_not_extracts_are_named_in_status_the_run_summary_and_the_dag_log(
    warehouse, monkeypatch, tmp_path
):
    import gzip

    from pophealth import config
    from pophealth.operate import orchestration, status
    from pophealth.operate.pipeline import PipelineOutcome
    from pophealth.operate.run_summary import summarise

    place = folder(warehouse, "not_extracts")
    (place / "APC_RAJ_20250131.csv").write_bytes(good_bytes(warehouse.good))
    (place / "apc_RAJ_20250131.zip").write_bytes(b"PK")
    (place / "apc_RAJ_20270731.csv.gz").write_bytes(gzip.compress(good_bytes(warehouse.good)))
    (place / ".hidden.csv").write_bytes(b"")
    (place / "apc_RAJ_20270831.csv.part").write_bytes(b"")
    (place / "answer_key").mkdir(exist_ok=True)
    expected = {"APC_RAJ_20250131.csv": "wrong case", "apc_RAJ_20250131.zip": "compressed or archived as .zip"}

    found = status.collect(place)
    text = found.text()
    for name, why in expected.items():
        assert any(name in line and why in line for line in found.lines), text
    # Not a failure (other tests' refusals may be): no problem of its own, but a note under the verdict.
    assert not any("not extracts" in p for p in found.problems)
    assert text.splitlines()[-1].startswith("Note: 2 file(s) in the landing folder are not extracts of the contract")
    listed = text.split("Not extracts of the contract")[1].split("\n\n")[0]
    assert ".hidden.csv" not in listed and ".part" not in listed and "answer_key" not in text  # silent, as before
    assert "apc_RAJ_20270731.csv.gz" in text.split("Not extracts of the contract")[0]  # waiting to be loaded

    summary = summarise(PipelineOutcome(landing=place, log_dir=tmp_path, started_at=datetime.now(UTC)))
    assert "2 file(s) in the landing folder were NOT LOADED" in summary.splitlines()[1]
    for name, why in expected.items():
        assert any(name in line and why in line for line in summary.splitlines()), summary

    monkeypatch.setenv(config.ENV_LANDING_DIR, str(place))
    monkeypatch.setenv("POPHEALTH_LANDING_SETTLE_SECONDS", "0")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # the DAG task's logger, whatever Airflow's logging set up did to propagation
    logger = logging.getLogger("pophealth")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        files = orchestration.discover_files("apc")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [Path(f).name for f in files] == ["apc_RAJ_20270731.csv.gz"]
    logged = "\n".join(r.getMessage() for r in records)
    for name, why in expected.items():
        assert f"{name}: {why}" in logged, logged


def test_a_cld_file_repeating_an_event_is_refused_by_its_gate_with_row_numbers_not_keys(warehouse):
    source = sorted(warehouse.landing.glob("cld_*.csv"))[0]
    rows = list(csv.reader(io.StringIO(source.read_text())))
    header, data = rows[0], rows[1:]
    path = folder(warehouse, "cld_repeat") / source.name.replace(source.name[-12:-4], "20270930")
    path.write_bytes(csv_bytes(header, data + [data[0]]))
    result = deliver(path, "issue22__cld_repeat")
    assert result.verdict == "gate_failed", result.message
    assert "cld.event.unique_in_file" in result.message
    lines = result.message.splitlines()
    rule = lines.index(next(text for text in lines if "cld.event.unique_in_file" in text))
    line = next(text for text in lines[rule + 1 :] if "rows" in text)
    assert f"2 of {len(data) + 1:,} rows" in line and f"1, {len(data) + 1}" in line
    secrets = {
        v
        for r in data
        for k, v in zip(header, r, strict=False)
        if k.lower() in ("nhs_number", "la_person_unique_identifier", "date_of_birth", "postcode") and v
    }
    assert_no_identifiable_value([result.message], secrets)


# Not in the corpus table: the Hypothesis test of any text in any field (tests/unit/test_any_value.py), a few
# examples of it through a real load, so that what the transform lets through is what PostgreSQL stores.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.unit.test_any_value import TRICKY, VALUES  # noqa: E402

_PERIODS = iter(range(1, 10_000))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(values=st.lists(st.one_of(VALUES, TRICKY), min_size=8, max_size=8), data=st.data())
def test_any_text_through_a_real_load_is_loaded_or_quarantined_never_a_crash(warehouse, values, data):
    good = warehouse.good
    rows = [list(r) for r in good.rows]
    for n, value in enumerate(values):
        column = data.draw(st.sampled_from(good.header))
        rows[n % len(rows)][good.col(column)] = value
    period = date(2030, 1, 1) + timedelta(days=next(_PERIODS))  # a period of its own
    path = folder(warehouse, "any_text") / f"apc_RAJ_{period:%Y%m%d}.csv"
    path.write_bytes(csv_bytes(good.header, rows))
    result = deliver(path, "issue22__any_text")
    assert result.verdict in ("loaded", "gate_failed", "refused"), result.message
    assert "LoadFailed" not in result.message and "failed with" not in result.message, result.message
    statuses = [s for (s,) in warehouse.query("SELECT status FROM audit.load WHERE file_name = %s", (path.name,))]
    assert "failed" not in statuses and "interrupted" not in statuses
