"""The Better Care Fund metrics of ../shared/contract/marts.md, worked out from what the platform was given.

Only loaded rows count: opted-out people's rows are absent, and a row whose NHS number was missing or
invalid belongs to a person of its own (a spell, a council person), so it cannot be linked across feeds.
Every metric is computed for each month, quarter and financial year in the window, for the whole area
and each locality. Where marts.md leaves a choice, the choice is written beside the code (and in the
README) so that the SQL and this code implement the same thing:

- the unit of emergency_admissions, falls_admissions_65, emergency_readmissions_30d,
  delayed_discharge_days and reablement_91_days_65 is the spell (a discharge); of
  care_home_admissions_65 the person;
- a spell's primary diagnosis and "other diagnosis positions" are those of its first episode;
- "no new long-term residential or nursing service" in reablement means no such service starting in
  days 1-91 after discharge; "alive" means no date of death in days 1-91;
- a care home service is not new when another residential or nursing service of the same person started
  before it and was open on its start date or ended less than 365 days before it.
"""

from __future__ import annotations

from datetime import date, timedelta

from pophealth.synth.extracts import Ledger, month_end, population_counts
from pophealth.synth.geography import AREA_CODE
from pophealth.synth.world import WINDOW_END, WINDOW_START, World

EMERGENCY = {"21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"}
CARE_HOME_SERVICES = {"Long term support: Residential care", "Long term support: Nursing care"}
SELF_FUNDED = "NFA: Self-funded client or under 12wk disregard"
PER_100K = 100_000


def periods() -> list[tuple[str, date, date]]:
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


def age_on(birth: date, on: date) -> int:
    """Age from birth year and month only, as if born on the 1st (what the warehouse keeps)."""
    return on.year - birth.year - (1 if on.month < birth.month else 0)


def _code(value: str) -> str:
    return "".join(ch for ch in value.upper() if ch.isalnum())


def is_injury(code: str) -> bool:
    code = _code(code)
    return len(code) >= 3 and (code[0] == "S" or (code[0] == "T" and code[1:3].isdigit() and int(code[1:3]) <= 98))


def is_fall(code: str) -> bool:
    code = _code(code)
    return len(code) >= 3 and code[0] == "W" and code[1:3].isdigit() and int(code[1:3]) <= 19


