"""The board report, read the way a board member reads it: drawn by a real browser from hand-made reporting tables.

The four `reporting` tables are created here by hand, with numbers chosen so that each rule shows: the latest
as-of date, quarter, financial year and period are the ones reported; a suppressed count reads as suppressed
and never as a number; zero reads 0; rates are rounded half up to 1 decimal; counts have thousands
separators; and a place name with markup in it stays text. The page goes through `pophealth board-report`
into headless Chromium, whose DOM after the page's script ran is what the assertions read.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .chromium import dump_dom, require_chromium
from .conftest import PURPOSE_KEYS_ENV

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEY = "3c" * 32
SUPPRESSED = "suppressed (1–7)"

AREA = ("area", "E10000012", "Essex")
CHELMSFORD = ("locality", "E07000070", "Chelmsford")
# Markup in a name must come out as text: the data is treated as untrusted.
COLCHESTER = ("locality", "E07000071", "Colchester & <i>Tendring</i>")
PLACES = (AREA, CHELMSFORD, COLCHESTER)
# The metrics also have a council (contract v2's local_authority level): the charts show the area and the
# councils, the tables every place, and the council has its own page.
THURROCK = ("local_authority", "E06000034", "Thurrock")
BCF_PLACES = (AREA, THURROCK, CHELMSFORD, COLCHESTER)

MONTHS = [f"2025-{m:02d}-01" for m in range(4, 10)]  # April to September 2025
MONTH_ENDS = ["2025-04-30", "2025-05-31", "2025-06-30", "2025-07-31", "2025-08-31", "2025-09-30"]

METRICS = {
    # code: (name, unit, the places it is reported for)
    "emergency_admissions": ("Emergency admissions", "per 100,000", BCF_PLACES),
    "care_home_admissions_65": ("Permanent admissions to care homes, 65+", "per 100,000", BCF_PLACES),
    "reablement_91_days_65": ("At home 91 days after reablement, 65+", "percent", BCF_PLACES),
    "delayed_discharge_days": ("Delayed discharge days", "delayed days per day per 100,000", (AREA,)),
    # As the seed writes it: the page says "per 100,000".
    "falls_admissions_65": ("Emergency admissions after a fall, 65+", "per 100000 population aged 65+", BCF_PLACES),
    "emergency_readmissions_30d": ("Emergency readmissions within 30 days", "percent", BCF_PLACES),
}
# Readmissions' September and July-September have follow-up past the as-of date (30 September): provisional.
PROVISIONAL = {
    ("emergency_readmissions_30d", "month", "2025-09-01"): "2025-10-29",
    ("emergency_readmissions_30d", "quarter", "2025-07-01"): "2025-10-29",
}
SUPPRESSED_MONTH = ("emergency_readmissions_30d", COLCHESTER[1], "2025-07-01")
ZERO_MONTH = ("care_home_admissions_65", COLCHESTER[1], "2025-08-01")
# The area's own May falls are suppressed: a gap in its trend line, listed under the chart.
SUPPRESSED_AREA_MONTH = ("falls_admissions_65", AREA[1], "2025-05-01")

# The 65-74 band's twelve codes by rank; only the first ten are reported.
TOP_65_74 = ["J18", "I50", "J44", "N39", "R07", "S72", "I48", "R06", "E87", "K92", "A41", "R55"]

DDL = """
CREATE SCHEMA IF NOT EXISTS reporting;
CREATE TABLE reporting.risk_pyramid (
    as_of_date date, geography_level text, geography_code text, geography_name text, risk_tier text,
    tier_order int, people bigint, is_suppressed boolean);
CREATE TABLE reporting.bcf_metrics (
    metric_code text, metric_name text, unit text, period_type text, period_start date, period_end date,
    geography_level text, geography_code text, geography_name text, numerator numeric, denominator numeric,
    value numeric, is_suppressed boolean, is_final boolean, final_on date);
CREATE TABLE reporting.cohort_summary (
    cohort text, period_type text, period_start date, period_end date, geography_level text,
    geography_code text, geography_name text, measure text, measure_label text, measure_order int,
    count bigint, is_suppressed boolean);
CREATE TABLE reporting.admission_reasons (
    period_start date, period_end date, age_band text, primary_diagnosis_code text,
    primary_diagnosis_chapter text, admissions bigint, is_suppressed boolean, rank_in_age_band int);
CREATE TABLE reporting.period_coverage (
    period_type text, period_start date, period_end date, is_computed boolean, reason_not_computed text);
CREATE SCHEMA IF NOT EXISTS reference;
CREATE TABLE reference.icd10_category (code text, title text);
CREATE TABLE reference.bcf_plan (
    metric_code text, geography_code text, period_start date, period_end date, plan_value numeric);
-- The site planned emergency admissions for Jul-Sep 2025 only; for the other metrics: no plan supplied.
INSERT INTO reference.bcf_plan VALUES
    ('emergency_admissions', 'E10000012', '2025-07-01', '2025-09-30', 650.04),
    ('emergency_admissions', 'E06000034', '2025-07-01', '2025-09-30', 1.0);
-- March 2025 is not computed (a trust sent no file for it): the report says so, with why.
INSERT INTO reporting.period_coverage VALUES
    ('month', '2025-02-01', '2025-02-28', true, null),
    ('month', '2025-03-01', '2025-03-31', false,
     'not wholly covered: hospital data from RDE covers 2024-04-01 to 2025-02-28 and 2025-04-01 to 2025-09-30'),
    ('quarter', '2025-01-01', '2025-03-31', false,
     'not wholly covered: hospital data from RDE covers 2024-04-01 to 2025-02-28 and 2025-04-01 to 2025-09-30');
