"""Fitting the risk model: a logistic regression, kept as a versioned dbt seed so that anyone can read it.

`pophealth fit-risk-model` reads the fitting sample of `intermediate.int_risk_history` (the features of
people on the register 15 months before the as-of date, and whether they had an emergency admission in the
12 months after), fits one coefficient per `term_` column (the terms are defined once, in the dbt macro
`risk_predictors`), and appends the result as a new `model_version` to
`dbt_project/seeds/risk_model_coefficient.csv`. The marts use the highest version; the evaluation mart
scores it on other people at a later date.

The fit is plain iteratively reweighted least squares with a small ridge penalty (so that a term nobody in
a small sample has, such as living in a care home, does not run off to infinity); no statistics package is
needed for a model of ten terms.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from pophealth import config
from pophealth.warehouse import db

RIDGE = 1.0  # penalty on the squared coefficients (not the intercept), in units of one person
MAX_ITERATIONS = 50
TOLERANCE = 1e-8
SEED_COLUMNS = ("model_version", "term", "coefficient", "fitted_as_of", "fitted_on")


class FitFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class FittedModel:
    terms: tuple[str, ...]  # "intercept" first
    coefficients: tuple[float, ...]
    fitted_as_of: date
    people: int
    outcomes: int
    c_statistic: float  # on the fitting sample itself (the evaluation mart has the honest one)


def fit_logistic(features: np.ndarray, outcome: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Coefficients (intercept first) of a ridge-penalised logistic regression, by Newton-Raphson."""
    x = np.column_stack([np.ones(len(features)), features])
    beta = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], ridge)
    penalty[0] = 0.0
    for _ in range(MAX_ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (outcome - p) - penalty * beta
        hessian = (x.T * (p * (1 - p))) @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if np.max(np.abs(step)) < TOLERANCE:
            return beta
    raise FitFailed(f"the risk model did not converge in {MAX_ITERATIONS} iterations")


def c_statistic(score: np.ndarray, outcome: np.ndarray) -> float:
    """The area under the ROC curve, by the Mann-Whitney rank formula with mid-ranks for ties."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    positives = outcome.astype(bool)
    n1, n0 = positives.sum(), (~positives).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fit_from_warehouse() -> FittedModel:
    with db.connect() as conn:
        columns = [
            row[0]
            for row in conn.execute(
                """SELECT column_name FROM information_schema.columns
               WHERE table_schema = 'intermediate' AND table_name = 'int_risk_history' AND column_name LIKE 'term\\_%'
               ORDER BY ordinal_position"""
            ).fetchall()
        ]
        if not columns:
            raise FitFailed("intermediate.int_risk_history is missing: build the marts first (pophealth run)")
        rows = conn.execute(
            f"""SELECT as_of_date, had_emergency_admission_next_12m::int, {", ".join(columns)}
                FROM intermediate.int_risk_history history
                -- model development is a secondary use: people with an opt-out in force are not in it
                JOIN intermediate.int_secondary_use_id ids ON ids.transit_key = history.person_key
                WHERE sample = 'fit'"""
        ).fetchall()
    if not rows:
        raise FitFailed(
            "the fitting sample is empty: the warehouse holds nobody on the register 15 months before the as-of date"
        )
    outcome = np.array([r[1] for r in rows], dtype=float)
    features = np.array([r[2:] for r in rows], dtype=float)
    if outcome.sum() == 0 or outcome.sum() == len(outcome):
        raise FitFailed("the fitting sample has no variation in the outcome: it cannot be fitted")
    beta = fit_logistic(features, outcome)
    score = np.column_stack([np.ones(len(features)), features]) @ beta
    return FittedModel(
        terms=("intercept", *(c.removeprefix("term_") for c in columns)),
        coefficients=tuple(float(b) for b in beta),
        fitted_as_of=rows[0][0],
        people=len(rows),
        outcomes=int(outcome.sum()),
        c_statistic=c_statistic(score, outcome),
    )


def seed_path() -> Path:
    return config.paths().dbt_project_dir / "seeds" / "risk_model_coefficient.csv"


def append_to_seed(model: FittedModel, path: Path | None = None) -> int:
    """Add the model as the next version of the seed; returns its version."""
    path = path or seed_path()
    with path.open(newline="") as handle:
        existing = list(csv.DictReader(handle))
    version = max((int(r["model_version"]) for r in existing), default=0) + 1
    fitted_on = (
        f"{model.people} people on the register at {model.fitted_as_of}, {model.outcomes} with an "
        f"emergency admission in the next 12 months; c-statistic on them {model.c_statistic:.3f}"
    )
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for term, coefficient in zip(model.terms, model.coefficients, strict=False):
            writer.writerow([version, term, f"{coefficient:.6f}", model.fitted_as_of.isoformat(), fitted_on])
    return version
