"""The information governance audit report, drawn in headless Chromium from a small real warehouse.

A generated world of a few hundred people is loaded and its marts built; its column lineage is recorded and one
re-identification is made for direct care; then `pophealth ig-report` writes the page and Chromium draws it.
What an IG officer reads there is asserted on the drawn page (the DOM after the browser has loaded it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import psycopg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from .chromium import dump_dom, require_chromium
from .conftest import TEST_KEY, WITHOUT_DATA_TESTS, isolated_env, marts_built_from, synth_world, with_vault_private_key

pytestmark = pytest.mark.integration

PURPOSE = "direct care: <script>alert(1)</script> falls clinic follow-up"
RECORD_LINEAGE = "from pophealth.governance.lineage import record_column_lineage; print(record_column_lineage())"
PLANTED_NHS_NUMBER = "9434765919"  # a synthetic number that passes the Modulus 11 check


class Report:
    def __init__(self, home: Path, url: str):
        self.home, self.url, self.env = home, url, with_vault_private_key(isolated_env(home))
        self.drawn = 0

    def pophealth(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args], env=self.env, capture_output=True, text=True, timeout=600
        )

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def draw(self) -> tuple[str, str, int]:
        """Write the report, draw it in Chromium; returns (the drawn DOM, the file as written, the command's exit)."""
        self.drawn += 1
        out = self.home / f"ig_report_{self.drawn}.html"
        made = self.pophealth("ig-report", "--out", str(out))
        self.said = made.stdout
        assert out.exists(), made.stdout[-3000:] + made.stderr[-3000:]
        return dump_dom(out, self.home / f"chromium-{self.drawn}"), out.read_text(encoding="utf-8"), made.returncode


def table(dom: str, ident: str) -> str:
    found = re.search(rf'<table id="{re.escape(ident)}">.*?</table>', dom, re.S)
    assert found, f"no table {ident} in the report"
    return found.group(0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_chromium("the IG report")
    home = tmp_path_factory.mktemp("ig-report")
    landing = synth_world(home, population=300, seed=17)
    with marts_built_from(landing, home, TEST_KEY, timeout=900, dbt_args=WITHOUT_DATA_TESTS) as url:
        r = Report(home, url)
        recorded = subprocess.run(
            [sys.executable, "-c", RECORD_LINEAGE], env=r.env, capture_output=True, text=True, timeout=600
        )
        assert recorded.returncode == 0, recorded.stderr[-3000:]
        # Re-identification takes the care teams' ids (direct_care), never an analyst's (marts).
        r.person_id = r.sql("SELECT person_id FROM direct_care.case_finding ORDER BY risk_rank LIMIT 1")[0][0]
        # A purpose off the closed list is refused, and the refusal logged with the purpose as given.
        refused = r.pophealth("reidentify", r.person_id, "--purpose", PURPOSE, "--on-behalf-of", "Dr Example")
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        asked = r.pophealth(
            "reidentify", r.person_id, "--purpose", "case_finding_follow_up", "--on-behalf-of", "Dr Example"
        )
        assert asked.returncode == 0, asked.stdout[-2000:] + asked.stderr[-2000:]
        r.revealed = re.findall(r"\b\d{10}\b", asked.stdout)
        r.first = r.draw()
        yield r


def test_every_agreement_and_every_load_is_listed_with_checksum_counts_and_key_version(report):
    dom, _, exit_code = report.first
    assert exit_code == 0
    agreements = table(dom, "agreements")
    for reference in (
        "DSA-ESX-2024-001",
        "DSA-ESX-2024-002",
        "DSA-ESX-2024-003",
        "DSA-ESX-2024-010",
        "DSA-ESX-2024-020",
        "DSA-NHSE-2024-030",
    ):
        assert reference in agreements
    assert "9(2)(h) health or social care" in agreements and "bcf_reporting" in agreements
    loads = table(dom, "loads")
    for file_name, sha, read, loaded, quarantined, opted_out, key_version in report.sql(
        """SELECT file_name, file_sha256, rows_read, rows_loaded, rows_quarantined, rows_opted_out, key_version
               FROM audit.load"""
    ):
        row = next(r for r in loads.split("<tr>") if f"<td>{file_name}</td>" in r)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[6] == sha[:16] + "…"
        assert [int(c) for c in cells[8:12]] == [read, loaded, quarantined, opted_out]
        assert cells[12] == (key_version or "")


def test_the_lineage_graph_goes_from_sources_to_marts_and_the_bcf_numerator_names_admission_method_and_date(report):
    dom, _, _ = report.first
    graph = re.search(r'<svg[^>]*id="lineage-graph".*?</svg>', dom, re.S).group(0)
    assert '<text x="285"' in graph and ">apc<" in graph and ">marts.bcf_metrics<" in graph
    assert graph.count("<line") >= 12
    bcf = re.search(r'<details class="mart-columns" data-mart="marts.bcf_metrics">.*?</details>', dom, re.S).group(0)
    numerator = [r for r in bcf.split("<tr>") if r.startswith("<td>numerator</td>")]
    sources = " ".join(numerator)
    assert "apc: " in sources and "admimeth" in sources and "admidate" in sources


def test_the_grants_section_shows_a_grant_made_in_the_database_and_not_once_it_is_revoked(report):
    dom, _, _ = report.first
    assert "raw.ref_lsoa" not in table(dom, "grants-analyst")
    assert "marts.bcf_metrics" in table(dom, "grants-analyst")
    report.sql("GRANT SELECT ON raw.ref_lsoa TO analyst")
    try:
        granted, _, _ = report.draw()
    finally:
        report.sql("REVOKE SELECT ON raw.ref_lsoa FROM analyst")
    assert re.search(r"<td>raw\.ref_lsoa</td><td>SELECT</td>", table(granted, "grants-analyst"))
    revoked, _, _ = report.draw()
    assert "raw.ref_lsoa" not in table(revoked, "grants-analyst")


def test_the_roles_schemas_vault_functions_and_default_privileges_are_read_from_the_catalogue(report):
    dom, _, _ = report.first
    assert all(
        f"<td>{role}</td>" in table(dom, "roles")
        for role in ("loader", "analyst", "ig_auditor", "reidentifier", "care_team")
    )
    assert re.search(r"<td>analyst</td><td>marts</td><td>USAGE</td>", table(dom, "schema-grants"))
    assert re.search(
        r"<td>reidentifier</td><td>vault\.reidentify\(request bigint\)</td><td>True</td>", table(dom, "function-grants")
    )
    assert re.search(r"<td>ig_auditor</td><td>SELECT</td>", table(dom, "default-grants"))
    # The loader sees which pseudonyms and data keys are stored, never a ciphertext nor a wrapped data key.
    assert re.search(
        r"<td>loader</td><td>vault</td><td>identity</td><td>data_key_id, kind, pseudonym</td><td>SELECT</td>",
        table(dom, "column-grants"),
    )
    assert re.search(
        r"<td>loader</td><td>vault</td><td>data_key</td><td>data_key_id, load_id</td><td>SELECT</td>",
        table(dom, "column-grants"),
    )


def test_the_reidentification_log_says_who_why_and_how_many_but_never_whom(report):
    dom, written, _ = report.first
    log = table(dom, "reidentifications")
    assert "Dr Example" in log and "falls clinic follow-up" in log and "case_finding_follow_up" in log
    assert re.search(r'<td class="n">1</td><td class="n">1</td><td>released</td>', log)
    assert re.search(r'<td class="n">1</td><td class="n">0</td><td>refused</td><td>the purpose must be one of', log)
    # requests, released, held, refused, people asked for, approvals given, refusals given
    assert re.search(
        r'<td>reidentifier</td><td class="n">2</td><td class="n">1</td><td class="n">0</td>'
        r'<td class="n">1</td><td class="n">2</td>',
        table(dom, "reidentification-per-login"),
    )
    assert "hash chain intact" in dom
    assert report.person_id not in dom
    assert report.revealed and not any(number in dom for number in report.revealed)
    # the purpose's markup is shown as text: no script reached the page
    assert "<script" not in written and "&lt;script&gt;" in written


def test_the_scan_passes_on_the_warehouse_and_fails_naming_the_column_where_an_nhs_number_is_planted(report):
    dom, _, _ = report.first
    assert 'id="scan-verdict">PASS: no identifiable value found' in dom
    report.sql("CREATE TABLE staging.call_notes (note text, called_on date)")
    report.sql("INSERT INTO staging.call_notes VALUES (%s, '2025-01-02')", (f"rang {PLANTED_NHS_NUMBER} back",))
    try:
        planted, _, exit_code = report.draw()
    finally:
        report.sql("DROP TABLE staging.call_notes")
    assert exit_code == 1
    assert 'id="scan-verdict">FAIL: identifiable values found in 1 column(s)' in planted
    assert re.search(
        r"<td>staging\.call_notes</td><td>note</td><td>NHS number \(passes Modulus 11\)</td>",
        table(planted, "scan-findings"),
    )
    assert PLANTED_NHS_NUMBER not in planted
    # the command says where and what kind, never the value
    assert "staging.call_notes.note: NHS number (passes Modulus 11) in 1 row(s)" in report.said
    assert PLANTED_NHS_NUMBER not in report.said


def test_every_machine_identifier_column_is_a_column_of_the_warehouse_with_a_reason(report):
    from pophealth.governance.ig_report import MACHINE_IDENTIFIERS

    columns = {
        f"{s}.{t}.{c}"
        for s, t, c in report.sql(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns WHERE table_schema = 'audit'"
        )
    }
    assert set(MACHINE_IDENTIFIERS) <= columns  # no entry for a column that does not exist (a typo exempts nothing)
    assert all(len(why) > 30 for why in MACHINE_IDENTIFIERS.values())
    # Only machine-made columns: nothing that a source delivers, and nothing outside audit.
    assert all(c.startswith("audit.") for c in MACHINE_IDENTIFIERS)
    dom, _, _ = report.first
    listed = table(dom, "scan-machine-identifiers")
    assert "audit.dbt_result.unique_id" in listed and "audit.load.file_sha256" in listed


def test_a_dbt_test_id_that_spells_an_nhs_number_is_no_finding_but_the_same_text_elsewhere_is(report):
    # dbt's test ids end in a hash of ten hex digits; about 1 in 1,000 are all decimal and pass the check digit.
    node = f"test.pophealth.not_null_reporting_admission_reasons_period_end.{PLANTED_NHS_NUMBER}"
    report.sql(
        "INSERT INTO audit.dbt_result (run_id, unique_id, resource_type, status) VALUES ('ig-test', %s, "
        "'test', 'pass')",
        (node,),
    )
    try:
        clean, _, exit_code = report.draw()
        assert exit_code == 0 and 'id="scan-verdict">PASS' in clean
        # The registry exempts the column, not the value: the same text in the message column is found.
        report.sql("UPDATE audit.dbt_result SET message = unique_id WHERE run_id = 'ig-test'")
        flagged, _, exit_code = report.draw()
    finally:
        report.sql("DELETE FROM audit.dbt_result WHERE run_id = 'ig-test'")
    assert exit_code == 1
    assert re.search(
        r"<td>audit\.dbt_result</td><td>message</td><td>NHS number \(passes Modulus 11\)</td>",
        table(flagged, "scan-findings"),
    )
    assert PLANTED_NHS_NUMBER not in flagged


def test_the_gate_table_adds_up_rules_are_passed_failed_or_not_applicable(report):
    # One gate run of five rules: two passed, one failed as a warning, two not applicable (a first delivery has no
    # earlier one to compare its volume with; a column empty in the file).
    rules = [
        ("apc.a", "passed", "error", ""),
        ("apc.b", "passed", "error", ""),
        ("apc.c", "failed", "warn", ""),
        ("apc.volume.within_band", "not_applicable", "error", "no previous published or staged load of apc RAJ"),
        ("apc.d", "not_applicable", "warn", "column empty in this file"),
    ]
    for check_id, status, severity, observed in rules:
        report.sql(
            """INSERT INTO audit.gate_result (load_id, run_id, feed, suite, check_id, severity, category, status,
                                                     observed) VALUES (987654, 'ig-gates', 'apc', 'apc_load', %s, %s,
                                                     'plausibility', %s, %s)""",
            (check_id, severity, status, observed),
        )
    try:
        dom, _, _ = report.draw()
    finally:
        report.sql("DELETE FROM audit.gate_result WHERE run_id = 'ig-gates'")
    gates = table(dom, "gate-history")
    assert "<th>Rules</th><th>Passed</th><th>Failed (error)</th><th>Failed (warn)</th><th>Not applicable</th>" in gates
    row = re.search(r"<tr><td[^>]*>987654</td>(.*?)</tr>", gates, re.S)
    assert row, gates[:2000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[3:8] == ["5", "2", "0", "1", "2"]  # rules = passed + failed (error) + failed (warn) + not applicable
    assert cells[8] == "apc.c" and cells[9] == "apc.d, apc.volume.within_band"


def test_the_page_fetches_nothing_from_the_network(report):
    _, written, _ = report.first
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", written)
    assert "<script" not in written and "@import" not in written


def test_the_people_each_purpose_left_out_are_shown_per_build(report):
    dom, _, _ = report.first
    rows = table(dom, "optouts-by-purpose")
    ((left_out,),) = report.sql("""SELECT people_left_out FROM audit.optout_by_purpose WHERE purpose = 'secondary_use'
                                 ORDER BY built_at DESC LIMIT 1""")
    assert re.search(rf"<td>secondary_use</td><td[^>]*>\d+</td><td[^>]*>{left_out}</td>", rows)
    assert re.search(r"<td>direct_care</td><td[^>]*>\d+</td><td[^>]*>0</td>", rows)


# -- the scan, case by case: NHS numbers in any digits, and in jsonb, json and array columns ----------------------

FULL_WIDTH = PLANTED_NHS_NUMBER.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})  # ９４３４７６５９１９
ARABIC_INDIC = PLANTED_NHS_NUMBER.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})  # ٩٤٣٤٧٦٥٩١٩
DEVANAGARI = PLANTED_NHS_NUMBER.translate({ord(d): 0x0966 + int(d) for d in "0123456789"})
SPACED = f"{PLANTED_NHS_NUMBER[:3]} {PLANTED_NHS_NUMBER[3:6]} {PLANTED_NHS_NUMBER[6:]}"


