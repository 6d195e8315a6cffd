"""The quality rule registry (expectations/registry.yml): every rule is well formed and reviewable."""

from __future__ import annotations

from datetime import date

import pytest
import yaml

from pophealth.contract.feeds import LOAD_ORDER
from pophealth.quality import gates
from pophealth.quality.gates import LoadContext
from pophealth.quality.rules import (
    LOAD_RULES_FILE,
    SUBCATEGORIES,
    LoadRule,
    load_query_problem,
    load_rule_problems,
    load_rules,
    parse_load_rules,
    rules_dir,
)
from pophealth.quality.validation import SUMMARY_FAILURES, CheckResult, GateOutcome, build_expectation


def _rule(rule_id: str) -> LoadRule:
    return next(r for r in load_rules() if r.id == rule_id)


def _registry() -> dict:
    """The registry as written (a fresh copy each time, to break)."""
    return yaml.safe_load((rules_dir() / LOAD_RULES_FILE).read_text())


def _entry(rule_id: str) -> dict:
    return next(c for c in _registry()["checks"] if c["id"] == rule_id)


def _problems_with(rule_id: str, **changes) -> str:
    """The registry's problems once one rule is changed (a value of None removes the key)."""
    broken = _registry()
    rule = next(c for c in broken["checks"] if c["id"] == rule_id)
    for key, value in changes.items():
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
    return " ".join(load_rule_problems(broken))


def test_the_registry_is_well_formed():
    assert load_rule_problems(_registry()) == []
    assert len(load_rules()) == len(_registry()["checks"])


def test_a_malformed_rule_is_named_with_what_is_wrong():
    broken = _registry()
    broken["checks"][0]["severity"] = "fatal"
    broken["checks"][1]["kwargs"] = {"column_A": "no_such_column", "column_B": "admidate"}
    problems = " ".join(load_rule_problems(broken))
    assert broken["checks"][0]["id"] in problems and "severity" in problems
    assert "no_such_column is not a column" in problems


def test_every_feed_is_gated():
    assert all(gates.has_suite(feed) for feed in LOAD_ORDER)


def test_every_rule_has_its_place_in_the_dqd_taxonomy():
    for rule in load_rules():
        assert rule.context in ("verification", "validation"), rule.id
        assert rule.subcategory in (SUBCATEGORIES[rule.category] or (None,)), rule.id
    # Comparing with another load or another feed is validation; the rest is verification.
    validation = {r.id for r in load_rules() if r.context == "validation"}
    assert {
        r.id
        for r in load_rules()
        if (r.row_count is not None and r.row_count.baseline == "previous_load") or r.reads_published
    } <= validation
    assert {"apc.admitted_after_death", "apc.admitted_after_hospital_death"} <= validation


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"context": None}, "context must be one of verification, validation"),
        ({"context": "validity"}, "context must be one of"),
        ({"subcategory": "temporal"}, "subcategory of conformance must be one of value, relational, computational"),
        ({"subcategory": None}, "subcategory of conformance"),
        ({"category": "completeness"}, "completeness has no subcategory"),
        ({"severty": "error"}, "unknown keys severty"),
        ({"note": " "}, "a one-line note"),
    ],
)
def test_the_taxonomy_fields_are_checked(changes, expected):
    assert expected in _problems_with("apc.admission_method.in_contract", **changes)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("SELECT nhs_number_check FROM {batch} WHERE true", "must start with 'SELECT source_row FROM {batch}'"),
        ("SELECT source_row, person_id FROM {batch}", "must start with"),
        ("SELECT b.source_row FROM {batch} c JOIN raw.gp_register g ON true", "must start with"),
        ("SELECT source_row FROM {batch} b WHERE b.epiorder = 1", "aliases {batch} without a JOIN"),
        ("SELECT source_row FROM {batch} WHERE admidate > {period_start}", "names {period_start}"),
        ("SELECT source_row FROM {batch} WHERE sex = '{'", "unpaired braces"),
    ],
)
def test_a_rule_written_as_sql_returns_row_numbers_only(query, expected):
    problems = _problems_with("apc.one_first_episode_per_spell", kwargs={"unexpected_rows_query": query})
    assert expected in problems


def test_a_feed_without_row_numbers_counts_rows_and_returns_nothing_else():
    problems = _problems_with(
        "ref_postcode_lookup.lsoa_in_one_locality", kwargs={"unexpected_rows_query": "SELECT source_row FROM {batch}"}
    )
    assert "must start with 'SELECT 1 FROM {batch}'" in problems and "keeps no row numbers" in problems
    assert "source_row is not a column" in _problems_with(
        "ref_population.age.in_range", kwargs={"column": "source_row", "min_value": 0}
    )


