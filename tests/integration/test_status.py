"""`pophealth status` at a terminal: healthy when nothing failed, a refused load or a refused marts build named and
the exit code non-zero, a new file in the landing folder shown as waiting.

A small generated world is loaded and its marts built on a real embedded PostgreSQL (conftest.marts_built_from);
the failures are made with the package's own functions (stage, gate, refuse; the marts gate), as the DAG tasks do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEST_VAULT_PRIVATE_KEY, BuiltWarehouse, isolated_env
from .test_marts_gate import copy_to_candidates

pytestmark = pytest.mark.integration


class Warehouse(BuiltWarehouse):
    def status(self, landing: Path | None = None) -> subprocess.CompletedProcess:
        return self.pophealth("status", "--landing", str(landing or self.landing))


# Stage one file and gate it as the ingest DAG does (orchestration.stage_file / gate_load); publish it when the
# gate passes, refuse it when it fails. Prints the load's status.
STAGE_GATE_PUBLISH = """
    import sys
    from pophealth.quality import gates
    from pophealth.ingest.load import batch_table, publish_load, refuse_load, stage_extract
    outcome = stage_extract(sys.argv[1], run_id="status-test")
    if outcome.status == "validated":
        gate = gates.run_load_gate(outcome.load_id, "apc", batch_table(outcome.load_id), run_id="status-test")
        if gate.passed:
            publish_load(outcome.load_id)
        else:
            refuse_load(outcome.load_id, "QUALITY GATE FAILED\\n" + gate.summary())
    print(outcome.status)
