"""The quality rule registry (expectations/registry.yml): every rule is well formed and reviewable."""

from __future__ import annotations

import copy

from pophealth import gates
from pophealth.gates import CheckResult, GateOutcome


def test_the_registry_is_well_formed():
    assert gates.registry_problems(gates.registry()) == []


def test_a_malformed_rule_is_named_with_what_is_wrong():
    broken = copy.deepcopy(gates.registry())
    broken["checks"][0]["severity"] = "fatal"
    broken["checks"][1]["kwargs"] = {"column_A": "no_such_column", "column_B": "admidate"}
    problems = " ".join(gates.registry_problems(broken))
    assert broken["checks"][0]["id"] in problems and "severity" in problems
    assert "no_such_column is not a column" in problems


def test_the_hospital_feed_refuses_an_episode_before_its_admission():
    rule = next(c for c in gates.all_checks() if c["id"] == "apc.episode_starts_after_admission")
    assert rule["severity"] == "error"
    assert rule["expectation"] == "ExpectColumnPairValuesAToBeGreaterThanB"
    assert (rule["kwargs"]["column_A"], rule["kwargs"]["column_B"], rule["kwargs"]["or_equal"]) == (
        "epistart", "admidate", True)
    assert gates.has_suite("apc") and not gates.has_suite("ref_population")


def test_only_an_error_fails_the_gate_and_the_summary_names_rows_not_values():
    warn = CheckResult("apc.x", "plausibility", "warn", "failed", "why", 3, 10, "no row", "3", [2, 5])
    error = CheckResult("apc.y", "plausibility", "error", "failed", "because", 1, 10, "no row", "1", [7])
    skipped = CheckResult("apc.z", "completeness", "error", "not_applicable", "n/a", None, 10)
    assert GateOutcome("apc", [warn, skipped]).passed
    outcome = GateOutcome("apc", [warn, error, skipped])
    assert not outcome.passed
    text = outcome.summary()
    assert "apc.y" in text and "because" in text and "7" in text
