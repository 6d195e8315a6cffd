"""The risk model's arithmetic: the c-statistic, the logistic fit and the versioned seed it writes."""

from __future__ import annotations

import csv
import itertools
from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pophealth.marts.risk_model import FittedModel, append_to_seed, c_statistic, fit_logistic


def test_c_statistic_of_a_hand_worked_case():
    # Positives scored 0.9 and 0.4; negatives 0.8, 0.4 and 0.1. Of the 6 (positive, negative) pairs the
    # positive scores higher in 0.9>0.8, 0.9>0.4, 0.9>0.1, 0.4>0.1 (4), ties in 0.4=0.4 (a half): 4.5 / 6.
    score = np.array([0.9, 0.8, 0.4, 0.4, 0.1])
    outcome = np.array([1, 0, 1, 0, 0])
    assert c_statistic(score, outcome) == pytest.approx(0.75)


def test_c_statistic_is_one_for_a_perfect_ranking_and_a_half_for_none():
    assert c_statistic(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
    assert c_statistic(np.array([1.0, 1.0, 1.0, 1.0]), np.array([1, 0, 1, 0])) == 0.5


def test_c_statistic_is_undefined_without_both_outcomes():
    assert np.isnan(c_statistic(np.array([0.1, 0.2]), np.array([0, 0])))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_c_statistic_equals_counting_every_pair(people):
    scores = np.array([float(s) for s, _ in people])
    outcomes = np.array([int(o) for _, o in people])
    positives = [s for s, o in people if o]
    negatives = [s for s, o in people if not o]
    if not positives or not negatives:
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    assert c_statistic(scores, outcomes) == pytest.approx(wins / (len(positives) * len(negatives)))


def test_the_fit_recovers_the_coefficients_that_made_the_data():
    rng = np.random.default_rng(7)
    features = np.column_stack([rng.integers(0, 2, 40_000), rng.normal(size=40_000)])
    truth = np.array([-2.0, 1.0, 0.5])
    p = 1 / (1 + np.exp(-(truth[0] + features @ truth[1:])))
    outcome = (rng.random(40_000) < p).astype(float)
    assert fit_logistic(features, outcome) == pytest.approx(truth, abs=0.06)


def test_the_ridge_keeps_a_term_nobody_has_at_zero_and_finite():
    # No one in the sample has the second term (say, living in a care home): without the penalty its
    # coefficient has no maximum; with it, it stays at zero.
    rng = np.random.default_rng(1)
    features = np.column_stack([rng.integers(0, 2, 500), np.zeros(500)])
    outcome = (rng.random(500) < 0.2).astype(float)
    beta = fit_logistic(features, outcome)
    assert np.all(np.isfinite(beta)) and beta[2] == 0.0


def test_a_fit_is_appended_to_the_seed_as_the_next_version(tmp_path):
    seed = tmp_path / "risk_model_coefficient.csv"
    seed.write_text(
        "model_version,term,coefficient,fitted_as_of,fitted_on\n"
        "1,intercept,-3.5,2024-06-30,by hand\n1,hfrs,0.05,2024-06-30,by hand\n"
    )
    model = FittedModel(
        terms=("intercept", "hfrs"),
        coefficients=(-3.1234567, 0.04),
        fitted_as_of=date(2024, 6, 30),
        people=100,
        outcomes=9,
        c_statistic=0.7,
    )
    assert append_to_seed(model, seed) == 2
    with seed.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model_version"], r["term"], r["coefficient"]) for r in rows[2:]] == [
        ("2", "intercept", "-3.123457"),
        ("2", "hfrs", "0.040000"),
    ]
    assert "100 people" in rows[2]["fitted_on"] and "9 with an emergency admission" in rows[2]["fitted_on"]
