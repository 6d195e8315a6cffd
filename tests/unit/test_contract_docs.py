"""docs/contract/ is the platform's interface, and the code must say what it says.

The contract (docs/contract/extracts.md: what sources send; marts.md: what analysts rely on) is kept in the
repository so that anyone who clones it has it. These tests read it as a user would and hold the code to it:
the columns the loader accepts for each feed, the columns of each published mart (the dbt models' enforced
contracts), and the Better Care Fund metric codes the marts emit. When the upstream copy of the contract is
on this machine (../shared/contract, beside the repository), docs/contract must be the very same text: the
platform's own additions live in docs/contract/decisions.md, not in the contract's files.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from pophealth.contract.feeds import FEEDS_BY_NAME, KEY_VERSION_COLUMN

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract"
DBT = ROOT / "dbt_project"
UPSTREAM = ROOT.parent / "shared" / "contract"

# Columns the loader accepts beyond the contract, each a decision written down in docs/contract/decisions.md;
# any other difference between the contract and the loader fails below.
ACCEPTED_BEYOND_CONTRACT = {"ref_postcode_lookup": {"locality_name"}}


def sections(text: str) -> dict[str, str]:
    """The contract's '## ' sections by heading (the heading's first word, as written)."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].split()[0].rstrip(":"): part.split("\n", 1)[1] for part in parts}


def table_first_column(section: str) -> list[str]:
    """The column names of a section's first `| column | meaning |` table, lists and ranges expanded."""
    names: list[str] = []
    lines = iter(section.splitlines())
    for line in lines:
        if line.startswith("| column |"):
            break
    else:
        raise AssertionError("the section has no '| column | meaning |' table")
    next(lines)  # the | --- | --- | line
    for line in lines:
        if not line.startswith("|"):
            break
        cell = line.split("|")[1].strip()
        for name in (n.strip() for n in cell.split(",")):
            ranged = re.fullmatch(r"([a-z_]+?)(\d+) \.\. \1(\d+)", name)
            if ranged:
                stem, first, last = ranged.group(1), ranged.group(2), ranged.group(3)
                names.extend(f"{stem}{i:0{len(first)}d}" for i in range(int(first), int(last) + 1))
            else:
                names.append(name)
    return names


def top_level_codes(paragraph: str) -> list[str]:
    """The `code` spans of a paragraph that are not inside parentheses: a column list's names, without the
    values and explanations written in brackets after them."""
    depth, outside = 0, []
    for char in paragraph:
        depth += char == "("
        if depth == 0:
            outside.append(char)
        depth -= char == ")" and depth > 0
    return re.findall(r"`([a-z_]+)`", "".join(outside))


def first_paragraph(section: str) -> str:
    return next(p for p in section.strip().split("\n\n") if p.strip())


def published_columns() -> dict[str, list[str]]:
    """Every model with an enforced dbt contract, as `schema.relation` -> its columns in order."""
    schemas = yaml.safe_load((DBT / "dbt_project.yml").read_text())["models"]["pophealth"]
    published: dict[str, list[str]] = {}
    for properties in sorted((DBT / "models").glob("*/_*.yml")):
        folder = properties.parent.name
        for model in yaml.safe_load(properties.read_text()).get("models", []):
            config = model.get("config", {})
            if not config.get("contract", {}).get("enforced"):
                continue
            relation = f"{schemas[folder]['+schema']}.{config.get('alias', model['name'])}"
            published[relation] = [column["name"] for column in model["columns"]]
    return published


EXTRACTS = sections((CONTRACT / "extracts.md").read_text())
MARTS = sections((CONTRACT / "marts.md").read_text())


def test_the_contract_and_the_platform_decisions_are_in_the_repository():
    for name in ("extracts.md", "marts.md", "reference-figures.md", "decisions.md"):
        assert (CONTRACT / name).is_file(), f"docs/contract/{name} is missing"


def test_the_parsers_read_what_the_contract_says():
    # Guards the parsing itself, so that the comparisons below cannot pass by reading nothing.
    assert table_first_column(EXTRACTS["apc"])[:3] == ["epikey", "spell_id", "nhs_number"]
    assert "diag_20" in table_first_column(EXTRACTS["apc"])
    assert top_level_codes("`a` (`b`, `c`), `d`") == ["a", "d"]
    assert set(MARTS) >= {"marts.person", "marts.risk_stratification", "marts.bcf_metrics", "direct_care.case_finding"}