"""

# The area's quarter a year before its latest final one, chosen so each direction shows (the area's latest
# final quarter is Jul-Sep 2025 at 684.21, reablement's 82.25; readmissions' is Apr-Jun 2025 at 999.99).
YEAR_EARLIER = {
    "emergency_admissions": ("2024-07-01", "2024-09-30", Decimal("700.00")),  # 684.2 < 700.0, lower is better
    "care_home_admissions_65": ("2024-07-01", "2024-09-30", Decimal("684.24")),  # shown 684.2 both: same
    "reablement_91_days_65": ("2024-07-01", "2024-09-30", Decimal("90.00")),  # 82.3 < 90.0, higher is better
    "delayed_discharge_days": ("2024-07-01", "2024-09-30", Decimal("600.00")),  # 684.2 > 600.0: worse
    "falls_admissions_65": ("2024-07-01", "2024-09-30", None),  # suppressed: not comparable
    "emergency_readmissions_30d": ("2024-04-01", "2024-06-30", Decimal("1000.50")),  # 999.99 < 1,000.5
}

TIERS = (("very_high", 1), ("high", 2), ("moderate", 3), ("low", 4))


def month_value(metric_index: int, place_index: int, month_index: int) -> Decimal:
    """A distinct value per metric, place and month, with two decimals so the rounding shows."""
    return Decimal(f"{20 + 100 * metric_index + 10 * place_index + month_index}.{(37 * month_index + 3) % 100:02d}")


def risk_rows():
    rows = []
    # An older as-of date the report must not show.
    for (tier, order), people in zip(TIERS, (30, 335, 1355, 5060), strict=False):
        rows.append(("2025-06-30", *AREA, tier, order, people, False))
    for (tier, order), people in zip(TIERS, (35, 340, 1360, 5065), strict=False):
        rows.append(("2025-09-30", *AREA, tier, order, people, False))
    for (tier, order), people in zip(TIERS, (None, 175, 690, 2530), strict=False):
        rows.append(("2025-09-30", *CHELMSFORD, tier, order, people, people is None))
    for (tier, order), people in zip(TIERS, (0, 165, 670, 2535), strict=False):
        rows.append(("2025-09-30", *COLCHESTER, tier, order, people, False))
    return rows


def bcf_rows():
    rows = []
    final = []
    for m, (code, (name, unit, places)) in enumerate(METRICS.items()):
        for p, place in enumerate(places):
            for i, (start, end) in enumerate(zip(MONTHS, MONTH_ENDS, strict=False)):
                value = month_value(m, p, i)
                numerator, suppressed = 100 + i, False
                if (code, place[1], start) in (SUPPRESSED_MONTH, SUPPRESSED_AREA_MONTH):
                    value, numerator, suppressed = None, None, True
                if (code, place[1], start) == ZERO_MONTH:
                    value, numerator = Decimal(0), 0
                rows.append((code, name, unit, "month", start, end, *place, numerator, 150000, value, suppressed))
            # Two quarters and two financial years: the later of each is reported.
            rows.append(
                (code, name, unit, "quarter", "2025-04-01", "2025-06-30", *place, 999, 150000, Decimal("999.99"), False)
            )
            rows.append(
                (
                    code,
                    name,
                    unit,
                    "financial_year",
                    "2023-04-01",
                    "2024-03-31",
                    *place,
                    888,
                    150000,
                    Decimal("888.88"),
                    False,
                )
            )
            quarter = (1235 + 10 * p, 180500, Decimal("684.21") + p, False)
            if code == "falls_admissions_65" and place == COLCHESTER:
                quarter = (None, 180500, None, True)
            if code == "care_home_admissions_65" and place == COLCHESTER:
                quarter = (0, 180500, Decimal(0), False)
            if code == "reablement_91_days_65" and place == AREA:
                quarter = (1645, 2000, Decimal("82.25"), False)  # half up: 82.3, where half-even gives 82.2
            if code == "reablement_91_days_65" and place != AREA:  # the issue's 29 of 32, and two more
                quarter = {
                    THURROCK: (29, 32, Decimal("90.63"), False),
                    CHELMSFORD: (150, 180, Decimal("83.33"), False),
                    COLCHESTER: (12, 15, Decimal("80.00"), False),
                }[place]
            rows.append((code, name, unit, "quarter", "2025-07-01", "2025-09-30", *place, *quarter))
            # 1,000 of the area's residents live in LSOAs of no council: Thurrock's population is 180,000
            population = 180000 if (code, place) == ("emergency_admissions", THURROCK) else 181000
            rows.append(
                (
                    code,
                    name,
                    unit,
                    "financial_year",
                    "2024-04-01",
                    "2025-03-31",
                    *place,
                    4520 + p,
                    population,
                    Decimal("2497.24"),
                    False,
                )
            )
    for code, (start, end, value) in YEAR_EARLIER.items():
        name, unit, _places = METRICS[code]
        rows.append(
            (
                code,
                name,
                unit,
                "quarter",
                start,
                end,
                *AREA,
                None if value is None else 1000,
                150000,
                value,
                value is None,
            )
        )
    for row in rows:
        final_on = PROVISIONAL.get((row[0], row[3], row[4]))
        final.append((*row, final_on is None, final_on or row[5]))
    return final


COHORT_PERIODS = [
    ("financial_year", "2023-04-01", "2024-03-31"),  # an older year: not reported
    ("quarter", "2023-10-01", "2023-12-31"),  # before the latest year: not reported
    ("financial_year", "2024-04-01", "2025-03-31"),
    ("quarter", "2024-10-01", "2024-12-31"),
    ("quarter", "2025-01-01", "2025-03-31"),
    ("quarter", "2025-04-01", "2025-06-30"),
]


def cohort_rows():
    rows = []
    for c, cohort in enumerate(("delayed_discharges", "falls_admissions", "care_home_after_hospital")):
        for k, (period_type, start, end) in enumerate(COHORT_PERIODS):
            for p, place in enumerate(PLACES):
                # Inserted part before whole, so the report's order can only come from measure_order.
                for measure, label, order, base in (
                    ("known_to_social_care", "Known to social care", 2, 400),
                    ("people", "People", 1, 1000),
                ):
                    count, suppressed = base + 100 * c + 10 * k + p * 5, False
                    if (cohort, start, place, measure) == (
                        "falls_admissions",
                        "2024-04-01",
                        COLCHESTER,
                        "known_to_social_care",
                    ):
                        count, suppressed = None, True
                    if (cohort, start, place, measure) == (
                        "care_home_after_hospital",
                        "2025-04-01",
                        CHELMSFORD,
                        "people",
                    ):
                        count = 0
                    rows.append((cohort, period_type, start, end, *place, measure, label, order, count, suppressed))
    return rows


# A cohort reported for the area and twelve localities: split into tables of at most six places (the area
# first in each), so that none runs off the page.
MANY_PLACES = [("locality", f"E0200{n:04d}", f"Locality number {n} with a long name") for n in range(1, 13)]


def many_places_rows():
    return [
        (
            "many_places",
            "financial_year",
            "2024-04-01",
            "2025-03-31",
            *place,
            "people",
            "People",
            1,
            1000 + 5 * p,
            False,
        )
        for p, place in enumerate([AREA, *MANY_PLACES])
    ]


def admission_rows():
    rows = []
    latest = ("2024-10-01", "2025-09-30")
    # Inserted in reverse so that the report's order can only come from the rank.
    for rank, code in reversed(list(enumerate(TOP_65_74, start=1))):
        rows.append((*latest, "65-74", code, "Some chapter", 470 - 35 * rank, False, rank))
    rows += [
        (*latest, "85+", "S72", "XIX Injury", 215, False, 1),
        (*latest, "85+", "J18", "X Respiratory", 1180, False, 2),  # ranked 2nd on purpose: rank wins
        (*latest, "85+", "R55", "XVIII Symptoms", None, True, 3),
        (*latest, "18-64", "R10", "XVIII Symptoms", 2045, False, 1),
        (*latest, "18-64", "U99", "XXII Special purposes", 0, False, 2),  # not in ICD-10: no title
        ("2023-10-01", "2024-09-30", "65-74", "Z99", "Old period", 9999, False, 1),
    ]
    return rows


# ---------------------------------------------------------------------------------------------------
# A small DOM from html.parser, enough to find elements by tag, id, class and attribute.

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def own_text(self) -> str:
        return "".join(c for c in self.children if isinstance(c, str))

    def elements(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.elements()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list[Node]:
        found = []
        for node in self.elements():
            if tag and node.tag != tag:
                continue
            if cls and cls not in (node.attrs.get("class") or "").split():
                continue
            if all(node.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(node)
        return found

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.elements() if n.attrs.get("id") == element_id]
        assert len(found) == 1, f"expected one element with id {element_id!r}, found {len(found)}"
        return found[0]


class DomBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {k: (v or "") for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(page: str) -> Node:
    builder = DomBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def cells(row: Node) -> list[str]:
    return [c.text().strip() for c in row.children if isinstance(c, Node) and c.tag in ("th", "td")]


def body_rows(table: Node) -> list[Node]:
    return table.find_all("tbody")[0].find_all("tr")


# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory, request):
    require_chromium("the board report")
    import psycopg

    home = tmp_path_factory.mktemp("board-report")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POPHEALTH_", "AIRFLOW"))}
    env.update(
        POPHEALTH_HOME=str(home / "state"),
        POPHEALTH_LINKAGE_KEY=KEY,
        POPHEALTH_VAULT_PUBLIC_KEY=KEY,
        PYTHONPATH=str(REPO),
        **PURPOSE_KEYS_ENV,
    )

    def pophealth(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pophealth.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    request.addfinalizer(lambda: pophealth("db", "stop"))
    started = pophealth("db", "url")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    url = started.stdout.strip().splitlines()[-1]
    with psycopg.connect(url) as conn:
        conn.execute(DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO reporting.risk_pyramid VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", risk_rows())
            cur.executemany(
                "INSERT INTO reporting.bcf_metrics VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                bcf_rows(),
            )
            cur.executemany(
                "INSERT INTO reporting.cohort_summary VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                cohort_rows() + many_places_rows(),
            )
            cur.executemany(
                "INSERT INTO reporting.admission_reasons VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", admission_rows()
            )
            cur.executemany("INSERT INTO reference.icd10_category VALUES (%s, %s)", list(icd10_seed().items()))

    # Without --synthetic and no demo run in this home: real data as far as the report knows, no banner.
    unmarked = home / "unmarked.html"
    plain = pophealth("board-report", "--out", str(unmarked))
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]

    out = home / "report.html"
    made = pophealth("board-report", "--out", str(out), "--synthetic")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    raw = out.read_text(encoding="utf-8")

    drawn = dump_dom(out, home / "chromium-profile")
    return {
        "raw": raw,
        "raw_dom": parse(raw),
        "dom": parse(drawn),
        "stdout": made.stdout,
        "out": out,
        "unmarked": unmarked.read_text(encoding="utf-8"),
        "home": home,
        "url": url,
    }


def test_a_warehouse_with_nothing_built_says_so_under_every_heading_the_page_links_to(report):
    """Before the first marts build: each section says which table is not built yet, and no link leads nowhere."""
    import psycopg

    from pophealth.reports.board_report import render_board_report

    with psycopg.connect(report["url"], autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS nothing_built")
        conn.execute("CREATE DATABASE nothing_built")
    with psycopg.connect(conninfo_with_dbname(report["url"], "nothing_built")) as conn:
        page = render_board_report(conn)
    links = re.findall(r"<nav><ul>(.*?)</ul></nav>", page, re.S)[0]
    for anchor in re.findall(r'href="#([^"]+)"', links):
        assert f'id="{anchor}"' in page, f"the page links to #{anchor}, which is not on it"
    for table in ("reporting.bcf_metrics", "reporting.risk_pyramid"):
        assert f"{table} has not been built yet" in page


def conninfo_with_dbname(url: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(url), "dbname": dbname})


def test_the_command_says_where_the_report_is(report):
    assert str(report["out"]) in report["stdout"]
    # The pyramid, six trends and five ranked dot plots (delayed discharge days has no places but the area).
    assert "12 charts" in report["stdout"] and "synthetic data" in report["stdout"]


def test_the_page_draws_nothing_until_the_browser_runs_it_and_fetches_nothing(report):
    raw, raw_dom = report["raw"], report["raw_dom"]
    assert "<svg" not in raw
    holders = raw_dom.find_all("div", cls="chart")
    assert len(holders) == 12 and all(not h.children for h in holders)
    # Self-contained: no external script, style sheet, image or font; the one URL is SVG's namespace name.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#)""", raw)
    assert set(re.findall(r"https?://[^\s\"'<>]+", raw)) == {"http://www.w3.org/2000/svg"}
    assert report["dom"].find_all("body")[0].attrs.get("data-charts-drawn") == "true"


