"""The Better Care Fund metrics of docs/contract/marts.md, worked out from what the platform was given.

This is the reference implementation the SQL marts are compared with, so every choice is spelt out here.

What counts: only LOADED rows. Opted-out people's rows are absent. A row whose NHS number was missing or
invalid belongs to an identity of its own (the hospital spell `spell:<procode>|<spell_id>`, the council
person `la:<LA>|<id>`), so it cannot be linked to anything in another spell or feed. Each event belongs to
its identity; the identity's attributes are those of people.csv (locality from the register first, then
hospital, then social care; events of an identity with no locality count at area level only).

Spells are rolled up from episodes: admission attributes (admidate, admimeth, and the diagnoses) come from
the episode with epiorder 1; discharge attributes (disdate, dismeth, disdest, discharge_ready_date) from the
last episode. A spell is *emergency* when its admission method is 21-25, 2A-2D or 28; *finished* when it
has a disdate; *discharged alive* when finished with dismeth not 4 or 5 and disdest not 79.

Social care events are de-duplicated as the contract says (council, identity, client type, start date and
by type the route / assessment type / service type + component, after mapping Release 1 values to
Release 2); the latest submission's copy wins (its end date and outcome).

Age is age on the event date from birth year and month, as if born on the 1st of the month.

Metric by metric (the unit of every spell metric is the spell; of care_home_admissions_65 the person):

- emergency_admissions: emergency spells with admidate in the period / population all ages, per 100,000.
- falls_admissions_65: emergency spells with admidate in the period, aged 65+ on admidate, diag_01 in
  S00-T98 and any of diag_02..diag_20 in W00-W19 (ICD-10 compared without dot) / population 65+, per 100,000.
- delayed_discharge_days: sum of (disdate - discharge_ready_date) in days over finished spells with
  disdate in the period and discharge_ready_date < disdate / (population 18+ x days in period), per 100,000.
- emergency_readmissions_30d: of finished spells discharged alive with disdate in the period (any admission
  method, any age), those for which ANOTHER emergency spell of the same identity has an admidate 0 to 29
  days after the disdate; percent.
- reablement_91_days_65: denominator = spells discharged alive with disdate in the period, aged 65+ on the
  disdate, whose identity has a Service `Short term support: ST-Max` / `Reablement` starting from disdate-3
  to disdate+7 (inclusive); numerator = those with none of, in days 1..91 after the disdate (inclusive):
  the identity's date of death (people.csv), an emergency spell admitted, a `Long term support:
  Residential care` or `Long term support: Nursing care` service starting (any outcome); percent.
- care_home_admissions_65: distinct identities with a NEW Residential/Nursing care service starting in the
  period, aged 65+ on its start date. A service is new unless its outcome (latest submission) is
  `NFA: Self-funded client or under 12wk disregard`, or another Residential/Nursing service of the same
  identity started before it (any outcome) and was still open on its start date or ended less than
  365 days before it (end date null, or start - end < 365 days) / population 65+, per 100,000.

Denominators come from ref_population of the year the period starts, summed over the geography (area =
every LSOA; a council = its LSOAs; a locality = its LSOAs), with single-year ages (90 = 90+). Values are rounded to
4 decimals and empty when the denominator is 0; delayed_discharge_days' denominator column holds population x days.
Periods: every calendar month, every quarter (Apr-Jun, Jul-Sep, Oct-Dec, Jan-Mar) and the financial year
2024-04-01..2025-03-31 inside 2024-04-01..2025-09-30.

Geographies: the area (geography_code `area`), each council (local_authority: events of people living in its
LSOAs, and a social care event in the council whose file sent it) and each locality. A period is final when
its last day plus the metric's follow-up (29 days for readmissions, 91 for reablement, else 0) is on or
before the as-of date 2025-09-30; final_on is that day.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from pophealth.synth.extracts import Ledger, month_end, population_counts
from pophealth.synth.world import WINDOW_END, WINDOW_START, World

EMERGENCY = frozenset({"21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"})
CARE_HOME_SERVICES = frozenset({"Long term support: Residential care", "Long term support: Nursing care"})
REABLEMENT = ("Short term support: ST-Max", "Reablement")
SELF_FUNDED = "NFA: Self-funded client or under 12wk disregard"
PER_100K = 100_000
AREA = "area"  # the whole platform's geography_code (marts.md v2)

METRICS = (
    "emergency_admissions",
    "care_home_admissions_65",
    "reablement_91_days_65",
    "delayed_discharge_days",
    "falls_admissions_65",
    "emergency_readmissions_30d",
)


# ----------------------------------------------------------------------------------------------------------
# Periods, ages and codes


#: The marts give a metric's value to one decimal place, the precision its unit needs (a percentage, a rate per
#: 100,000: dbt_project/seeds/bcf_metric.csv, decimals); PostgreSQL's round() takes a half away from zero.
VALUE_DECIMALS = 1


def _value(numerator, denominator, scale) -> str:
    exact = Decimal(numerator) / Decimal(denominator) * scale
    return str(exact.quantize(Decimal(1).scaleb(-VALUE_DECIMALS), rounding=ROUND_HALF_UP))


def periods() -> list[tuple[str, date, date]]:
    """(period_type, start, end) for every month, quarter and whole financial year in the window."""
    out = []
    start = WINDOW_START
    while start <= WINDOW_END:
        out.append(("month", start, month_end(start)))
        start = month_end(start) + timedelta(days=1)
    start = WINDOW_START
    while start <= WINDOW_END:
        end = month_end(date(start.year + (start.month + 2 > 12), (start.month + 1) % 12 + 1, 1))
        out.append(("quarter", start, end))
        start = end + timedelta(days=1)
    out.append(("financial_year", date(2024, 4, 1), date(2025, 3, 31)))
    return out


def covered_periods(ledger: Ledger) -> set[tuple[str, date]]:
    """(period_type, start) of the periods that every sender's files (every trust, every council) cover wholly:
    the only periods whose metrics the platform computes (marts.md, "Periods"). A small world has trusts with no
    discharge in some month, and so no file: those months, and their quarters and years, are not computed."""
    by_sender: dict[tuple[str, str], list[tuple[date, date]]] = {}
    for feed, provider, first, last in ledger.coverage:
        by_sender.setdefault((feed, provider), []).append((first, last))
    joined: dict[tuple[str, str], list[list[date]]] = {}
    for sender, spans in by_sender.items():
        runs: list[list[date]] = []
        for first, last in sorted(spans):
            if runs and first <= runs[-1][1] + timedelta(days=1):
                runs[-1][1] = max(runs[-1][1], last)
            else:
                runs.append([first, last])
        joined[sender] = runs
    return {
        (period_type, start)
        for period_type, start, end in periods()
        if joined and all(any(a <= start and end <= b for a, b in runs) for runs in joined.values())
    }


def age_on(birth: tuple[int, int], on: date) -> int:
    """Age from birth (year, month) only, as if born on the 1st (what the warehouse keeps)."""
    year, month = birth
    return on.year - year - (1 if on.month < month else 0)


def _code(value: str) -> str:
    return "".join(ch for ch in value.upper() if ch.isalnum())


def is_injury(code: str) -> bool:
    """ICD-10 S00-T98 (with or without the dot)."""
    code = _code(code)
    return len(code) >= 3 and code[1:3].isdigit() and (code[0] == "S" or (code[0] == "T" and int(code[1:3]) <= 98))


def is_fall(code: str) -> bool:
    """ICD-10 W00-W19."""
    code = _code(code)
    return len(code) >= 3 and code[0] == "W" and code[1:3].isdigit() and int(code[1:3]) <= 19


# ----------------------------------------------------------------------------------------------------------
# The platform's view of the loaded rows


@dataclass(frozen=True, slots=True)
class SpellFact:
    number: int
    identity: str
    locality: str | None
    birth: tuple[int, int]
    admidate: date
    disdate: date | None
    emergency: bool
    discharged_alive: bool
    ready: date | None
    primary: str
    others: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceFact:
    identity: str
    locality: str | None
    council: str  # the council whose cld file sent it (LA_Code)
    birth: tuple[int, int]
    service_type: str
    component: str
    start: date
    end: date | None  # as the latest submission says
    outcome: str | None  # as the latest submission says


def spell_facts(ledger: Ledger, people: dict[str, dict]) -> list[SpellFact]:
    facts = []
    for number, (identity, spell) in enumerate(ledger.loaded_spells):
        first = spell.episodes[0]
        birth = spell.person.birth
        facts.append(
            SpellFact(
                number=number,
                identity=identity,
                locality=people[identity]["locality_code"] or None,
                birth=(birth.year, birth.month),
                admidate=spell.admidate,
                disdate=spell.disdate,
                emergency=spell.admimeth in EMERGENCY,
                discharged_alive=spell.disdate is not None
                and spell.dismeth not in ("4", "5")
                and spell.disdest != "79",
                ready=spell.discharge_ready_date,
                primary=first.diagnoses[0] if first.diagnoses else "",
                others=tuple(first.diagnoses[1:]),
            )
        )
    return facts


def service_facts(ledger: Ledger, people: dict[str, dict]) -> list[ServiceFact]:
    facts = []
    for identity, event, latest_file in ledger.loaded_events:
        if event.event_type != "Service":
            continue
        birth = event.person.birth
        facts.append(
            ServiceFact(
                identity=identity,
                locality=people[identity]["locality_code"] or None,
                council=event.person.lsoa.la_code,
                birth=(birth.year, birth.month),
                service_type=event.service_type or "",
                component=event.component or "",
                start=event.start,
                end=event.end if event.end and event.end <= latest_file else None,
                outcome=event.outcome
                if (event.end and event.end <= latest_file) or event.outcome == SELF_FUNDED
                else "Continuation of support or services",
            )
        )
    return facts


# ----------------------------------------------------------------------------------------------------------
# Each metric as contributions: (date that places it in a period, locality, numerator, denominator, who)


@dataclass(frozen=True, slots=True)
class Contribution:
    day: date
    locality: str | None
    numerator: int
    denominator: int = 0
    who: str | None = None  # set when the numerator counts distinct people
    council: str | None = None  # a social care event's own council; else the locality's


def emergency_admissions(spells: list[SpellFact]) -> list[Contribution]:
    return [Contribution(s.admidate, s.locality, 1) for s in spells if s.emergency]


def falls_admissions_65(spells: list[SpellFact]) -> list[Contribution]:
    return [
        Contribution(s.admidate, s.locality, 1)
        for s in spells
        if s.emergency
        and age_on(s.birth, s.admidate) >= 65
        and is_injury(s.primary)
        and any(is_fall(c) for c in s.others)
    ]


def delayed_discharge_days(spells: list[SpellFact]) -> list[Contribution]:
    return [
        Contribution(s.disdate, s.locality, (s.disdate - s.ready).days)
        for s in spells
        if s.disdate is not None and s.ready is not None and s.ready < s.disdate
    ]


def _emergency_admissions_by_identity(spells: list[SpellFact]) -> dict[str, list[tuple[date, int]]]:
    found: dict[str, list[tuple[date, int]]] = {}
    for s in spells:
        if s.emergency:
            found.setdefault(s.identity, []).append((s.admidate, s.number))
    return found


def emergency_readmissions_30d(spells: list[SpellFact]) -> list[Contribution]:
    admissions = _emergency_admissions_by_identity(spells)
    out = []
    for s in spells:
        if not s.discharged_alive:
            continue
        readmitted = any(
            0 <= (day - s.disdate).days <= 29 and number != s.number for day, number in admissions.get(s.identity, ())
        )
        out.append(Contribution(s.disdate, s.locality, int(readmitted), 1))
    return out


def reablement_91_days_65(
    spells: list[SpellFact], services: list[ServiceFact], deaths: dict[str, date]
) -> list[Contribution]:
    admissions = _emergency_admissions_by_identity(spells)
    reablement: dict[str, list[date]] = {}
    care_homes: dict[str, list[date]] = {}
    for f in services:
        if (f.service_type, f.component) == REABLEMENT:
            reablement.setdefault(f.identity, []).append(f.start)
        elif f.service_type in CARE_HOME_SERVICES:
            care_homes.setdefault(f.identity, []).append(f.start)
    out = []
    for s in spells:
        if not s.discharged_alive or age_on(s.birth, s.disdate) < 65:
            continue
        if not any(-3 <= (start - s.disdate).days <= 7 for start in reablement.get(s.identity, ())):
            continue

        def within_91(day: date, disdate: date = s.disdate) -> bool:
            return 1 <= (day - disdate).days <= 91

        death = deaths.get(s.identity)
        at_home = not (
            (death is not None and within_91(death))
            or any(within_91(day) for day, _n in admissions.get(s.identity, ()))
            or any(within_91(day) for day in care_homes.get(s.identity, ()))
        )
        out.append(Contribution(s.disdate, s.locality, int(at_home), 1))
    return out


def care_home_admissions_65(services: list[ServiceFact]) -> list[Contribution]:
    by_identity: dict[str, list[ServiceFact]] = {}
    for f in services:
        if f.service_type in CARE_HOME_SERVICES:
            by_identity.setdefault(f.identity, []).append(f)
    out = []
    for identity, mine in by_identity.items():
        for f in mine:
            if f.outcome == SELF_FUNDED or age_on(f.birth, f.start) < 65:
                continue
            if any(o.start < f.start and (o.end is None or (f.start - o.end).days < 365) for o in mine):
                continue  # another care home service was open, or ended less than a year before
            out.append(Contribution(f.start, f.locality, 1, who=identity, council=f.council))
    return out


# ----------------------------------------------------------------------------------------------------------
# Periods x geographies


#: How many days after a period's last day its last follow-up window ends (marts.md, is_final / final_on).
FOLLOW_UP_DAYS = {"emergency_readmissions_30d": 29, "reablement_91_days_65": 91}


def compute_metrics(world: World, ledger: Ledger, people: dict[str, dict]) -> list[dict]:
    """Every metric, period and geography: the area (code `area`), each council (its own LSOAs; a social
    care event in the council that sent it) and each locality."""
    localities = [loc.code for loc in world.localities]
    councils = list(world.councils)
    lsoa_locality = {lsoa.code: loc.code for loc in world.localities for lsoa in loc.lsoas}
    lsoa_council = {lsoa.code: loc.la_code for loc in world.localities for lsoa in loc.lsoas}
    locality_council = {loc.code: loc.la_code for loc in world.localities}
    population: dict[tuple[int, str, str, int], int] = {}  # (year, level, geography, minimum age) -> people
    for year in {start.year for _t, start, _e in periods()}:
        for (lsoa, _sex, age), n in population_counts(world, year).items():
            for place in (("area", AREA), ("local_authority", lsoa_council[lsoa]), ("locality", lsoa_locality[lsoa])):
                for min_age in (0, 18, 65):
                    if age >= min_age:
                        key = (year, *place, min_age)
                        population[key] = population.get(key, 0) + n

    spells = spell_facts(ledger, people)
    services = service_facts(ledger, people)
    computed = covered_periods(ledger)
    deaths = {
        identity: date.fromisoformat(row["date_of_death"]) for identity, row in people.items() if row["date_of_death"]
    }
    contributions = {
        "emergency_admissions": (emergency_admissions(spells), "population", 0),
        "care_home_admissions_65": (care_home_admissions_65(services), "population", 65),
        "reablement_91_days_65": (reablement_91_days_65(spells, services, deaths), "percent", None),
        "delayed_discharge_days": (delayed_discharge_days(spells), "population_days", 18),
        "falls_admissions_65": (falls_admissions_65(spells), "population", 65),
        "emergency_readmissions_30d": (emergency_readmissions_30d(spells), "percent", None),
    }
    geographies = (
        [("area", AREA)] + [("local_authority", c) for c in councils] + [("locality", code) for code in localities]
    )

    def in_place(c: Contribution, level: str, code: str) -> bool:
        if level == "area":
            return True
        if level == "locality":
            return c.locality == code
        return (c.council or locality_council.get(c.locality)) == code

    rows = []
    for code in METRICS:
        items, kind, min_age = contributions[code]
        items = sorted(items, key=lambda c: c.day)
        days = [c.day for c in items]
        for period_type, start, end in periods():
            if (period_type, start) not in computed:
                continue
            chosen = items[bisect.bisect_left(days, start) : bisect.bisect_right(days, end)]
            length = (end - start).days + 1
            final_on = end + timedelta(days=FOLLOW_UP_DAYS.get(code, 0))
            for level, geography in geographies:
                here = [c for c in chosen if in_place(c, level, geography)]
                if here and here[0].who is not None:
                    numerator = len({c.who for c in here if c.numerator})
                else:
                    numerator = sum(c.numerator for c in here)
                if kind == "percent":
                    denominator, scale = sum(c.denominator for c in here), 100
                else:
                    denominator = population.get((start.year, level, geography, min_age), 0)
                    denominator *= length if kind == "population_days" else 1
                    scale = PER_100K
                rows.append(
                    {
                        "metric_code": code,
                        "period_type": period_type,
                        "period_start": start.isoformat(),
                        "period_end": end.isoformat(),
                        "geography_level": level,
                        "geography_code": geography,
                        "is_final": "true" if final_on <= WINDOW_END else "false",
                        "final_on": final_on.isoformat(),
                        "numerator": numerator,
                        "denominator": denominator,
                        "value": "" if denominator == 0 else _value(numerator, denominator, scale),
                    }
                )
    rows.sort(
        key=lambda r: (r["metric_code"], r["period_type"], r["period_start"], r["geography_level"], r["geography_code"])
    )
    return rows


# ----------------------------------------------------------------------------------------------------------
# The partners' cohorts (marts.delayed_discharges, falls_admissions, care_home_after_hospital,
# admission_reasons), as counts the marts must reproduce. The rules, as the marts' documentation says:
# - known to social care: any social care event of the identity (any type) that started before the
#   admission and was still open, or ended, in the 365 days before it (end as the latest submission says);
# - falls (all ages): emergency, primary S00-T98, a W00-W19 code among the first episode's other diagnoses;
#   support followed: a Service starting from the admission to 91 days after the discharge (or admission);
# - care home after hospital: a Residential/Nursing service that is new (as care_home_admissions_65, any age
#   and funding) and starts 0 to 28 days after a discharge of the same identity;
# - admission reasons: emergency spells admitted in the 12 months to the as-of date by age band on admission
#   and the first three characters of the primary diagnosis.

AGE_BANDS = ((18, "0-17"), (65, "18-64"), (75, "65-74"), (85, "75-84"))


def _age_band(age: int) -> str:
    return next((band for limit, band in AGE_BANDS if age < limit), "85+")


def compute_cohorts(ledger: Ledger, people: dict[str, dict]) -> list[dict]:
    spells = spell_facts(ledger, people)
    services = service_facts(ledger, people)
    contacts: dict[str, list[tuple[date, date | None]]] = {}
    for identity, event, latest_file in ledger.loaded_events:
        end = event.end if event.end and event.end <= latest_file else None
        contacts.setdefault(identity, []).append((event.start, end))

    def known_before(identity: str, admitted: date) -> bool:
        return any(
            start < admitted and (end is None or (admitted - end).days <= 365)
            for start, end in contacts.get(identity, ())
        )

    rows: list[dict] = []

    def add(cohort: str, measure: str, value: int, key: str = "") -> None:
        rows.append({"cohort": cohort, "measure": measure, "key": key, "value": value})

    delayed = [s for s in spells if s.disdate is not None and s.ready is not None and s.ready < s.disdate]
    add("delayed_discharges", "spells", len(delayed))
    add("delayed_discharges", "days_delayed", sum((s.disdate - s.ready).days for s in delayed))
    add("delayed_discharges", "known_to_social_care", sum(known_before(s.identity, s.admidate) for s in delayed))

    falls = [s for s in spells if s.emergency and is_injury(s.primary) and any(is_fall(c) for c in s.others)]
    supported = 0
    for s in falls:
        last = (s.disdate or s.admidate) + timedelta(days=91)
        supported += any(f.identity == s.identity and s.admidate <= f.start <= last for f in services)
    add("falls_admissions", "admissions", len(falls))
    add("falls_admissions", "known_to_social_care_before", sum(known_before(s.identity, s.admidate) for s in falls))
    add("falls_admissions", "with_support_within_91_days", supported)

    care_homes: dict[str, list[ServiceFact]] = {}
    for f in services:
        if f.service_type in CARE_HOME_SERVICES:
            care_homes.setdefault(f.identity, []).append(f)
    discharges: dict[str, list[date]] = {}
    for s in spells:
        if s.disdate is not None:
            discharges.setdefault(s.identity, []).append(s.disdate)
    after_hospital = self_funded = 0
    for identity, mine in care_homes.items():
        for f in mine:
            if any(o.start < f.start and (o.end is None or (f.start - o.end).days < 365) for o in mine):
                continue
            if any(0 <= (f.start - day).days <= 28 for day in discharges.get(identity, ())):
                after_hospital += 1
                self_funded += f.outcome == SELF_FUNDED
    add("care_home_after_hospital", "placements", after_hospital)
    add("care_home_after_hospital", "self_funded", self_funded)

    first_day = date(WINDOW_END.year - 1, WINDOW_END.month, WINDOW_END.day) + timedelta(days=1)
    reasons: dict[str, int] = {}
    for s in spells:
        if s.emergency and first_day <= s.admidate <= WINDOW_END:
            code = _code(s.primary)[:3] or "unknown"
            key = f"{_age_band(age_on(s.birth, s.admidate))}|{code}"
            reasons[key] = reasons.get(key, 0) + 1
    for key, count in sorted(reasons.items()):
        add("admission_reasons", "admissions", count, key)
    return rows
