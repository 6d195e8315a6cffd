"""The rules files read into rule objects (pophealth/quality/rules.py): a good file gives the objects it says, a bad
entry is refused with the file, the rule and the field named (never a stack trace), and a file is parsed once."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pophealth.quality import rules
from pophealth.quality.rules import (
    RULES_DIR_ENV,
    LoadRule,
    MartsRule,
    ProviderThreshold,
    RowCount,
    RulesError,
    load_rules,
    marts_rules,
    parse_load_rules,
    parse_marts_rules,
)

GOOD_REGISTRY = """\
version: 3
checks:
  - id: apc.nhs_number.valid_share
    feed: apc
    expectation: ExpectColumnValuesToBeInSet
    kwargs: {column: nhs_number_check, value_set: [valid, test_range], mostly: 0.95}
    by_provider:
      RQW: {kwargs: {mostly: 0.9}}
    severity: warn
    category: conformance
    subcategory: value
    context: verification
    note: A valid NHS number links an episode to the person.

  - id: apc.volume.within_band
    feed: apc
    expectation: ExpectTableRowCountToBeBetween
    kwargs: {}
    row_count: {baseline: previous_load, min_ratio: 0.6, max_ratio: 2.0, min_baseline_rows: 50}
    severity: error
    category: plausibility
    subcategory: atemporal
    context: validation
    note: About as many episodes as last month.

  - id: apc.admitted_after_death
    feed: apc
    expectation: UnexpectedRowsExpectation
    kwargs:
      unexpected_rows_query: >-
        SELECT b.source_row FROM {batch} b JOIN raw.gp_register g ON g.nhs_number_key = b.nhs_number_key
        WHERE b.admidate > g.date_of_death
    applies_to: [admidate, nhs_number_key]
    reads_published: [raw.gp_register.date_of_death]
    severity: error
    category: plausibility
    subcategory: temporal
    context: validation
    note: Nobody is admitted after their death.

  - id: apc.primary_diagnosis.present
    feed: apc
    expectation: ExpectColumnValuesToNotBeNull
    kwargs: {column: diag_01, mostly: 0.95}
    severity: warn
    category: completeness
    context: verification
    note: Coded episodes nearly always have a primary diagnosis.
"""

GOOD_MARTS = """\
version: 1
tables:
  marts.person: [person_id]
  marts.bcf_metrics: [metric_code, period_start]
checks:
  - id: marts.person.id_unique
    table: marts.person
    expectation: ExpectColumnValuesToBeUnique
    kwargs: {column: person_id}
    severity: error
    category: plausibility
    subcategory: uniqueness
    context: verification
    note: One row per person.
  - id: published.no_nhs_number_values
    table: marts.person
    expectation: UnexpectedRowsExpectation
    reports: columns
    scan_text_columns: "length({value}) = 10"
    kwargs: {}
    severity: error
    category: conformance
    subcategory: value
    context: verification
    note: No text value is an NHS number.