def test_the_report_reads_only_the_reporting_schema():
    source = (REPO / "pophealth" / "reports" / "board_report.py").read_text()
    qualified = re.findall(r"\b(marts|raw|audit|staging|intermediate)\.(?!md\b)\w+", source)
    assert qualified == []
    # And the plan figures, published targets from a seed.
    assert set(re.findall(r"\breference\.(\w+)", source)) == {"bcf_plan", "icd10_category"}
    assert set(re.findall(r"\breporting\.(\w+)", source)) == {
        "risk_pyramid",
        "bcf_metrics",
        "cohort_summary",
        "admission_reasons",
        "period_coverage",
    }


def test_the_summary_compares_each_metric_with_a_year_earlier_and_the_plan(report):
    dom = report["dom"]
    assert dom.find_all("section")[0].attrs["id"] == "summary"  # at the top
    rows = {r.attrs["data-metric"]: cells(r) for r in body_rows(dom.by_id("table-summary"))}
    assert list(rows) == list(METRICS)
    assert rows["emergency_admissions"][1:7] == ["Jul–Sep 2025", "684.2", "Jul–Sep 2024", "700.0", "Better", "650.0"]
    assert rows["emergency_admissions"][0] == (
        "Emergency admissionsper 100,000 in the quarter (not annualised); lower is better"
    )
    assert rows["reablement_91_days_65"][0].endswith("percent; higher is better")
    assert rows["care_home_admissions_65"][5:7] == ["Same", "no plan supplied"]
    assert rows["reablement_91_days_65"][1:6] == ["Jul–Sep 2025", "82.3", "Jul–Sep 2024", "90.0", "Worse"]
    assert rows["delayed_discharge_days"][5] == "Worse"
    assert rows["falls_admissions_65"][3:6] == ["Jul–Sep 2024", SUPPRESSED, "Not comparable"]
    # Readmissions' Jul-Sep 2025 is provisional: the summary's latest final quarter is Apr-Jun.
    assert rows["emergency_readmissions_30d"][1:6] == ["Apr–Jun 2025", "1,000.0", "Apr–Jun 2024", "1,000.5", "Better"]