def test_a_join_rule_may_alias_the_batch_and_fill_the_loads_placeholders():
    assert (
        load_query_problem(
            "apc",
            "SELECT b.source_row FROM {batch} b JOIN raw.gp_register g ON g.nhs_number_key = b.nhs_number_key "
            "WHERE g.date_of_death < {period_end} AND {provider} = 'RAJ' AND b.load_id = {load_id}",
        )
        is None
    )
    ctx = LoadContext(7, "apc", provider="R'X", period_end=date(2025, 9, 30))
    bound = gates.bind_query(
        "SELECT source_row FROM {batch} WHERE d > {period_end} AND p = {provider} AND l = {load_id}", ctx
    )
    assert bound == ("SELECT source_row FROM {batch} WHERE d > DATE '2025-09-30' AND p = 'R''X' AND l = 7")
    assert "CAST(NULL AS date)" in gates.bind_query("{period_end}", LoadContext(1, "ref_postcode_lookup"))


@pytest.mark.parametrize(
    "row_count, expected",
    [
        ({"baseline": "file"}, "needs min_ratio or max_ratio"),
        ({"baseline": "yesterday", "min_ratio": 0.5}, "baseline must be one of file, previous_load"),
        ({"baseline": "previous_load", "min_ratio": 2, "max_ratio": 1}, "min_ratio is above max_ratio"),
        ({"baseline": "previous_load", "min_ratio": -1}, "ratios must be positive numbers"),
        ({"baseline": "previous_load", "min_ratio": 0.5, "min_baseline_rows": "many"}, "min_baseline_rows"),
        (
            {"baseline": "previous_load", "min_ratio": 0.5, "only_quarantined_for": ["nhs_number"]},
            "only_quarantined_for goes with baseline: file",
        ),
        (
            {"baseline": "file", "min_ratio": 0.5, "only_quarantined_for": ["shoe_size"]},
            "not a column of an extract of apc",
        ),
        ({"baseline": "file", "min_ratio": 0.5, "tolerance": 1}, "unknown keys tolerance"),
    ],
)
def test_a_row_count_rule_is_checked(row_count, expected):
    assert expected in _problems_with("apc.volume.within_band", row_count=row_count)


def test_a_row_count_rule_goes_with_the_row_count_expectation():
    problems = _problems_with("apc.admission_method.in_contract", row_count={"baseline": "file", "min_ratio": 0.9})
    assert "row_count goes with ExpectTableRowCountToBeBetween" in problems
    problems = _problems_with("apc.volume.within_band", kwargs={"min_value": 3})
    assert "min_value and max_value are computed" in problems


def test_per_source_thresholds_override_only_what_the_rule_sets():
    assert (
        load_rule_problems(
            {"checks": [{**_entry("apc.nhs_number.valid_share"), "by_provider": {"RQW": {"kwargs": {"mostly": 0.9}}}}]}
        )
        == []
    )
    assert "overrides kwargs.regex, which the rule does not set" in _problems_with(
        "apc.nhs_number.valid_share", by_provider={"RQW": {"kwargs": {"regex": "x"}}}
    )
    assert "must be a number like the rule's" in _problems_with(
        "apc.nhs_number.valid_share", by_provider={"RQW": {"kwargs": {"mostly": "most"}}}
    )
    assert "may override kwargs and row_count only" in _problems_with(
        "apc.nhs_number.valid_share", by_provider={"RQW": {"severity": "warn"}}
    )
    assert "a feed with one sender" in _problems_with(
        "gp_register.volume.within_band", by_provider={"X": {"row_count": {"min_ratio": 0.5}}}
    )


def test_a_providers_threshold_is_the_one_applied_and_shown():
    (rule,), problems = _parsed(
        {**_entry("apc.nhs_number.valid_share"), "by_provider": {"RQW": {"kwargs": {"mostly": 0.9}}}}
    )
    assert problems == []
    assert rule.for_provider("RAJ") is rule
    rqw = rule.for_provider("RQW")
    assert rqw.kwargs["mostly"] == 0.9 and rule.kwargs["mostly"] == 0.95
    assert gates._threshold(rqw).endswith("on at least 90% of rows (RQW's threshold)")
    (volume,), problems = _parsed(
        {**_entry("apc.volume.within_band"), "by_provider": {"RDE": {"row_count": {"min_ratio": 0.4}}}}
    )
    assert problems == []
    rde = volume.for_provider("RDE")
    assert rde.row_count is not None and volume.row_count is not None
    assert rde.row_count.min_ratio == 0.4 and rde.row_count.max_ratio == 2.0
    assert volume.row_count.min_ratio == 0.6


def _parsed(entry: dict) -> tuple[tuple[LoadRule, ...], list[str]]:
    return parse_load_rules({"checks": [entry]})


