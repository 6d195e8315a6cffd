"""Coverage from the rows: a sender's loads join into unbroken stretches, a month no load covers is a gap; and the
volume rule compares a file with the previous one month for month (reports/coverage.py, gates.months_covered)."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pophealth.quality.gates import months_covered
from pophealth.reports.coverage import gaps, stretches

D = date.fromisoformat


def test_monthly_files_join_into_one_stretch():
    months = [
        (D("2024-04-01"), D("2024-04-30")),
        (D("2024-05-01"), D("2024-05-31")),
        (D("2024-06-01"), D("2024-06-30")),
    ]
    assert stretches(reversed(months)) == [(D("2024-04-01"), D("2024-06-30"))]


def test_year_to_date_files_overlap_into_one_stretch():
    ytd = [
        (D("2024-04-01"), D("2024-04-30")),
        (D("2024-04-01"), D("2024-05-31")),
        (D("2024-04-01"), D("2025-03-31")),
        (D("2025-04-01"), D("2025-04-30")),
    ]
    assert stretches(ytd) == [(D("2024-04-01"), D("2025-04-30"))]


def test_a_missing_month_is_a_gap():
    parts = stretches([(D("2024-04-01"), D("2024-06-30")), (D("2024-08-01"), D("2024-09-30"))])
    assert parts == [(D("2024-04-01"), D("2024-06-30")), (D("2024-08-01"), D("2024-09-30"))]
    assert gaps(parts) == [(D("2024-07-01"), D("2024-07-31"))]


def test_an_annual_file_inside_a_longer_one_adds_nothing():
    assert stretches([(D("2023-07-01"), D("2025-06-30")), (D("2024-04-01"), D("2025-03-31"))]) == [
        (D("2023-07-01"), D("2025-06-30"))
    ]


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 60)), max_size=12))
def test_the_stretches_cover_exactly_the_days_of_the_loads_and_never_touch(raw):
    start = D("2024-01-01")
    loads = [(start + timedelta(days=a), start + timedelta(days=a + n)) for a, n in raw]
    days = {load[0] + timedelta(days=i) for load in loads for i in range((load[1] - load[0]).days + 1)}
    parts = stretches(loads)
    assert {p[0] + timedelta(days=i) for p in parts for i in range((p[1] - p[0]).days + 1)} == days
    for before, after in zip(parts, parts[1:], strict=False):
        assert after[0] > before[1] + timedelta(days=1)  # a day apart at least: otherwise they would be one
    assert all(not any(g[0] <= day <= g[1] for day in days) for g in gaps(parts))


def test_months_covered_counts_calendar_months_and_a_snapshot_is_none():
    assert months_covered(D("2025-03-01"), D("2025-03-31")) == 1
    assert months_covered(D("2024-04-01"), D("2025-03-31")) == 12
    assert months_covered(D("2024-04-01"), D("2024-09-30")) == 6
    assert months_covered(D("2025-09-30"), D("2025-09-30")) is None  # a register snapshot: compared whole
    assert months_covered(None, None) is None