def test_the_page_is_written_in_templates_shipped_with_the_package():
    # The markup is in the templates, where autoescaping guards every value; the code only prepares the data.
    source = (REPO / "pophealth" / "reports" / "board_report.py").read_text()
    assert re.findall(r"<[a-z/][^\n]{0,30}", source) == []
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["pophealth.reports"] == ["templates/*"]
    shipped = {p.name for p in (REPO / "pophealth" / "reports" / "templates").iterdir()}
    assert {"board_report.html.j2", "board_report_sections.html.j2", "board_report.css", "board_report.js"} <= shipped


@pytest.mark.parametrize(
    ("code", "latest", "earlier", "expected"),
    [
        ("emergency_admissions", "10.04", "10.0", "same"),  # equal as shown to 1 decimal
        ("emergency_admissions", "10.05", "10.0", "worse"),  # 10.1 > 10.0 and lower is better
        ("reablement_91_days_65", "80.0", "79.9", "better"),
        ("falls_admissions_65", "5", None, "not comparable"),
    ],
)
def test_direction_knows_which_way_is_good(code, latest, earlier, expected):
    from pophealth.reports.board_report import direction

    assert direction(code, latest and Decimal(latest), earlier and Decimal(earlier), "percent") == expected


def test_the_periods_not_computed_are_listed_with_why(report):
    table = report["dom"].find_all("table", id="periods-not-computed-table")[0]
    why = "not wholly covered: hospital data from RDE covers 2024-04-01 to 2025-02-28 and 2025-04-01 to 2025-09-30"
    assert [cells(row) for row in body_rows(table)] == [["Jan–Mar 2025", why], ["Mar 2025", why]]  # by start
    assert "2 period(s) are not reported" in report["raw"]