def test_published_data_a_rule_reads_must_exist():
    assert "reads_published 'raw.gp_register.shoe_size'" in _problems_with(
        "apc.admitted_after_death", reads_published=["raw.gp_register.shoe_size"]
    )
    assert _rule("apc.admitted_after_death").reads_published == ("raw.gp_register.date_of_death",)


def test_the_thresholds_differ_by_feed_as_the_sources_do():
    """Social care has more missing NHS numbers than hospitals; the register refuses rows without one."""

    def mostly(rule_id: str) -> float:
        return _rule(rule_id).kwargs["mostly"]

    assert mostly("apc.nhs_number.valid_share") > mostly("cld.nhs_number.valid_share")
    assert mostly("apc.nhs_number.valid_share_floor") > mostly("cld.nhs_number.valid_share_floor")
    assert mostly("apc.nhs_number.present") > mostly("cld.nhs_number.present")
    register = _rule("gp_register.nhs_number.valid_share").row_count
    assert register is not None and register.min_ratio is not None
    assert register.min_ratio > mostly("apc.nhs_number.valid_share")
    assert register.only_quarantined_for == ("nhs_number", "person_id")
    for feed in ("apc", "cld", "gp_register"):
        floor = _rule(f"{feed}.nhs_number.valid_share_floor")
        assert floor.severity == "error" and _rule(f"{feed}.nhs_number.valid_share").severity == "warn"
    for feed in LOAD_ORDER:
        volume = _rule(f"{feed}.volume.within_band").row_count
        assert _rule(f"{feed}.volume.within_band").severity == "error"
        assert volume is not None and volume.baseline == "previous_load"
        assert volume.min_ratio is not None and volume.min_ratio > 0.5  # half the usual rows is a failed extract
        assert _rule(f"{feed}.rows.loaded_share").severity == "error"


def test_the_hospital_feed_refuses_an_episode_before_its_admission():
    rule = _rule("apc.episode_starts_after_admission")
    assert rule.severity == "error"
    assert rule.expectation == "ExpectColumnPairValuesAToBeGreaterThanB"
    assert (rule.kwargs["column_A"], rule.kwargs["column_B"], rule.kwargs["or_equal"]) == ("epistart", "admidate", True)


def test_every_rule_builds_as_a_great_expectations_expectation():
    for rule in load_rules():
        build_expectation(rule)  # every class exists in GE 1.x and accepts its kwargs


def test_only_an_error_fails_the_gate_and_the_summary_names_rows_not_values():
    warn = CheckResult("apc.x", "plausibility", "warn", "failed", "why", 3, 10, "no row", "3", [2, 5])
    error = CheckResult("apc.y", "plausibility", "error", "failed", "because", 1, 10, "no row", "1", [7])
    skipped = CheckResult(
        "apc.z", "completeness", "error", "not_applicable", "n/a", None, 10, observed="column empty in this file"
    )
    assert GateOutcome("apc", [warn, skipped]).passed
    outcome = GateOutcome("apc", [warn, error, skipped], file_name="apc_RAJ_20250930.csv", load_id=4)
    assert not outcome.passed
    text = outcome.summary()
    lines = text.splitlines()
    assert lines[0] == (
        "apc_RAJ_20250930.csv (load 4): apc suite: 0 passed, 2 failed (1 error, 1 warn), 1 not applicable"
    )
    assert lines[1] == "  FAILED [error] apc.y: because"  # errors first
    assert lines[2] == "      1 of 10 rows; threshold: no row; example rows (1 = first data row): 7"
    assert lines[3] == "  warning [warn] apc.x: why"
    assert lines[-2] == "  not applicable (column empty in this file): apc.z"
    assert lines[-1].startswith("  Data Docs (Great Expectations): ") and lines[-1].endswith("index.html")


def test_a_table_level_failure_shows_what_was_observed():
    volume = CheckResult(
        "apc.volume.within_band",
        "plausibility",
        "error",
        "failed",
        "volume",
        None,
        50,
        "rows between 60% and 200% of ...",
        "50 rows (50% of 100)",
    )
    text = GateOutcome("apc", [volume]).summary()
    assert "observed 50 rows (50% of 100); threshold: rows between 60% and 200% of ..." in text
    assert "example rows" not in text


def test_many_failures_stay_one_screen():
    failures = [
        CheckResult(f"apc.r{i:02d}", "conformance", "error", "failed", "n", 1, 10, "t", "1", [i]) for i in range(40)
    ]
    lines = GateOutcome("apc", failures).summary().splitlines()
    assert len(lines) == 1 + 2 * SUMMARY_FAILURES + 1 + 1  # the tally, the rules, the rest, Data Docs
    assert lines[-2].startswith(f"  ... and {40 - SUMMARY_FAILURES} more failed rules (audit.gate_result): ")