@pytest.fixture(scope="module")
def empty_warehouse(tmp_path_factory):
    """A fresh embedded server with nothing in it but what a case plants (so the scan is quick and exact)."""
    home = tmp_path_factory.mktemp("scan")
    env = isolated_env(home)
    url = (
        subprocess.run(
            [sys.executable, "-m", "pophealth.cli", "db", "url"], env=env, capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS staging")
            yield conn
    finally:
        subprocess.run([sys.executable, "-m", "pophealth.cli", "db", "stop"], env=env, capture_output=True)


@pytest.mark.parametrize(
    "column_type, value, found",
    [
        ("text", f"rang {PLANTED_NHS_NUMBER} back", True),  # as before: ASCII digits
        ("text", f"rang {FULL_WIDTH} back", True),  # full-width digits
        ("text", f"رقم {ARABIC_INDIC}", True),  # Arabic-Indic digits
        ("text", DEVANAGARI, True),  # Devanagari digits
        ("text", "９４３　４７６　５９１９", True),  # full-width digits, ideographic spaces
        ("text", "943\u2010476\u20105919", True),  # Unicode hyphens between the groups
        ("text", FULL_WIDTH[:-1] + "８", False),  # full-width, but the check digit fails
        ("text", "naïve café, ward 7", False),  # non-ASCII text without a number
        ("jsonb", json.dumps({"caller": {"nhs": SPACED}}), True),  # a string inside a document
        ("jsonb", json.dumps({"nhs": int(PLANTED_NHS_NUMBER)}), True),  # a number inside a document
        ("jsonb", json.dumps({"nhs": FULL_WIDTH}), True),  # jsonb keeps \uff19 as the character
        # a dbt node id outside the registry's columns is scanned like any text: a column is exempt, never a value
        ("jsonb", json.dumps({"node": f"test.pophealth.not_null_person.{PLANTED_NHS_NUMBER}"}), True),
        ("json", json.dumps({"nhs": FULL_WIDTH}), True),  # json keeps "\uff19..." as written: read it
        ("text[]", ["ward 7", PLANTED_NHS_NUMBER], True),
        ("bigint[]", [1, int(PLANTED_NHS_NUMBER)], True),
        ("text[]", ["a" * 64, "ward 7"], False),  # a pseudonym is not a number
    ],
)
def test_the_scan_finds_an_nhs_number_in_any_digits_and_in_jsonb_json_and_array_columns(
    empty_warehouse, column_type, value, found
):
    from pophealth.governance.ig_report import scan_warehouse

    conn = empty_warehouse
    conn.execute(f"CREATE TABLE staging.planted (v {column_type})")
    try:
        conn.execute(f"INSERT INTO staging.planted VALUES (%s::{column_type})", (value,))
        result = scan_warehouse(conn)
    finally:
        conn.execute("DROP TABLE staging.planted")
    assert result.columns == 1  # the column was scanned at all
    findings = [(f.relation, f.column, f.kind, f.rows) for f in result.findings]
    assert findings == ([("staging.planted", "v", "NHS number (passes Modulus 11)", 1)] if found else [])


#: Every Unicode script's digit zero (its nine follow it): Arabic-Indic, Devanagari, Bengali, Thai, full-width, ...
DIGIT_ZEROS = [
    chr(c)
    for c in range(0x110000)
    if chr(c).isdecimal()
    and unicodedata.decimal(chr(c)) == 0
    and all(unicodedata.decimal(chr(c + d), -1) == d for d in range(10))
]


@settings(derandomize=True, max_examples=300)  # deterministic: the same cases on every run
@given(
    nine=st.text(alphabet="0123456789", min_size=9, max_size=9),
    zero=st.sampled_from(DIGIT_ZEROS),
    separator=st.sampled_from(["", " ", "-", "\u3000", "\u2010", "\uff0d"]),
)
def test_a_valid_nhs_number_in_any_script_s_digits_is_found_and_an_invalid_one_is_not(nine, zero, separator):
    from pophealth.contract.identifiers import nhs_check_digit
    from pophealth.governance.ig_report import nhs_numbers_in

    check = nhs_check_digit(nine)
    assume(check is not None and len(set(nine)) > 1)
    written = "".join(chr(ord(zero) + int(d)) for d in nine + str(check))
    spelled = f"{written[:3]}{separator}{written[3:6]}{separator}{written[6:]}"
    assert nhs_numbers_in(f"note: {spelled}.") == 1
    wrong = "".join(chr(ord(zero) + int(d)) for d in nine + str((check + 1) % 10))
    assert nhs_numbers_in(f"note: {wrong}.") == 0


@pytest.mark.parametrize(
    "value, postcodes",
    [
        ("lives at CM1 1AA", 1),  # as before: the database's own match
        ("lives at ＣＭ１　１ＡＡ", 1),  # full-width letters, digits and space: read as CM1 1AA
        ("ward ＣＭ１ and café", 0),  # non-ASCII, no full postcode
    ],
)
def test_the_scan_finds_a_full_postcode_written_in_full_width_characters(empty_warehouse, value, postcodes):
    from pophealth.governance.ig_report import scan_warehouse

    conn = empty_warehouse
    conn.execute("CREATE TABLE staging.planted (v text)")
    try:
        conn.execute("INSERT INTO staging.planted VALUES (%s)", (value,))
        result = scan_warehouse(conn)
    finally:
        conn.execute("DROP TABLE staging.planted")
    assert [(f.kind, f.rows) for f in result.findings] == ([("full postcode", postcodes)] if postcodes else [])
