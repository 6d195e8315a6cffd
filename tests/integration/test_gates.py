"""The quality gate on real staged loads: hand-made hospital extracts, the real loader, a real PostgreSQL.

Each file is staged by `pophealth.load.stage_extract` (validated, pseudonymised, opt-outs applied) into its
batch table, and `pophealth.gates.run_load_gate` runs the apc suite from expectations/registry.yml on it
through Great Expectations' SQL data source. Nothing here is published, so every test stages its own file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from pophealth.feeds import APC_COLUMNS
from pophealth.identifiers import nhs_check_digit

pytestmark = pytest.mark.integration

TEST_KEY = "5a" * 32
TEST_VAULT_KEY = "c3" * 32
ENV = {"POPHEALTH_LINKAGE_KEY": TEST_KEY, "POPHEALTH_VAULT_KEY": TEST_VAULT_KEY}
ENV_REMOVED = ("POPHEALTH_DATABASE_URL", "POPHEALTH_LINKAGE_KEY_FILE", "POPHEALTH_VAULT_KEY_FILE", "POPHEALTH_EXPECTATIONS_DIR",
               "POPHEALTH_LANDING_DIR")


def _test_numbers(count: int) -> list[str]:
    """Valid NHS numbers in the 999 test range."""
    numbers = []
    stem = 999000100
    while len(numbers) < count:
        digit = nhs_check_digit(str(stem))
        if digit is not None:
            numbers.append(f"{stem}{digit}")
        stem += 1
    return numbers


NUMBERS = _test_numbers(11)
OPTED_OUT = NUMBERS[-1]


def _write(path: Path, header, rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _landing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "ref_postcode_lookup.csv", ("postcode", "lsoa_code", "locality_code", "locality_name"), [
        ("CM1 1AA", "E01021001", "E07000070", "Chelmsford"),
        ("CO1 1CC", "E01021100", "E07000071", "Colchester"),
    ])
    return folder


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory):
    """A fresh embedded PostgreSQL under a temporary POPHEALTH_HOME, with an opt-out list published."""
    saved = {k: os.environ.get(k) for k in (*ENV, *ENV_REMOVED, "POPHEALTH_HOME")}
    home = tmp_path_factory.mktemp("gates")
    for name in ENV_REMOVED:
        os.environ.pop(name, None)
    os.environ.update(ENV, POPHEALTH_HOME=str(home / "state"))
    from pophealth import db, load

    db._cached = None  # the server is cached per process: make sure it is this home's
    try:
        load.prepare_warehouse()
        landing = _landing(home / "optouts")
        optouts = _write(landing / "optouts_20250930.csv", ("nhs_number",), [(OPTED_OUT,)])
        load.publish_load(load.stage_extract(optouts, "gates-setup").load_id)
        yield home
    finally:
        _stop_server(db)
        db._cached = None
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stop_server(db) -> None:
    """Stop this session's embedded server. `db.stop_embedded()` runs pg_ctl, which refuses to run as root
    (pgserver then runs postgres as its own user); the fallback signals that one postmaster by its pid."""
    import signal
    import time

    from pophealth import config

    db.stop_embedded()
    pid_file = config.paths().pgdata / "postmaster.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)  # fast shutdown
        except (OSError, ValueError, IndexError):
            return
        for _ in range(50):
            if not pid_file.exists():
                break
            time.sleep(0.1)


def _episode(i: int, **changes: str) -> list[str]:
    """Episode i of a good extract: one spell each, admitted 2025-09-0<i>, two days in hospital."""
    row = dict.fromkeys(APC_COLUMNS, "")
    day = 1 + i
    row.update(epikey=f"E{i}", spell_id=f"S{i}", nhs_number=NUMBERS[i], nhs_number_status="01",
               date_of_birth="1950-10-15", sex="1", postcode="CM1 1AA", gp_practice_code="F81001", procode="RAJ",
               admidate=f"2025-09-{day:02d}", disdate=f"2025-09-{day + 2:02d}", epistart=f"2025-09-{day:02d}",
               epiend=f"2025-09-{day + 2:02d}", epiorder="1", admimeth="21", admisorc="19", disdest="19",
               dismeth="1", classpat="1", mainspef="300", tretspef="300", diag_01="J18.9")
    row.update(changes)
    return [row[c] for c in APC_COLUMNS]


def _good_rows(n: int = 10) -> list[list[str]]:
    return [_episode(i) for i in range(n)]


@pytest.fixture
def stage(warehouse, tmp_path):
    """Stage an apc file made of the given rows; returns (load_id, batch table)."""
    from pophealth.load import batch_table, stage_extract

    def _stage(rows: list[list[str]], period: str = "20250930") -> tuple[int, str]:
        path = _write(_landing(tmp_path / "landing") / f"apc_RAJ_{period}.csv", APC_COLUMNS, rows)
        outcome = stage_extract(path, "gates-test")
        assert outcome.status == "validated" and outcome.rows_loaded == len(rows) and not outcome.rows_quarantined
        return outcome.load_id, batch_table(outcome.load_id)

    return _stage


def _recorded(load_id: int) -> dict[str, dict]:
    from pophealth import db

    with db.connect() as conn:
        cur = conn.execute("SELECT * FROM audit.gate_result WHERE load_id = %s", (load_id,))
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    by_id = {r["check_id"]: r for r in rows}
    assert len(by_id) == len(rows), "one row per rule"
    return by_id


def test_a_good_file_passes_and_every_rule_is_recorded(stage):
    from pophealth import gates

    load_id, table = stage(_good_rows())
    outcome = gates.run_load_gate(load_id, "apc", table, run_id="run-good")
    assert outcome.passed, outcome.summary()
    assert not outcome.failures()
    recorded = _recorded(load_id)
    assert set(recorded) == {c["id"] for c in gates.checks_for("apc")}
    for check_id, row in recorded.items():
        assert row["run_id"] == "run-good" and row["suite"] == "apc_load" and row["row_count"] == 10
        assert row["status"] in ("passed", "not_applicable"), check_id
        assert row["example_rows"] == []
    assert recorded["apc.episode_starts_after_admission"]["status"] == "passed"
    assert recorded["apc.episode_starts_after_admission"]["unexpected_count"] == 0
    assert recorded["apc.episode_key.present"]["severity"] == "error"
    assert recorded["apc.episode_key.present"]["category"] == "completeness"
    assert "apc suite:" in outcome.summary() and "0 failed" in outcome.summary()


def test_an_episode_before_its_admission_fails_the_gate_with_the_row_number_and_no_value(stage):
    from pophealth import gates

    rows = _good_rows()
    rows[2] = _episode(2, epistart="2000-01-01")  # the third data row
    load_id, table = stage(rows)
    outcome = gates.run_load_gate(load_id, "apc", table, run_id="run-bad")
    assert not outcome.passed
    failed = {r.check_id: r for r in outcome.failures("error")}
    assert set(failed) == {"apc.episode_starts_after_admission"}
    rule = failed["apc.episode_starts_after_admission"]
    assert rule.unexpected_count == 1 and rule.row_count == 10 and rule.example_rows == [3]
    text = outcome.summary()
    assert "FAILED [error] apc.episode_starts_after_admission" in text
    assert "1 of 10 rows" in text and "example rows (1 = first data row): 3" in text
    assert "admidate <= epistart" in text  # the rule's note says why
    # Never a value: no NHS number, no date from the file, in the summary or the audit.
    assert not any(number in text for number in NUMBERS)
    assert "2000-01-01" not in text
    recorded = _recorded(load_id)
    row = recorded["apc.episode_starts_after_admission"]
    assert (row["status"], row["severity"], row["unexpected_count"], row["example_rows"]) == ("failed", "error", 1, [3])
    audit_text = repr(recorded)
    assert "2000-01-01" not in audit_text and not any(number in audit_text for number in NUMBERS)


def test_a_rule_on_a_column_empty_in_the_whole_file_is_not_applicable(stage):
    from pophealth import gates

    rows = [_episode(i, discharge_ready_date="", epiend="") for i in range(10)]
    load_id, table = stage(rows)
    outcome = gates.run_load_gate(load_id, "apc", table, run_id="run-empty")
    assert outcome.passed
    status = {r.check_id: r.status for r in outcome.results}
    assert status["apc.discharge_ready_before_discharge"] == "not_applicable"
    assert status["apc.episode_ends_after_it_starts"] == "not_applicable"
    assert status["apc.discharge_after_admission"] == "passed"
    recorded = _recorded(load_id)
    assert recorded["apc.discharge_ready_before_discharge"]["status"] == "not_applicable"
    assert recorded["apc.discharge_ready_before_discharge"]["unexpected_count"] is None
    assert "not applicable" in outcome.summary()


def test_a_warning_is_recorded_but_does_not_stop_the_load(stage):
    from pophealth import gates

    rows = _good_rows()
    rows[4] = _episode(4, discharge_ready_date="2025-09-30")  # ready after discharge: implausible, a warning
    rows[6] = _episode(6, nhs_number="")                        # 1 of 10 unlinked: more than 5%
    load_id, table = stage(rows)
    outcome = gates.run_load_gate(load_id, "apc", table, run_id="run-warn")
    assert outcome.passed, outcome.summary()
    warned = {r.check_id: r for r in outcome.failures("warn")}
    assert set(warned) == {"apc.discharge_ready_before_discharge", "apc.person.mostly_linked"}
    assert warned["apc.discharge_ready_before_discharge"].example_rows == [5]
    assert warned["apc.person.mostly_linked"].unexpected_count == 1
    assert warned["apc.person.mostly_linked"].example_rows == [7]
    recorded = _recorded(load_id)
    for check_id in warned:
        assert (recorded[check_id]["status"], recorded[check_id]["severity"]) == ("failed", "warn")
    text = outcome.summary()
    assert "warning [warn] apc.discharge_ready_before_discharge" in text and "FAILED" not in text


def test_a_duplicated_first_episode_is_found_by_the_sql_rule(stage):
    from pophealth import gates

    rows = _good_rows()
    rows[8] = _episode(8, spell_id="S7", epikey="E8")  # a second first episode in spell S7
    load_id, table = stage(rows)
    outcome = gates.run_load_gate(load_id, "apc", table)
    rule = next(r for r in outcome.results if r.check_id == "apc.one_first_episode_per_spell")
    assert (rule.status, rule.unexpected_count, rule.example_rows) == ("failed", 2, [8, 9])
    assert outcome.passed


def test_feeds_without_rules_have_no_gate_and_the_registry_is_well_formed(warehouse):
    from pophealth import gates

    assert gates.has_suite("apc") and gates.has_suite("gp_register") and gates.has_suite("cld")
    assert not gates.has_suite("ref_population") and not gates.has_suite("optouts")
    assert gates.registry_problems(gates.registry()) == []
    for check in gates.all_checks():
        gates.build_expectation(check)  # every class exists in GE 1.x and accepts its kwargs