@pytest.mark.parametrize(
    "feed, section",
    [
        ("gp_register", "gp_register"),
        ("apc", "apc"),
        ("cld", "cld"),
        ("ref_postcode_lookup", "ref_postcode_lookup"),
        ("ref_population", "ref_population_<YYYY>"),
    ],
)
def test_each_feed_accepts_the_contract_columns(feed, section):
    contract = table_first_column(EXTRACTS[section])
    declared = FEEDS_BY_NAME[feed]
    if declared.pseudonymisable:
        # The identifiable form is the contract's columns, with the CLD's capitalisation, in its order.
        assert list(declared.written) == contract
    accepted = {c.lower() for c in declared.contract_columns} - {"person_id", KEY_VERSION_COLUMN}
    if declared.pseudonymisable:
        accepted -= set(declared.pseudonymised) - set(declared.identifiable)
    assert accepted - {c.lower() for c in contract} == ACCEPTED_BEYOND_CONTRACT.get(feed, set()), (
        f"{feed}: the loader accepts columns the contract does not have"
    )
    assert {c.lower() for c in contract} <= accepted, f"{feed}: the loader does not accept every contract column"
    assert set(declared.required_columns) <= {c.lower() for c in contract}


def test_the_optout_list_is_one_column_nhs_number():
    assert "One column, `nhs_number`." in EXTRACTS["optouts"]
    assert FEEDS_BY_NAME["optouts"].identifiable == ("nhs_number",)


def test_pseudonymised_at_source_files_use_the_contract_names():
    identifiers = EXTRACTS["Identifiers"]
    assert f"`{KEY_VERSION_COLUMN}`" in identifiers and "column\n  `person_id`" in identifiers
    for feed in ("gp_register", "apc", "cld", "optouts"):
        assert FEEDS_BY_NAME[feed].pseudonymised[-1] == KEY_VERSION_COLUMN
        assert "person_id" in FEEDS_BY_NAME[feed].pseudonymised


@pytest.mark.parametrize(
    "relation, complete",
    [
        ("marts.person", True),
        ("marts.bcf_metrics", True),
        ("marts.risk_stratification", False),  # "and the score's inputs": named in words only
        ("direct_care.case_finding", False),  # the same
    ],
)
def test_each_published_mart_has_the_contract_columns(relation, complete):
    paragraph = first_paragraph(MARTS[relation])
    contract = top_level_codes(paragraph)
    assert len(contract) >= 7, f"{relation}: read too few columns from the contract: {contract}"
    published = published_columns()
    assert relation in published, f"{relation} is in the contract but no dbt model with an enforced contract is it"
    columns = published[relation]
    missing = [c for c in contract if c not in columns]
    assert not missing, f"{relation}: the dbt contract lacks the contract's columns {missing}"
    in_order = [c for c in columns if c in contract]
    assert in_order == contract, f"{relation}: the columns are not in the contract's order"
    if complete:
        extra = [c for c in columns if c not in contract]
        # marts.bcf_metrics's period_type, geography_name, metric name and unit help the reader; nothing
        # else may be published without the contract naming it.
        assert set(extra) <= {"period_type", "geography_name", "metric_name", "unit"}, (
            f"{relation}: the dbt model publishes columns the contract does not name: {extra}"
        )


def test_every_table_the_contract_names_is_published():
    named = {
        table
        for name in ("marts.md", "decisions.md")
        for table in re.findall(r"`((?:marts|reporting|direct_care)\.[a-z_]+)`", (CONTRACT / name).read_text())
        if table != "marts.md"
    }
    named |= {heading for heading in MARTS if re.fullmatch(r"(marts|direct_care)\.[a-z_]+", heading)}
    assert len(named) >= 8
    missing = named - set(published_columns())
    assert not missing, f"tables the contract names that no dbt model with an enforced contract publishes: {missing}"


def contract_metric_codes() -> list[str]:
    table = MARTS["marts.bcf_metrics"].split("| metric_code |", 1)[1]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE)


def test_the_marts_emit_exactly_the_contract_metric_codes():
    contract = contract_metric_codes()
    assert len(contract) == 6
    with (DBT / "seeds" / "bcf_metric.csv").open(newline="") as seed:
        seeded = [row["metric_code"] for row in csv.DictReader(seed)]
    assert sorted(seeded) == sorted(contract), "seeds/bcf_metric.csv and the contract's metric codes differ"
    sql = (DBT / "models" / "intermediate" / "int_bcf_contribution.sql").read_text()
    emitted = re.findall(r"^\s*select '([a-z0-9_]+)'", sql, flags=re.MULTILINE)
    assert sorted(emitted) == sorted(contract), "int_bcf_contribution.sql and the contract's metric codes differ"


@pytest.mark.skipif(
    not UPSTREAM.is_dir(),
    reason="no upstream contract beside the repository (../shared/contract): "
    "only the repository's copy, docs/contract, is there to read",
)
def test_the_repository_copy_is_the_upstream_contract_byte_for_byte():
    upstream = sorted(p.name for p in UPSTREAM.iterdir() if p.is_file())
    assert upstream, "../shared/contract is empty"
    for name in upstream:
        ours = CONTRACT / name
        assert ours.is_file(), f"docs/contract/{name} is missing (it is in ../shared/contract)"
        assert ours.read_bytes() == (UPSTREAM / name).read_bytes(), (
            f"docs/contract/{name} differs from ../shared/contract/{name}: copy it; the platform's own additions go "
            "in docs/contract/decisions.md"
        )