def test_the_pyramid_has_four_tiers_labelled_with_the_latest_counts(report):
    svg = report["dom"].by_id("chart-pyramid-E10000012")
    bars = svg.find_all("g", cls="bar")
    assert [b.attrs["data-tier"] for b in bars] == ["very_high", "high", "moderate", "low"]
    assert [b.attrs["data-value"] for b in bars] == ["35", "340", "1360", "5065"]
    assert [b.find_all("text", cls="bar-label")[0].text() for b in bars] == ["35", "340", "1,360", "5,065"]
    assert [b.find_all("polygon") != [] for b in bars] == [True] * 4
    # 6,800 people: 0.5%, 5.0%, 20.0%, 74.5%.
    assert [b.find_all("text", cls="bar-share")[0].text() for b in bars] == [
        "0.5% of people",
        "5.0% of people",
        "20.0% of people",
        "74.5% of people",
    ]
    table = report["dom"].by_id("table-pyramid-E10000012")
    assert [cells(r)[:2] for r in body_rows(table)] == [
        ["Very high", "35"],
        ["High", "340"],
        ["Moderate", "1,360"],
        ["Low", "5,065"],
    ]


def test_tiers_by_locality_show_suppressed_as_suppressed_and_zero_as_zero(report):
    table = report["dom"].by_id("table-pyramid-localities")
    rows = {cells(r)[0]: cells(r)[1:] for r in body_rows(table)}
    assert rows == {
        "Chelmsford": [SUPPRESSED, "175", "690", "2,530"],
        "Colchester & <i>Tendring</i>": ["0", "165", "670", "2,535"],
    }
    chelmsford = table.find_all("tr", data_geography="E07000070")[0]
    assert chelmsford.find_all("td")[0].attrs.get("data-suppressed") == "true"


@pytest.mark.parametrize("code", list(METRICS))
def test_each_metric_trend_is_the_area_alone_with_the_monthly_values(report, code):
    name, unit, places = METRICS[code]
    m = list(METRICS).index(code)
    svg = report["dom"].by_id(f"chart-bcf-{code}")
    series = svg.find_all("g", cls="series")
    # The area alone: the councils have their own pages, and the places are compared in the dot plot.
    drawn = [AREA]
    assert svg.attrs["data-series"] == str(len(drawn)) and len(series) == len(drawn)
    assert [s.attrs["data-geography"] for s in series] == [p[1] for p in drawn]  # the area first
    assert [e.text() for e in svg.find_all("text", cls="legend-item")] == [p[2] for p in drawn]
    months = [
        mo for mo in MONTHS if (code, "month", mo) not in PROVISIONAL and (code, AREA[1], mo) != SUPPRESSED_AREA_MONTH
    ]  # suppressed: not drawn at all
    for place, line in zip(drawn, series, strict=False):
        p = places.index(place)
        points = line.find_all(cls="point")
        assert [pt.attrs["data-period"] for pt in points] == months
        for point in points:
            i = MONTHS.index(point.attrs["data-period"])
            key = (code, place[1], MONTHS[i])
            if key == SUPPRESSED_MONTH:
                assert point.attrs["data-suppressed"] == "true" and point.attrs["data-value"] == ""
                assert point.own_text() == "*" and SUPPRESSED in point.text()
            elif key == ZERO_MONTH:
                assert point.attrs["data-value"] == "0"
            else:
                assert Decimal(point.attrs["data-value"]) == month_value(m, p, i), (key, point.attrs)
    heading = report["dom"].by_id(f"metric-{code}")
    assert heading.find_all("h3")[0].text() == name
    assert unit.replace("100000", "100,000") in heading.find_all("p", cls="unit")[0].text()


def test_a_suppressed_month_is_listed_under_the_trend_never_drawn_in_it(report):
    dom = report["dom"]
    svg = dom.by_id("chart-bcf-falls_admissions_65")
    assert "*" not in svg.text() and svg.find_all("text", cls="point") == []
    listed = dom.by_id("not-drawn-bcf-falls_admissions_65")
    assert [li.text() for li in listed.find_all("li")] == ["Essex, May 2025"]
    assert SUPPRESSED in listed.text()
    assert dom.find_all(id="not-drawn-bcf-emergency_admissions") == []  # nothing suppressed: no list


def test_per_100000_is_written_per_100_000_and_a_quarter_rate_says_it_is_not_annualised(report):
    raw = report["raw"]
    assert "per 100000" not in raw and "per 100,000 population aged 65+" in raw
    table = report["dom"].by_id("table-bcf-emergency_admissions")
    sub_head = [c.text() for c in table.find_all("thead")[0].find_all("tr")[1].find_all("th")]
    assert sub_head == [
        "Numerator",
        "Denominator",
        "per 100,000 in the quarter (not annualised)",
        "Numerator",
        "Denominator",
        "per 100,000",
    ]
    # The monthly trend's axis says the same of a month; a percentage is a percentage in any period.
    axis = [t.text() for t in report["dom"].by_id("chart-bcf-emergency_admissions").find_all("text", cls="axis-label")]
    assert "per 100,000 in the month (not annualised)" in axis
    table = report["dom"].by_id("table-bcf-reablement_91_days_65")
    assert "not annualised" not in table.text()
    # Delayed days per day are a daily average already: nothing to annualise.
    table = report["dom"].by_id("table-bcf-delayed_discharge_days")
    assert "not annualised" not in table.text()