"""


@pytest.fixture
def rules_folder(tmp_path, monkeypatch) -> Path:
    """A folder of rules files the gates read instead of expectations/ (POPHEALTH_EXPECTATIONS_DIR)."""
    monkeypatch.setenv(RULES_DIR_ENV, str(tmp_path))
    (tmp_path / "registry.yml").write_text(GOOD_REGISTRY)
    (tmp_path / "marts.yml").write_text(GOOD_MARTS)
    return tmp_path


def test_a_good_registry_parses_to_its_rule_objects(rules_folder):
    share, volume, after_death, diagnosis = load_rules()
    assert share == LoadRule(
        id="apc.nhs_number.valid_share",
        feed="apc",
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "nhs_number_check", "value_set": ["valid", "test_range"], "mostly": 0.95},
        by_provider={"RQW": ProviderThreshold(kwargs={"mostly": 0.9})},
        severity="warn",
        category="conformance",
        subcategory="value",
        context="verification",
        note="A valid NHS number links an episode to the person.",
    )
    assert volume.row_count == RowCount(baseline="previous_load", min_ratio=0.6, max_ratio=2.0, min_baseline_rows=50)
    assert (volume.severity, volume.context, volume.columns) == ("error", "validation", [])
    assert after_death.query is not None and after_death.one_line_query.startswith("SELECT b.source_row FROM {batch} b")
    assert after_death.columns == ["admidate", "nhs_number_key"]
    assert after_death.reads_published == ("raw.gp_register.date_of_death",)
    assert (diagnosis.subcategory, diagnosis.row_count, diagnosis.columns) == (None, None, ["diag_01"])


def test_a_good_marts_file_parses_to_its_tables_and_rules(rules_folder):
    marts = marts_rules()
    assert marts.tables == {"marts.person": ("person_id",), "marts.bcf_metrics": ("metric_code", "period_start")}
    unique, scan = marts.rules
    assert unique == MartsRule(
        id="marts.person.id_unique",
        table="marts.person",
        expectation="ExpectColumnValuesToBeUnique",
        kwargs={"column": "person_id"},
        severity="error",
        category="plausibility",
        subcategory="uniqueness",
        context="verification",
        note="One row per person.",
    )
    assert not unique.is_table_level
    assert (scan.reports, scan.scan_text_columns, scan.is_table_level) == ("columns", "length({value}) = 10", True)


def test_a_rule_object_cannot_be_changed_and_a_sources_threshold_is_a_new_one(rules_folder):
    share = load_rules()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        share.severity = "error"
    with pytest.raises(TypeError):
        share.kwargs["mostly"] = 0.1
    rqw = share.for_provider("RQW")
    assert (rqw.kwargs["mostly"], rqw.threshold_of, share.kwargs["mostly"], share.threshold_of) == (
        0.9,
        "RQW",
        0.95,
        None,
    )
    assert share.for_provider("RAJ") is share and share.for_provider(None) is share


def test_each_file_is_parsed_once_and_again_when_it_changes(rules_folder):
    first = load_rules()
    assert load_rules() is first and marts_rules() is marts_rules()
    registry = rules_folder / "registry.yml"
    registry.write_text(GOOD_REGISTRY.replace("mostly: 0.95}\n    by_provider", "mostly: 0.97}\n    by_provider"))
    os.utime(registry, ns=(registry.stat().st_mtime_ns + 10**9,) * 2)  # a later modification time, surely
    assert load_rules()[0].kwargs["mostly"] == 0.97


def _entry(**changes) -> dict:
    """The first rule of the good registry, with some fields changed (None removes one)."""
    entry = dict(yaml.safe_load(GOOD_REGISTRY)["checks"][0])
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"severity": "fatal"}, "apc.nhs_number.valid_share: severity must be one of error, warn"),
        ({"category": "validity"}, "apc.nhs_number.valid_share: category must be one of conformance, completeness"),
        ({"subcategory": "temporal"}, "apc.nhs_number.valid_share: subcategory of conformance must be one of value"),
        ({"category": "completeness"}, "apc.nhs_number.valid_share: completeness has no subcategory"),
        ({"context": None}, "apc.nhs_number.valid_share: context must be one of verification, validation"),
        ({"note": None}, "apc.nhs_number.valid_share: a one-line note saying why the rule exists is required"),
        ({"note": ["a", "list"]}, "apc.nhs_number.valid_share: a one-line note"),
        (
            {"expectation": None},
            "apc.nhs_number.valid_share: expectation (a Great Expectations class name) is required",
        ),
        ({"kwargs": [1, 2]}, "apc.nhs_number.valid_share: kwargs must be a mapping"),
        ({"feed": "xray"}, "apc.nhs_number.valid_share: unknown feed 'xray'"),
        ({"feed": ["apc"]}, "apc.nhs_number.valid_share: unknown feed ['apc']"),
        ({"feed": "cld"}, "apc.nhs_number.valid_share: the id must start with its feed (cld.)"),
        ({"mostly": 0.9}, "apc.nhs_number.valid_share: unknown keys mostly"),
        (
            {"kwargs": {"column": "shoe_size"}},
            "apc.nhs_number.valid_share: shoe_size is not a column of raw.apc_episode",
        ),
        ({"applies_to": "admidate"}, "apc.nhs_number.valid_share: applies_to must be a list of the columns"),
        ({"reads_published": "raw.gp_register.date_of_death"}, "valid_share: reads_published must be a list"),
        ({"reads_published": ["raw.gp_register.shoe_size"]}, "reads_published 'raw.gp_register.shoe_size' is not"),
        (
            {"by_provider": {"RQW": {"kwargs": {"regex": "x"}}}},
            "by_provider RQW overrides kwargs.regex, which the rule",
        ),
        ({"by_provider": {"RQW": {"severity": "warn"}}}, "by_provider RQW may override kwargs and row_count only"),
        ({"row_count": {"baseline": "file", "min_ratio": 0.9}}, "row_count goes with ExpectTableRowCountToBeBetween"),
        ({"row_count": "most rows"}, "apc.nhs_number.valid_share: row_count must be a mapping"),
        ({"id": 17}, "check #1: its id must be text"),
        ({"id": None}, "check #1 has no id"),
    ],
)
def test_each_kind_of_bad_entry_is_named_with_its_rule_and_field(rules_folder, changes, expected):
    parsed, problems = parse_load_rules({"checks": [_entry(**changes)]})
    assert parsed == () and any(expected in p for p in problems), problems
    registry = rules_folder / "registry.yml"
    registry.write_text(yaml.safe_dump({"checks": [_entry(**changes)]}))
    with pytest.raises(RulesError) as refused:
        load_rules()
    assert str(refused.value).startswith(f"{registry}: ") and expected in str(refused.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("checks: {}", "the registry needs a top-level list `checks`"),
        ("- just\n- a list", "the registry needs a top-level list `checks`"),
        ("checks: [oops", "not valid YAML"),
        ("checks:\n  - id: apc.x\n  - id: apc.x\n", "apc.x: the id is used twice"),
    ],
)
def test_a_bad_file_is_named_with_what_is_wrong(rules_folder, text, expected):
    (rules_folder / "registry.yml").write_text(text)
    with pytest.raises(RulesError, match="registry.yml: ") as refused:
        load_rules()
    assert expected in str(refused.value)


def test_a_missing_file_says_where_it_was_looked_for(rules_folder):
    (rules_folder / "marts.yml").unlink()
    with pytest.raises(RulesError, match=f"{rules_folder / 'marts.yml'} do not exist .*{RULES_DIR_ENV}"):
        marts_rules()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"table": "marts.nowhere"}, "marts.person.id_unique: table 'marts.nowhere' is not one of `tables`"),
        ({"reports": "rows"}, "marts.person.id_unique: reports may only be `columns`"),
        ({"severity": "warning"}, "marts.person.id_unique: severity must be one of error, warn"),
        ({"category": "completeness"}, "marts.person.id_unique: completeness has no subcategory"),
        ({"expectation": "UnexpectedRowsExpectation"}, "marts.person.id_unique: unexpected_rows_query is required"),
        (
            {
                "expectation": "UnexpectedRowsExpectation",
                "kwargs": {"unexpected_rows_query": "SELECT birth_year FROM x"},
            },
            "must start with 'SELECT person_id FROM {batch}' or 'SELECT 1 FROM'",
        ),
        ({"scan_text_columns": "x = 1"}, "scan_text_columns goes with UnexpectedRowsExpectation and reports: columns"),
        ({"feed": "apc"}, "marts.person.id_unique: unknown keys feed"),
    ],
)
def test_each_kind_of_bad_marts_entry_is_named_with_its_rule_and_field(change, expected):
    data = yaml.safe_load(GOOD_MARTS)
    data["checks"][0].update(change)
    marts, problems = parse_marts_rules(data)
    assert marts.rules == () and any(expected in p for p in problems), problems


def test_a_marts_file_needs_each_tables_key():
    data = yaml.safe_load(GOOD_MARTS)
    data["tables"]["marts.person"] = []
    data["tables"]["staging.person"] = ["person_id"]
    problems = parse_marts_rules(data)[1]
    assert "tables: marts.person needs its key columns" in problems
    assert "tables: staging.person is not <marts|reporting>.<table>" in problems


# What YAML can hold: text, numbers, booleans, nothing, lists and mappings of them.
_yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "apc",
            "error",
            "warn",
            "conformance",
            "completeness",
            "value",
            "verification",
            "file",
            "previous_load",
            "nhs_number_check",
            "ExpectTableRowCountToBeBetween",
            "{batch}",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(sorted(rules.LOAD_RULE_KEYS | rules.MARTS_RULE_KEYS | {"mostly", "tables"}))


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(_fields, _yaml_values, max_size=3))
def test_whatever_an_entry_holds_the_parser_names_problems_or_gives_sound_objects(changes):
    """A typo in any field of a rule (any YAML value) is a named problem or a rule object, never an exception."""
    entry = {**_entry(), **changes}
    load, load_problems = parse_load_rules({"checks": [entry]})
    assert bool(load) != bool(load_problems)
    named = f"{entry['id']}: " if isinstance(entry.get("id"), str) else "check #1"
    assert all(p.startswith((named, "check #1")) for p in load_problems), load_problems
    for rule in load:
        assert rule.severity in rules.SEVERITIES and isinstance(rule.note, str) and rule.note.strip()
        assert rule.subcategory in (rules.SUBCATEGORIES[rule.category] or (None,))
    marts = yaml.safe_load(GOOD_MARTS)
    parsed, marts_problems = parse_marts_rules({**marts, "checks": [{**marts["checks"][0], **changes}]})
    assert bool(parsed.rules) != bool(marts_problems)


@settings(max_examples=200, deadline=None)
@given(data=_yaml_values)
def test_whatever_a_file_holds_the_parser_names_problems_and_never_fails(data):
    for parse in (parse_load_rules, parse_marts_rules):
        _, problems = parse(data if not isinstance(data, dict) else {**data, "checks": [data]})
        assert problems and all(isinstance(p, str) for p in problems)


def test_the_rules_are_read_without_great_expectations():
    """The files are checked in a second: Great Expectations (seconds to import) is left to the gates."""
    check = (
        "import sys; from pophealth.quality.rules import load_rules, marts_rules; "
        "assert load_rules() and marts_rules().rules; "
        "assert 'great_expectations' not in sys.modules, 'imported Great Expectations'"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