"""


@pytest.fixture(scope="module")
def warehouse(small_world):
    return Warehouse(small_world.url, small_world.landing, isolated_env(small_world.home))


def latest_apc(landing: Path) -> Path:
    return sorted(landing.glob("apc_*.csv"))[-1]


def test_a_healthy_warehouse_is_reported_healthy_with_every_source_and_the_marts(warehouse):
    proc = warehouse.status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Healthy: nothing has failed." in out
    for source in ("gp_register", "optouts", "apc RAJ", "apc RDE", "apc RQW", "cld E10000012", "ref_postcode_lookup"):
        assert f"  {source} " in out
    # The register's row shows its file and its counts as audit.load has them.
    ((file_name, read, loaded, quarantined, opted_out),) = warehouse.query(
        """SELECT file_name, rows_read, rows_loaded, rows_quarantined, rows_opted_out FROM audit.load
           WHERE feed = 'gp_register' ORDER BY load_id DESC LIMIT 1"""
    )
    register = next(line for line in out.splitlines() if line.startswith("  gp_register "))
    assert register.split()[2:8] == [
        file_name,
        "published",
        f"{read:,}",
        f"{loaded:,}",
        f"{quarantined:,}",
        f"{opted_out:,}",
    ]
    assert "last build    20" in out and "FAILED" not in out and "REFUSED" not in out
    (as_of,) = warehouse.query("SELECT max(as_of_date)::text FROM marts.risk_stratification")[0]
    assert f"the marts describe the data as of {as_of}" in out
    assert "0 file(s) to load" in out


def _first_missing_month(landing: Path, provider: str) -> str | None:
    """The first month (YYYY-MM-01) from April 2024 to September 2025 with no monthly file of the trust."""
    months = {p.name.split("_")[2][:6] for p in landing.glob(f"apc_{provider}_*.csv")}
    for n in range(18):
        month = f"{2024 + (3 + n) // 12}{(3 + n) % 12 + 1:02d}"
        if month not in months:
            return f"{month[:4]}-{month[4:]}-01"
    return None


def test_status_shows_what_each_source_covers_and_says_which_periods_are_not_computed(warehouse):
    # The small world's smaller trusts send no file in a month without a finished spell: a gap the platform cannot
    # tell from a lost file, so the periods over it are not computed, and status says so (a note, not a failure).
    out = warehouse.status().stdout
    lines = out.splitlines()
    assert "What the data covers (from the rows of the published files):" in lines
    files = len(list(warehouse.landing.glob("apc_RDE_*.csv")))
    assert any(
        line.startswith("  apc RDE                  2024-04-01 to ") and f"({files} files)" in line for line in lines
    )
    gap_start = _first_missing_month(warehouse.landing, "RDE")
    assert gap_start is not None  # the world this test runs on has one
    rde = next(line for line in lines if line.startswith("  apc RDE ") and "GAP" in line)
    assert f"GAP: nothing covers {gap_start} to" in rde
    assert "  gp_register              snapshot 2025-09-30 (the latest says who is registered now)" in lines
    not_computed = warehouse.query("SELECT count(*) FROM reporting.period_coverage WHERE NOT is_computed")[0][0]
    assert not_computed > 0 and f"Periods NOT computed ({not_computed}; reporting.period_coverage):" in lines
    month = next(line for line in lines if line.startswith(f"  month           {gap_start} to"))
    assert "not wholly covered: hospital data from RDE covers" in month
    assert (
        f"Note: {not_computed} period(s) are not computed because the data does not cover them wholly (listed above)"
    ) in lines
    # The marts hold no metric for such a period: nothing is computed from part of a month.
    assert (
        warehouse.query("SELECT count(*) FROM marts.bcf_metrics WHERE period_start = %s::date", (gap_start,))[0][0] == 0
    )


def test_a_new_file_in_the_landing_folder_is_shown_as_waiting_and_is_not_a_failure(warehouse, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(warehouse.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    shutil.copy(latest_apc(landing), landing / "apc_RAJ_20251031.csv")  # next month's file from the trust
    shutil.copy(latest_apc(landing), landing / "apc_RDE_20251031.csv.part")  # another, still being copied in
    (landing / "apc_october.csv").write_text("epikey\n1\n")  # a name the contract does not know

    proc = warehouse.status(landing)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 file(s) to load, 1 still being written" in proc.stdout
    lines = proc.stdout.splitlines()
    assert "  apc                      apc_RAJ_20251031.csv" in lines
    assert "  (still being written)    apc_RDE_20251031.csv.part" in lines
    assert "Not extracts of the contract (1; never loaded):" in lines
    assert (
        "  apc_october.csv: the date is not in the contract's form YYYYMMDD: the contract's name is "
        "apc_<provider>_<YYYYMMDD>.csv"
    ) in lines
    assert lines[-1] == (
        "Note: 1 file(s) in the landing folder are not extracts of the contract and are NOT LOADED "
        "(listed above): rename, decompress or remove them"
    )


def test_a_load_refused_by_its_gate_is_reported_failed_until_a_good_file_replaces_it(warehouse, tmp_path):
    # A resubmission of one hospital file in which one episode starts before its admission (the end-to-end recipe).
    good = latest_apc(warehouse.landing)
    resubmission = tmp_path / "landing"
    shutil.copytree(warehouse.landing, resubmission, ignore=shutil.ignore_patterns("answer_key"))
    bad = resubmission / good.name
    lines = good.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")
    cells = lines[1].rstrip("\r\n").split(",")
    cells[header.index("epistart")] = "2000-01-01"
    bad.write_text("".join([lines[0], ",".join(cells) + "\n", *lines[2:]]))
    assert warehouse.python(STAGE_GATE_PUBLISH, str(bad)).stdout.strip() == "validated"
    assert warehouse.query(
        "SELECT status FROM audit.load WHERE file_name = %s ORDER BY load_id DESC LIMIT 1", (good.name,)
    ) == [("gate_failed",)]

    proc = warehouse.status()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    provider = good.name.split("_")[1]
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f"  apc {provider} "))
    assert good.name in row and "GATE FAILED" in row
    assert "NEEDS ATTENTION: 1 problem(s)" in proc.stdout
    assert f"{good.name}: GATE FAILED" in proc.stdout and "QUALITY GATE FAILED" in proc.stdout
    # The refused file is waiting to be delivered again: the landing folder still holds the good one.
    assert "1 file(s) to load" in proc.stdout

    # Delivering the good file again resolves it (recorded as a duplicate of the published load).
    assert warehouse.python(STAGE_GATE_PUBLISH, str(good)).stdout.strip() == "duplicate"
    proc = warehouse.status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Healthy: nothing has failed." in proc.stdout


def test_marts_refused_by_the_marts_gate_are_reported_failed_with_where_the_refused_build_is(warehouse):
    # Candidate marts with one person twice: the marts gate refuses them, the published marts stay.
    copy_to_candidates(warehouse.url)
    warehouse.query("INSERT INTO marts__candidate.person SELECT * FROM marts.person LIMIT 1")
    warehouse.python("""
        from pophealth.quality.marts_gate import run_marts_gate
        assert not run_marts_gate(candidates=True, run_id="status-test").passed
    """)

    proc = warehouse.status()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "marts gate" in proc.stdout and "the build was refused" in proc.stdout
    assert "the marts gate refused the last build" in proc.stdout
    assert "marts__candidate, reporting__candidate" in proc.stdout

    # The next build clears the refused candidates (clear_candidates); nothing is then wrong.
    warehouse.python("from pophealth.quality.marts_gate import drop_candidates; drop_candidates()")
    assert warehouse.status().returncode == 0


def test_each_source_shows_its_latest_period_not_its_latest_load(warehouse, tmp_path):
    # A trust sends its oldest month again, corrected (one episode fewer): the newest load, of the oldest period.
    oldest = sorted(warehouse.landing.glob("apc_RAJ_*.csv"))[0]
    resent = tmp_path / "resent" / oldest.name
    resent.parent.mkdir()
    lines = oldest.read_text().splitlines(keepends=True)
    resent.write_text("".join(lines[:-1]))
    assert warehouse.python(STAGE_GATE_PUBLISH, str(resent)).stdout.strip() == "validated"
    ((newest_load, period),) = warehouse.query("""SELECT load_id, period_end FROM audit.load WHERE feed = 'apc'
                                                AND provider = 'RAJ' ORDER BY load_id DESC LIMIT 1""")
    assert warehouse.query("SELECT status FROM audit.load WHERE load_id = %s", (newest_load,)) == [("published",)]
    latest = sorted(warehouse.landing.glob("apc_RAJ_*.csv"))[-1]
    proc = warehouse.status()
    row = next(line for line in proc.stdout.splitlines() if line.startswith("  apc RAJ "))
    assert latest.name in row and oldest.name not in row
    assert row.split()[2] == f"{latest.name[8:12]}-{latest.name[12:14]}-{latest.name[14:16]}"  # its period end
    assert str(period) < row.split()[2]


def test_status_says_the_next_delivery_due_of_each_feed(warehouse):
    lines = warehouse.status().stdout.splitlines()
    assert "Next delivery due of each feed (the arrival schedule):" in lines
    latest = sorted(warehouse.landing.glob("apc_RQW_*.csv"))[-1].name  # e.g. apc_RQW_20250930.csv: October is due
    year, month = int(latest[8:12]), int(latest[12:14])
    following = f"{year + month // 12}-{month % 12 + 1:02d}"
    apc = next(line for line in lines if line.startswith("  apc ") and "next looks" in line)
    assert "waits until" in apc and f"RQW {following}-" in apc
    register = next(line for line in lines if line.startswith("  gp_register ") and "next looks" in line)
    assert register.endswith("; on arrival (checked hourly)")


def test_status_as_json_for_monitoring(warehouse, tmp_path):
    import json

    landing = tmp_path / "landing"
    shutil.copytree(warehouse.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    shutil.copy(latest_apc(landing), landing / "apc_RAJ_20251031.csv")
    proc = warehouse.pophealth("status", "--json", "--landing", str(landing))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(proc.stdout)
    assert status["healthy"] is True and status["problems"] == []
    register = next(s for s in status["sources"] if s["feed"] == "gp_register")
    ((file_name, loaded),) = warehouse.query("""SELECT file_name, rows_loaded FROM audit.load WHERE feed = 'gp_register'
                                              ORDER BY period_end DESC, load_id DESC LIMIT 1""")
    assert register["file_name"] == file_name and register["rows_loaded"] == loaded
    assert {d["feed"] for d in status["next_deliveries"]} == {
        "ref_postcode_lookup",
        "ref_population",
        "optouts",
        "gp_register",
        "apc",
        "cld",
    }
    assert {"feed": "apc", "file_name": "apc_RAJ_20251031.csv"} in status["waiting"]["files"]
    assert status["waiting"]["landing"] == str(landing) and status["waiting"]["landing_from"] == "given"
    as_of = warehouse.query("SELECT max(as_of_date) FROM marts.risk_stratification")[0][0]
    assert status["marts"]["as_of_date"] == str(as_of)


def test_without_a_landing_folder_status_looks_in_the_one_the_last_run_used(warehouse, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(warehouse.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    shutil.copy(latest_apc(landing), landing / "apc_RAJ_20251031.csv")
    env = {k: v for k, v in warehouse.env.items() if k != "POPHEALTH_LANDING_DIR"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )

    before = run("status")
    assert "Waiting: no landing folder given" in before.stdout
    # what `pophealth run --landing` (and the demo, with its world) records before it runs
    warehouse.python("import sys; from pophealth import config; config.remember_landing(sys.argv[1])", str(landing))
    after = run("status")
    assert f"Waiting in {landing.resolve()} (the folder the last run used): " in after.stdout
    assert "  apc                      apc_RAJ_20251031.csv" in after.stdout.splitlines()


def test_after_a_key_rotation_the_missing_opt_out_list_is_reported_until_it_is_loaded_again(warehouse):
    new_key = "7e" * 32
    warehouse.python(
        """
        import sys
        from pophealth.identity.keys import LinkageKey, VaultPrivateKey, load_linkage_key
        from pophealth.identity.rekey import rotate_linkage_key
        rotate_linkage_key(load_linkage_key(), LinkageKey.from_hex(sys.argv[1], "the test"),
                           VaultPrivateKey.from_hex(sys.argv[2], "the test"), progress=lambda _: None)
    """,
        new_key,
        TEST_VAULT_PRIVATE_KEY,
    )

    proc = warehouse.status()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no national data opt-out list is in force" in proc.stdout
    optouts = next(warehouse.landing.glob("optouts_*.csv"))
    assert f"  optouts                  {optouts.name}" in proc.stdout.splitlines()  # waiting to be loaded again

    # The list loaded again under the new key: nothing is wrong.
    warehouse.env["POPHEALTH_LINKAGE_KEY"] = new_key
    warehouse.python(
        """
        import sys
        from pophealth.ingest.load import publish_load, stage_extract
        publish_load(stage_extract(sys.argv[1]).load_id)
    """,
        str(optouts),
    )
    proc = warehouse.status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
