"""The quality rule registry (expectations/registry.yml): every rule is well formed and reviewable."""

from __future__ import annotations

from pophealth import gates
from pophealth.feeds import FEED_SPECS
from pophealth.gates import CheckResult, GateOutcome

KINDS = {"not_null", "in_set", "between", "rows_where"}


def _all_checks():
    for feed, spec in gates.registry()["feeds"].items():
        for check in spec["checks"]:
            yield feed, check


def test_every_rule_has_an_id_a_severity_a_category_one_check_and_a_reason():
    ids = []
    for feed, check in _all_checks():
        assert feed in FEED_SPECS, feed
        assert check["id"].startswith(feed + "."), check["id"]
        assert check["severity"] in ("error", "warn"), check["id"]
        assert check["category"] in ("conformance", "completeness", "plausibility"), check["id"]
        assert len(KINDS & set(check)) == 1, check["id"]
        assert check["note"].strip(), check["id"]
        ids.append(check["id"])
    assert len(ids) == len(set(ids))


def test_every_column_a_rule_names_is_a_column_of_the_feeds_table():
    for feed, check in _all_checks():
        column = gates._column(check)
        if column:
            assert column in FEED_SPECS[feed].table_columns, check["id"]


def test_the_hospital_feed_refuses_an_episode_before_its_admission():
    rule = next(c for f, c in _all_checks() if c["id"] == "apc.episode_starts_after_admission")
    assert rule["severity"] == "error" and rule["rows_where"] == "epistart < admidate"
    assert gates.has_suite("apc") and not gates.has_suite("ref_population")


def test_only_an_error_fails_the_gate_and_the_summary_names_rows_not_values():
    warn = CheckResult("apc.x", "plausibility", "warn", "failed", "why", 3, 10, "no row", "3", [2, 5])
    error = CheckResult("apc.y", "plausibility", "error", "failed", "because", 1, 10, "no row", "1", [7])
    skipped = CheckResult("apc.z", "completeness", "error", "not_applicable", "n/a", None, 10)
    assert GateOutcome("apc", [warn, skipped]).passed
    outcome = GateOutcome("apc", [warn, error, skipped])
    assert not outcome.passed
    text = outcome.summary()
    assert "1 failed" not in text and "2 failed, 1 not applicable" in text
    assert "FAILED [error] apc.y: because" in text and "example rows (1 = first data row): 7" in text
