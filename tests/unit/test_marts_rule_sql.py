"""A marts rule's SQL runs on every PostgreSQL the platform supports: the embedded default's 16 and Debian 12's 15
(the cluster's). Great Expectations leaves {batch} unaliased in a query with a JOIN, and PostgreSQL 15 refuses a
subquery in FROM without an alias, so such a rule must alias every {batch} (found when the cluster's marts gate
could not evaluate two rules that passed on 16)."""

from __future__ import annotations

import pytest

from pophealth.quality.rules import marts_query_problem, marts_rules

KEY = ["metric_code"]


@pytest.mark.parametrize(
    "query, problem",
    [
        ("SELECT metric_code FROM {batch} WHERE value < 0", None),  # no JOIN: Great Expectations aliases it
        ("SELECT metric_code FROM {batch} AS b JOIN {batch} AS c ON b.x = c.x", None),
        ("SELECT metric_code FROM {batch} b JOIN {batch} c ON b.x = c.x", None),
        (
            "SELECT metric_code FROM {batch} WHERE x IN (SELECT a.x FROM {batch} AS a JOIN {batch} AS c ON a.x = c.x)",
            "without an alias",
        ),
        ("SELECT 1 FROM (SELECT x FROM {batch}) AS p CROSS JOIN (SELECT y FROM {batch} AS b) AS q", "without an alias"),
        ("SELECT 1 FROM {batch} AS b CROSS JOIN {batch} WHERE true", "without an alias"),
    ],
)
def test_a_rule_with_a_join_aliases_every_batch(query, problem):
    found = marts_query_problem(query, KEY, None)
    assert (found is None) if problem is None else (problem in found), found


def test_every_marts_rule_is_well_formed():
    assert marts_rules().rules  # marts_rules() refuses a malformed file, naming what is wrong
