"""The 95% intervals of the board report, against values worked by hand and published tables.

Wilson: (x + z²/2) / (n + z²) ± z·sqrt(n·p·(1-p) + z²/4) / (n + z²), z = 1.96. Exact Poisson (Garwood):
the 2.5th percentile of chi-squared on 2x degrees of freedom over 2, and the 97.5th on 2x + 2 over 2 — the
table values of Breslow and Day (1987, table 2.7) and of the Public Health England technical guide
(Confidence intervals, 2018): 0 -> (0, 3.689), 1 -> (0.0253, 5.572), 10 -> (4.795, 18.390),
100 -> (81.364, 121.627).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pophealth.reports.intervals import byar, garwood, interval, scale_of, wilson


def test_wilson_of_none_of_ten_starts_at_zero_and_is_not_zero_wide():
    # x = 0: the upper bound is z² / (n + z²) = 3.8415 / 13.8415.
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.27753, abs=1e-5)


def test_wilson_of_half_of_ten_is_symmetric():
    # (5 + 1.9207) / 13.8415 = 0.50000 ± 1.96 · sqrt(2.5 + 0.9604) / 13.8415 = ± 0.26341
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)


def test_wilson_of_the_issue_reablement_quarter():
    # 29 of 32 at home after 91 days (issue 21): 90.6%, 95% interval 75.8% to 96.8%.
    assert interval(29, 32, "percent") == pytest.approx((75.782, 96.760), abs=1e-3)


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, (0.0, 3.6889)), (1, (0.0253, 5.5716)), (10, (4.7954, 18.3904)), (100, (81.3640, 121.6268))],
)
def test_exact_poisson_matches_the_published_table(count, expected):
    assert garwood(count) == pytest.approx(expected, abs=1e-4)


def test_byar_is_close_to_exact_above_ten_events():
    # 10 · (1 - 1/90 - 1.96 / (3·sqrt 10))³ = 4.7874; 11 · (1 - 1/99 + 1.96 / (3·sqrt 11))³ = 18.3915
    assert byar(10) == pytest.approx((4.7874, 18.3915), abs=1e-4)
    # x = 0: the upper bound is 1 · (1 - 1/9 + 1.96 / 3)³ = 1.54222³ = 3.6680
    assert byar(0) == (0.0, pytest.approx(3.6680, abs=1e-4))


def test_a_rate_interval_is_the_count_interval_over_the_denominator_in_the_unit():
    # 10 admissions in 100,000 people: 10.0 per 100,000, 95% interval 4.8 to 18.4.
    assert interval(10, 100_000, "per 100000 population") == pytest.approx((4.7954, 18.3904), abs=1e-4)
    assert interval(10, 200_000, "per 100,000 population aged 65+") == pytest.approx((2.3977, 9.1952), abs=1e-4)


@pytest.mark.parametrize(
    ("numerator", "denominator", "unit"),
    [
        (None, 100, "percent"),  # suppressed: nothing to compute
        (5, 0, "per 100000 population"),  # no population estimate
        (5, None, "percent"),
        (35, 30, "percent"),  # rounded counts crossed: not a proportion
        (5, 100, "days"),  # neither a percentage nor a rate
    ],
)
def test_no_interval_where_none_can_be_computed(numerator, denominator, unit):
    assert interval(numerator, denominator, unit) is None


def test_the_unit_says_how_the_value_is_scaled():
    assert scale_of("percent") == ("percent", 100)
    assert scale_of("per 100000 population aged 65+") == ("rate", 100_000)
    assert scale_of("delayed days per day per 100,000") == ("rate", 100_000)
    assert scale_of("people") is None


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_a_wilson_interval_holds_its_proportion_and_stays_in_0_1(case):
    x, n = case
    low, high = wilson(x, n)
    assert 0 <= low <= x / n <= high <= 1 and low < high


@given(st.integers(0, 100_000))
def test_an_exact_poisson_interval_holds_its_count(count):
    low, high = garwood(count)
    assert 0 <= low <= count < high