@pytest.mark.parametrize(
    ("code", "ranked"),
    [
        # Jul-Sep 2025: Thurrock 685.21, Chelmsford 686.21, Colchester 687.21 (684.21 + place index); highest first.
        ("emergency_admissions", [COLCHESTER, CHELMSFORD, THURROCK]),
        ("reablement_91_days_65", [THURROCK, CHELMSFORD, COLCHESTER]),  # 29/32 = 90.6, 150/180 = 83.3, 12/15 = 80.0
        ("falls_admissions_65", [CHELMSFORD, THURROCK]),  # Colchester's quarter is suppressed: listed, not drawn
    ],
)
def test_places_are_a_ranked_dot_plot_with_intervals_from_the_published_counts(report, code, ranked):
    from pophealth.reports.intervals import interval

    _name, unit, places = METRICS[code]
    svg = report["dom"].by_id(f"chart-dots-{code}")
    rows = svg.find_all("g", cls="place")
    assert svg.attrs["data-rows"] == str(len(ranked))
    assert [r.attrs["data-geography"] for r in rows] == [p[1] for p in ranked]
    assert [r.find_all("text", cls="place-name")[0].text() for r in rows] == [p[2] for p in ranked]
    counts = {THURROCK: (29, 32), CHELMSFORD: (150, 180), COLCHESTER: (12, 15)}
    for place, row in zip(ranked, rows, strict=False):
        # The quarter's published numerator, over 180,500 (reablement: its own counts).
        numerator, denominator = (
            counts[place] if code == "reablement_91_days_65" else (1235 + 10 * places.index(place), 180500)
        )
        low, high = interval(numerator, denominator, unit)
        assert (float(row.attrs["data-low"]), float(row.attrs["data-high"])) == pytest.approx((low, high))
        assert len(row.find_all("line", cls="interval")) == 1 and len(row.find_all("circle", cls="dot")) == 1
    area = 82.25 if code == "reablement_91_days_65" else 684.21
    assert float(svg.find_all("g", cls="area-reference")[0].attrs["data-value"]) == pytest.approx(area)
    listed = report["dom"].find_all(id=f"not-drawn-dots-{code}")
    not_drawn = [li.text() for li in listed[0].find_all("li")] if listed else []
    assert not_drawn == ([COLCHESTER[2]] if code == "falls_admissions_65" else [])


def test_the_issue_reablement_quarter_shows_its_wide_interval(report):
    thurrock = report["dom"].by_id("chart-dots-reablement_91_days_65").find_all("g", data_geography=THURROCK[1])[0]
    assert "90.6 (95% interval 75.8 to 96.8)" in thurrock.find_all("title")[0].text()


def test_a_wilson_interval_for_a_percentage_and_exact_poisson_for_a_rate():
    from pophealth.reports.intervals import interval

    # 1,265 of 180,500 as a percentage: 0.70%, Wilson 0.66% to 0.74%; as a rate 700.8 per
    # 100,000, exact Poisson 662.7 to 740.5.
    assert interval(1265, 180500, "percent") == pytest.approx((0.6634, 0.7404), abs=1e-4)
    assert interval(1265, 180500, "per 100,000") == pytest.approx((662.7, 740.5), abs=0.1)


def test_every_page_is_marked_official_sensitive_and_synthetic_data_carry_a_banner(report):
    dom = report["dom"]
    assert dom.by_id("marking-top").text() == "OFFICIAL-SENSITIVE"
    assert dom.by_id("marking-bottom").text() == "OFFICIAL-SENSITIVE"
    assert dom.by_id("synthetic-banner").text().startswith("Synthetic data")
    # Printed, the top marking is fixed, which Chromium repeats on every page.
    assert re.search(r"@media print[^@]*\.marking\.top \{ position: fixed", report["raw"])
    unmarked = parse(report["unmarked"])
    assert unmarked.by_id("marking-top").text() == "OFFICIAL-SENSITIVE"
    assert unmarked.find_all(id="synthetic-banner") == [] and "Synthetic data" not in report["unmarked"]


def test_provisional_periods_are_named_with_their_final_date_and_never_shown_as_final(report):
    dom = report["dom"]
    note = dom.by_id("provisional-periods")
    items = [li.text() for li in note.find_all("li")]
    assert items == [
        "Emergency readmissions within 30 days: Jul–Sep 2025 (final on 2025-10-29); Sep 2025 (final on 2025-10-29)"
    ]
    # The table reports the latest final quarter (Apr-Jun, 999.99), not the provisional Jul-Sep.
    table = dom.by_id("table-bcf-emergency_readmissions_30d")
    head = [c.text() for c in table.find_all("thead")[0].find_all("th")]
    assert head[:3] == ["Geography", "Apr–Jun 2025", "Financial year 2024/25"]
    assert cells(body_rows(table)[0])[1:4] == ["999", "150,000", "1,000.0"]
    council = dom.by_id("table-council-E06000034")
    readmissions = council.find_all("tr", data_metric="emergency_readmissions_30d")[0]
    assert cells(readmissions)[1:3] == ["Apr–Jun 2025", "1,000.0"]


def test_residents_in_no_council_are_said_not_left_out(report):
    note = report["dom"].by_id("geography-notes")
    said = note.find_all("p")[0]
    assert said.attrs["data-residents-in-no-council"] == "1000"
    assert "About 1,000 residents" in said.text() and "in no council's" in said.text()


def test_each_council_has_its_own_page_reached_from_the_selector(report):
    dom = report["dom"]
    selector = dom.by_id("council-selector")
    assert [(a.attrs["href"], a.text()) for a in selector.find_all("a")] == [("#council-E06000034", "Thurrock")]
    page = dom.by_id("council-E06000034")
    assert page.find_all("h3")[0].text() == "Thurrock (E06000034)"
    rows = {cells(r)[0]: cells(r)[1:] for r in body_rows(dom.by_id("table-council-E06000034"))}
    assert list(rows) == [METRICS[c][0] for c in METRICS if c != "delayed_discharge_days"]
    # Thurrock is the second place (p = 1): its Jul-Sep quarter is 684.21 + 1, its year 2,497.24.
    assert rows["Emergency admissions"] == ["Jul–Sep 2025", "685.2", "Financial year 2024/25", "2,497.2", "per 100,000"]


