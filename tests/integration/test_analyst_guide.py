"""The analyst's guide cannot rot: every ```sql example in docs/analyst-guide.md runs as the `analyst` role on a
generated world, returns rows, and has exactly the columns its "Returns:" line names; and the examples whose answer
the generator knows give the answer key's numbers.

The world is the end-to-end one (conftest.world: Mid and South Essex's three councils, loaded through Airflow),
where every example returns rows.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pophealth.warehouse.db import parse_url

from .conftest import REPO

pytestmark = pytest.mark.integration

GUIDE = REPO / "docs" / "analyst-guide.md"


@dataclass(frozen=True)
class Example:
    title: str
    sql: str
    columns: tuple[str, ...]


def examples(text: str) -> list[Example]:
    """Each ```sql block, the section it is in, and the backticked column names of the "Returns:" paragraph after it."""
    found = []
    for match in re.finditer(r"```sql\n(.*?)\n```\n+(.*?)(?:\n\n|\Z)", text, re.S):
        title = re.findall(r"^## (.+)$", text[: match.start()], re.M)[-1]
        returns = match.group(2)
        assert returns.startswith("Returns:"), f"{title}: say what the query returns, after the block"
        found.append(Example(title, match.group(1), tuple(re.findall(r"`([a-z_0-9]+)`", returns.split(":", 1)[1]))))
    return found


@pytest.fixture(scope="module")
def warehouse(world):
    """The end-to-end world (Mid and South Essex, three councils, 2,000 people, loaded through Airflow): a smaller
    world has trusts with no admission in some months, and a month no trust's file covers is rightly not
    computed, so the guide's trend would have holes that are the world's, not the guide's."""
    return world.url(), world.answer_key


def as_analyst(url: str, query: str) -> tuple[list[str], list[tuple]]:
    with psycopg.connect(parse_url(url).with_user("analyst").url(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("analyst",)
        cursor = conn.execute(query)
        return [c.name for c in cursor.description], cursor.fetchall()


def answers(answer_key: Path, name: str) -> list[dict[str, str]]:
    with (answer_key / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


GUIDE_EXAMPLES = examples(GUIDE.read_text())


def test_the_guide_has_the_examples_the_issue_asks_for():
    titles = " | ".join(e.title for e in GUIDE_EXAMPLES)
    for subject in ("risk tiers by locality", "trend", "fall known to social care", "Delayed discharges by month"):
        assert subject in titles
    assert all(e.columns for e in GUIDE_EXAMPLES)


@pytest.mark.parametrize("example", GUIDE_EXAMPLES, ids=[e.title for e in GUIDE_EXAMPLES])
def test_every_example_runs_as_the_analyst_and_returns_the_columns_it_promises(warehouse, example):
    url, _ = warehouse
    columns, rows = as_analyst(url, example.sql)
    assert tuple(columns) == example.columns
    assert rows, f"{example.title}: no rows on the test world"


def example_titled(start: str) -> Example:
    return next(e for e in GUIDE_EXAMPLES if e.title.split(". ", 1)[1].startswith(start))


def test_the_metric_trend_is_the_answer_keys_month_by_month(warehouse):
    url, answer_key = warehouse
    _, rows = as_analyst(url, example_titled("A metric's trend").sql)
    expected = [
        (r["period_start"], int(r["numerator"]), int(r["denominator"]), Decimal(r["value"]))
        for r in answers(answer_key, "metrics.csv")
        if (r["metric_code"], r["period_type"], r["geography_level"]) == ("emergency_admissions", "month", "area")
    ]
    assert [(str(month), int(n), int(d), v) for month, n, d, v in rows] == sorted(expected)


def test_the_falls_of_people_known_to_social_care_are_the_answer_keys(warehouse):
    url, answer_key = warehouse
    _, rows = as_analyst(url, example_titled("The people with a fall").sql)
    cohort = {
        r["measure"]: int(r["value"])
        for r in answers(answer_key, "cohorts.csv")
        if r["cohort"] == "falls_admissions" and not r["key"]
    }
    assert len(rows) == cohort["known_to_social_care_before"] > 0


def test_the_delayed_discharges_by_month_add_up_to_the_answer_key(warehouse):
    url, answer_key = warehouse
    _, rows = as_analyst(url, example_titled("Delayed discharges by month").sql)
    cohort = {
        r["measure"]: int(r["value"])
        for r in answers(answer_key, "cohorts.csv")
        if r["cohort"] == "delayed_discharges" and not r["key"]
    }
    assert sum(r[1] for r in rows) == cohort["spells"]
    assert sum(r[2] for r in rows) == cohort["days_delayed"]
    assert sum(r[4] for r in rows) == cohort["known_to_social_care"]