def compute_metrics(world: World, ledger: Ledger, people: dict[str, dict]) -> list[dict]:
    localities = [loc.code for loc in world.localities]
    population = {year: population_counts(world, year) for year in (2023, 2024, 2025)}
    lsoa_locality = {lsoa.code: loc.code for loc in world.localities for lsoa in loc.lsoas}

    def denominator(year: int, geography: str, min_age: int = 0) -> int:
        return sum(n for (lsoa, _sex, age), n in population[year].items()
                   if age >= min_age and (geography == AREA_CODE or lsoa_locality[lsoa] == geography))

    def death_of(identity: str) -> date | None:
        value = people[identity]["date_of_death"]
        return date.fromisoformat(value) if value else None

    # Spells as the platform sees them.
    spells = []
    for identity, spell in ledger.loaded_spells:
        first = spell.episodes[0]
        spells.append({
            "identity": identity, "locality": people[identity]["locality_code"], "birth": spell.person.birth,
            "admidate": spell.admidate, "disdate": spell.disdate, "emergency": spell.admimeth in EMERGENCY,
            "discharged_alive": spell.disdate is not None and spell.dismeth not in ("4", "5") and spell.disdest != "79",
            "ready": spell.discharge_ready_date, "primary": first.diagnoses[0] if first.diagnoses else "",
            "others": first.diagnoses[1:],
        })
    births = {row.identity: row.person.birth for row in ledger.rows}
    emergency_admissions_of: dict[str, list[tuple[date, int]]] = {}  # (admission date, spell number)
    for number, s in enumerate(spells):
        s["number"] = number
        if s["emergency"]:
            emergency_admissions_of.setdefault(s["identity"], []).append((s["admidate"], number))

    # Care home services as the platform sees them (the latest submission of each event).
    care_homes: dict[str, list[tuple[date, date | None, bool]]] = {}
    reablement_starts: dict[str, list[date]] = {}
    for identity, event, last_file in ledger.loaded_events:
        if event.event_type != "Service":
            continue
        end = event.end if event.end and event.end <= last_file else None
        if event.service_type in CARE_HOME_SERVICES:
            care_homes.setdefault(identity, []).append((event.start, end, event.outcome == SELF_FUNDED))
        elif event.service_type == "Short term support: ST-Max" and event.component == "Reablement":
            reablement_starts.setdefault(identity, []).append(event.start)
    new_care_homes = []  # (identity, start)
    for identity, services in care_homes.items():
        for start, _end, self_funded in services:
            if self_funded:
                continue
            earlier = [(s, e) for s, e, _ in services if s < start]
            if any(e is None or e >= start or (start - e).days < 365 for s, e in earlier):
                continue
            new_care_homes.append((identity, start))

    # Each metric as (numerator, denominator) per (period, geography).
    rows = []
    for period_type, start, end in periods():
        year = start.year
        days = (end - start).days + 1
        for geography in [AREA_CODE] + localities:
            def here(identity_locality: str | None) -> bool:
                return geography == AREA_CODE or identity_locality == geography

            in_period = [s for s in spells if here(s["locality"])]
            admitted = [s for s in in_period if start <= s["admidate"] <= end]
            discharged = [s for s in in_period if s["disdate"] and start <= s["disdate"] <= end]

            emergency = sum(1 for s in admitted if s["emergency"])
            falls = sum(1 for s in admitted if s["emergency"] and age_on(s["birth"], s["admidate"]) >= 65
                        and is_injury(s["primary"]) and any(is_fall(c) for c in s["others"]))
            delayed = sum((s["disdate"] - s["ready"]).days for s in discharged
                          if s["ready"] is not None and s["ready"] < s["disdate"])
            alive = [s for s in discharged if s["discharged_alive"]]
            readmitted = sum(1 for s in alive if any(
                0 <= (a - s["disdate"]).days <= 29 and other != s["number"]
                for a, other in emergency_admissions_of.get(s["identity"], [])))
            reablement_cohort = [
                s for s in alive if age_on(s["birth"], s["disdate"]) >= 65 and any(
                    -3 <= (r - s["disdate"]).days <= 7 for r in reablement_starts.get(s["identity"], []))]
            at_home = 0
            for s in reablement_cohort:
                dis = s["disdate"]
                death = death_of(s["identity"])
                if death is not None and 1 <= (death - dis).days <= 91:
                    continue
                if any(1 <= (a - dis).days <= 91 for a, _n in emergency_admissions_of.get(s["identity"], [])):
                    continue
                if any(1 <= (c - dis).days <= 91 for c, _e, _sf in care_homes.get(s["identity"], [])):
                    continue
                at_home += 1
            care_home_people = {identity for identity, day in new_care_homes
                                if start <= day <= end and here(people[identity]["locality_code"])
                                and age_on(births[identity], day) >= 65}

            pop_all = denominator(year, geography)
            pop_65 = denominator(year, geography, 65)
            pop_18 = denominator(year, geography, 18)
            for code, numerator, denom, scale in (
                ("emergency_admissions", emergency, pop_all, PER_100K),
                ("care_home_admissions_65", len(care_home_people), pop_65, PER_100K),
                ("reablement_91_days_65", at_home, len(reablement_cohort), 100),
                ("delayed_discharge_days", delayed, pop_18 * days, PER_100K),
                ("falls_admissions_65", falls, pop_65, PER_100K),
                ("emergency_readmissions_30d", readmitted, len(alive), 100),
            ):
                value = "" if denom == 0 else f"{numerator / denom * scale:.4f}"
                rows.append({"metric_code": code, "period_type": period_type, "period_start": start.isoformat(),
                             "period_end": end.isoformat(), "geography_level": "area" if geography == AREA_CODE
                             else "locality", "geography_code": geography, "numerator": numerator,
                             "denominator": denom, "value": value})
    rows.sort(key=lambda r: (r["metric_code"], r["period_type"], r["period_start"], r["geography_level"],
                             r["geography_code"]))
    return rows