def test_the_metric_tables_show_the_latest_quarter_and_financial_year(report):
    dom = report["dom"]
    table = dom.by_id("table-bcf-emergency_admissions")
    head = [c.text() for c in table.find_all("thead")[0].find_all("th")]
    assert head[:3] == ["Geography", "Jul–Sep 2025", "Financial year 2024/25"]
    rows = [cells(r) for r in body_rows(table)]
    assert rows[0] == ["Essex", "1,235", "180,500", "684.2", "4,520", "181,000", "2,497.2"]
    assert [r[0] for r in rows] == ["Essex", "Thurrock", "Chelmsford", "Colchester & <i>Tendring</i>"]
    assert "999" not in table.text() and "888" not in table.text()

    falls = {cells(r)[0]: cells(r)[1:4] for r in body_rows(dom.by_id("table-bcf-falls_admissions_65"))}
    assert falls["Colchester & <i>Tendring</i>"] == [SUPPRESSED, "180,500", SUPPRESSED]
    care_home = {cells(r)[0]: cells(r)[1:4] for r in body_rows(dom.by_id("table-bcf-care_home_admissions_65"))}
    assert care_home["Colchester & <i>Tendring</i>"] == ["0", "180,500", "0.0"]
    reablement = {cells(r)[0]: cells(r)[1:4] for r in body_rows(dom.by_id("table-bcf-reablement_91_days_65"))}
    assert reablement["Essex"] == ["1,645", "2,000", "82.3"]


def test_the_cohort_tables_cover_the_latest_financial_year_and_its_quarters(report):
    dom = report["dom"]
    falls = dom.by_id("table-cohort-falls_admissions")
    head = [c.text() for c in falls.find_all("thead")[0].find_all("th")]
    assert head == ["Period", "Measure", "Essex", "Chelmsford", "Colchester & <i>Tendring</i>"]
    periods = [r.attrs["data-period"] for r in body_rows(falls)]
    assert periods == [
        "2024-04-01",
        "2024-04-01",
        "2024-10-01",
        "2024-10-01",
        "2025-01-01",
        "2025-01-01",
        "2025-04-01",
        "2025-04-01",
    ]
    first_year = [cells(r) for r in body_rows(falls)[:2]]
    assert [row[-4] for row in first_year] == ["People", "Known to social care"]  # from measure_order
    measures = {row[-4]: row[-3:] for row in first_year}
    # falls_admissions is cohort 1, the 2024/25 year is period 2: 1000 + 100 + 20 (+ 5 per place).
    assert measures == {"People": ["1,120", "1,125", "1,130"], "Known to social care": ["520", "525", SUPPRESSED]}
    care_home = dom.by_id("table-cohort-care_home_after_hospital")
    latest_people = care_home.find_all("tr", data_period="2025-04-01", data_measure="people")[0]
    assert cells(latest_people)[-3:] == ["1,250", "0", "1,260"]
    for cohort in ("delayed_discharges", "falls_admissions", "care_home_after_hospital"):
        assert "2023" not in dom.by_id(f"table-cohort-{cohort}").text()


def test_a_cohort_of_many_places_is_split_into_tables_of_six_places_with_the_area_in_each(report):
    dom = report["dom"]
    heads = [
        [c.text() for c in dom.by_id(table_id).find_all("thead")[0].find_all("th")][2:]
        for table_id in ("table-cohort-many_places", "table-cohort-many_places-2", "table-cohort-many_places-3")
    ]
    names = [p[2] for p in sorted(MANY_PLACES, key=lambda p: p[2])]
    assert heads == [["Essex", *names[:5]], ["Essex", *names[5:10]], ["Essex", *names[10:]]]
    assert dom.find_all(id="table-cohort-many_places-4") == []
    assert dom.by_id("table-cohort-many_places-2").find_all("caption")[0].text() == "Many places (2 of 3)"


def test_admission_reasons_list_the_top_ten_per_age_band_in_rank_order(report):
    dom = report["dom"]
    tables = [t for t in dom.find_all("table") if t.attrs.get("id", "").startswith("table-admissions-")]
    assert [t.attrs["id"] for t in tables] == [
        "table-admissions-18-64",
        "table-admissions-65-74",
        "table-admissions-85+",
    ]
    rows = [cells(r) for r in body_rows(dom.by_id("table-admissions-65-74"))]
    assert [r[1].split(" ")[0] for r in rows] == TOP_65_74[:10]
    assert [r[0] for r in rows] == [str(n) for n in range(1, 11)]
    assert rows[0][3] == "435" and rows[9][3] == "120"
    oldest = [cells(r) for r in body_rows(dom.by_id("table-admissions-85+"))]
    assert [(r[1], r[3]) for r in oldest] == [
        ("S72 Fracture of femur", "215"),
        ("J18 Pneumonia, organism unspecified", "1,180"),
        ("R55 Syncope and collapse", SUPPRESSED),
    ]
    youngest = [cells(r) for r in body_rows(dom.by_id("table-admissions-18-64"))]
    assert [(r[1], r[3]) for r in youngest] == [
        ("R10 Abdominal and pelvic pain", "2,045"),
        ("U99 (not an ICD-10 code)", "0"),
    ]
    assert "Z99" not in dom.by_id("admission-reasons").text()


