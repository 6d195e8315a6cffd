"""The dbt documentation site: `pophealth docs` generates it (manifest and catalog of the warehouse in use), every
column of every published mart says what it means, every Better Care Fund metric names the contract definition it
follows, and the site is served on 127.0.0.1.

A small generated world is loaded and its marts built on a real embedded PostgreSQL (conftest.marts_built_from), so
the catalog describes real tables.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psycopg
import pytest

from .conftest import REPO, isolated_env

pytestmark = pytest.mark.integration

PUBLISHED = ("marts", "reporting")


@pytest.fixture(scope="module")
def site(small_world):
    env = isolated_env(small_world.home)
    # A warehouse built before the data sharing register's seed existed must still get its documentation. The
    # register is set aside (not dropped) and put back after: the warehouse is shared (conftest.small_world).
    with psycopg.connect(small_world.url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA docs_test_aside")
        conn.execute("ALTER TABLE reference.data_sharing_register SET SCHEMA docs_test_aside")
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pophealth.cli", "docs", "--static"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            conn.execute("ALTER TABLE docs_test_aside.data_sharing_register SET SCHEMA reference")
            conn.execute("DROP SCHEMA docs_test_aside")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    target = small_world.home / "state" / "dbt_target"
    assert f"Single-file site (open it in a browser): {target / 'static_index.html'}" in proc.stdout
    return target


def published_models(target: Path) -> dict[str, tuple[dict, dict]]:
    """schema.table -> (its manifest node, its catalog entry), for every table in the published schemas."""
    manifest = json.loads((target / "manifest.json").read_text())
    catalog = json.loads((target / "catalog.json").read_text())
    return {
        f"{node['schema']}.{node['alias']}": (node, catalog["nodes"][uid])
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and node["schema"] in PUBLISHED and uid in catalog["nodes"]
    }


def metric_codes() -> list[str]:
    with (REPO / "dbt_project" / "seeds" / "bcf_metric.csv").open(newline="") as handle:
        return [row["metric_code"] for row in csv.DictReader(handle)]


def test_the_catalog_holds_every_published_mart_of_the_contract(site):
    assert set(published_models(site)) >= {
        "marts.person",
        "marts.risk_stratification",
        "marts.bcf_metrics",
        "marts.delayed_discharges",
        "marts.falls_admissions",
        "marts.care_home_after_hospital",
        "marts.admission_reasons",
        "reporting.bcf_metrics",
        "reporting.risk_pyramid",
        "reporting.cohort_summary",
        "reporting.admission_reasons",
    }


def test_every_column_of_every_published_mart_says_what_it_means(site):
    undocumented = []
    for table, (node, catalog) in published_models(site).items():
        assert (node["description"] or "").strip(), f"{table} has no description"
        # The catalog's columns are the table's real ones, so a column added without a description is caught.
        for column in catalog["columns"]:
            if not (node["columns"].get(column, {}).get("description") or "").strip():
                undocumented.append(f"{table}.{column}")
    assert not undocumented, f"columns without a description: {undocumented}"


@pytest.mark.parametrize("table", ["marts.bcf_metrics", "reporting.bcf_metrics"])
def test_every_better_care_fund_metric_names_the_contract_definition_it_follows(site, table):
    node, _ = published_models(site)[table]
    description = node["columns"]["metric_code"]["description"]
    entries = {entry.split("`")[1]: entry for entry in description.split("\n- ")[1:]}
    assert sorted(entries) == sorted(metric_codes())
    for code, entry in entries.items():
        assert f"Contract definition: marts.md, Better Care Fund metrics, `{code}`." in entry
        assert len(entry.split(":", 1)[1]) > 100, f"{code}: say what it counts, in words"


def test_the_single_file_site_carries_the_descriptions(site):
    static = (site / "static_index.html").read_text()
    assert "Contract definition: marts.md, Better Care Fund metrics, `falls_admissions_65`." in static
    # it opens on the project's own overview, not dbt's welcome page, and lists the board report as an exposure
    assert "pophealth: the population health warehouse" in static and "marts.locality" in static
    assert "exposure.pophealth.board_report" in static


def test_the_site_is_served_on_loopback_only(site):
    from pophealth.marts.dbt_docs import DocsSite, serve

    server = serve(DocsSite(site, 0.0), 0)
    host, port = server.server_address
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as response:
            assert response.status == 200 and b"dbt" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/manifest.json", timeout=10) as response:
            assert "model.pophealth.bcf_metrics" in json.loads(response.read())["nodes"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