def icd10_seed() -> dict[str, str]:
    with (REPO / "dbt_project" / "seeds" / "icd10_category.csv").open(newline="", encoding="utf-8") as handle:
        return {r["code"]: r["title"] for r in csv.DictReader(handle)}


@pytest.mark.parametrize(
    ("code", "title"),
    [
        ("A41", "Other sepsis"),
        ("a41", "Other sepsis"),
        ("A419", "Other sepsis"),
        ("A41.9", "Other sepsis"),
        ("U99", None),
        ("", None),
        (None, None),
    ],
)
def test_icd10_titles_are_the_seeds_who_category_titles(code, title):
    from pophealth.reports.board_report import icd10_title

    assert icd10_title(code, icd10_seed()) == title


def test_text_from_the_data_stays_text(report):
    dom = report["dom"]
    assert dom.find_all("i") == []
    # (With councils in the data the charts draw the area and the councils; the locality's name is in the tables.)
    assert "Colchester & <i>Tendring</i>" in dom.by_id("table-bcf-emergency_admissions").text()


# ---------------------------------------------------------------------------------------------------
# Each chart looked at in headless Chromium at the width of an A4 page (794 CSS pixels), screenshots kept.

#: What the page says about itself once drawn, measured by the browser: each chart's marks and text boxes,
#: anything wider than the page, and whether the marking and the banner are on screen.
MEASURE = """() => {
  const width = document.documentElement.clientWidth;
  const inside = (r, box) => r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1
                              && r.bottom <= box.bottom + 1;
  const charts = [...document.querySelectorAll('.chart svg')].map(svg => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim());
    return {id: svg.id, kind: svg.getAttribute('class'), right: box.right,
            circles: svg.querySelectorAll('circle').length, polygons: svg.querySelectorAll('polygon').length,
            intervals: svg.querySelectorAll('line.interval').length,
            textsOutside: texts.filter(t => !inside(t.getBoundingClientRect(), box)).map(t => t.textContent)};
  });
  const wide = [...document.querySelectorAll('table, .chart svg, p, h1, h2, h3, h4, li')]
    .filter(e => e.getBoundingClientRect().right > width + 1)
    .map(e => e.id || e.tagName + ':' + e.textContent.slice(0, 40));
  // A cell whose content is wider than the cell: a word cut or running into the next column.
  const cramped = [...document.querySelectorAll('th, td')].filter(c => c.scrollWidth > c.clientWidth + 1)
    .map(c => c.closest('table').id + ':' + c.textContent.slice(0, 40));
  const shown = id => { const e = document.getElementById(id); if (!e) return null;
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return {top: r.top, height: r.height, visible: s.visibility === 'visible' && s.display !== 'none' && r.height > 0,
            text: e.innerText}; };
  return {width, scrollWidth: document.documentElement.scrollWidth, charts, wide, cramped,
          marking: shown('marking-top'), markingBottom: shown('marking-bottom'), banner: shown('synthetic-banner')};
}"""


@pytest.fixture(scope="module")
def looked_at(report):
    from playwright.sync_api import sync_playwright

    from .chromium import ARGS, CHROMIUM

    shots = report["home"] / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 794, "height": 1123})
            page.goto(report["out"].as_uri())
            page.wait_for_selector("body[data-charts-drawn=true]")
            measured = page.evaluate(MEASURE)
            page.screenshot(path=str(shots / "page-top.png"))
            page.screenshot(path=str(shots / "whole-page.png"), full_page=True)
            for chart in measured["charts"]:
                page.locator(f"#{chart['id']}").screenshot(path=str(shots / f"{chart['id']}.png"))
            page.locator("#table-summary").screenshot(path=str(shots / "table-summary.png"))
        finally:
            browser.close()
    return {"measured": measured, "shots": shots}


def test_every_chart_has_its_marks_and_keeps_its_text_inside_it(looked_at):
    charts = {c["id"]: c for c in looked_at["measured"]["charts"]}
    assert len(charts) == 12
    assert charts["chart-pyramid-E10000012"]["polygons"] == 4
    for code in METRICS:
        # Six months less the provisional and suppressed ones, one dot each.
        months = [
            mo
            for mo in MONTHS
            if (code, "month", mo) not in PROVISIONAL and (code, AREA[1], mo) != SUPPRESSED_AREA_MONTH
        ]
        assert charts[f"chart-bcf-{code}"]["circles"] == len(months), code
    for code, rows in {
        "emergency_admissions": 3,
        "care_home_admissions_65": 3,
        "reablement_91_days_65": 3,
        "falls_admissions_65": 2,
        "emergency_readmissions_30d": 3,
    }.items():
        # One dot and one interval per place drawn (Colchester's zero care home quarter too: 0 to 2.0).
        assert charts[f"chart-dots-{code}"]["circles"] == rows == charts[f"chart-dots-{code}"]["intervals"], code
    for chart in charts.values():
        assert chart["textsOutside"] == [], chart["id"]
        assert (looked_at["shots"] / f"{chart['id']}.png").stat().st_size > 1000


def test_nothing_runs_off_an_a4_page(looked_at):
    measured = looked_at["measured"]
    assert measured["wide"] == [] and measured["scrollWidth"] <= measured["width"]
    assert measured["cramped"] == []


def test_the_marking_and_the_banner_are_on_the_first_screen(looked_at):
    measured = looked_at["measured"]
    assert measured["marking"]["visible"] and measured["marking"]["top"] < 100
    assert measured["marking"]["text"] == "OFFICIAL-SENSITIVE"
    assert measured["markingBottom"]["visible"]
    assert measured["banner"]["visible"] and measured["banner"]["top"] < 200
    assert measured["banner"]["text"].startswith("Synthetic data")
