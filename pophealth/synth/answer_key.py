"""The answer key: what the platform must make of the extracts, worked out from the generator's ledger.

- files.csv   every file: rows read, loaded, quarantined, removed by opt-out
- people.csv  every person marts.person must hold (identities and attributes, by the rules below)
- metrics.csv the Better Care Fund metrics of marts.md (see answer_metrics)
- cohorts.csv the partners' cohorts as counts (see answer_metrics.compute_cohorts)
- world.json  headline figures, and the population and seed that made the world

The rules for people.csv are the platform's documented rules (docs/marts.md, "Who is who"): a person is their
NHS number when a row carries a valid one, else the hospital spell or the council's person id;
attributes come from the GP register first, then hospital, then social care; ages are at the as-of
date from birth year and month, as if born on the first of the month.
"""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

from pophealth.synth.answer_metrics import compute_cohorts, compute_metrics, covered_periods, periods
from pophealth.synth.extracts import Ledger
from pophealth.synth.world import WINDOW_END, WINDOW_START, World

AS_OF = WINDOW_END
PEOPLE_COLUMNS = (
    "identity",
    "birth_year",
    "age_band",
    "sex",
    "lsoa_code",
    "locality_code",
    "gp_practice_code",
    "is_registered",
    "date_of_death",
    "in_hospital_data",
    "in_social_care_data",
    "is_linked",
    "link_method",
)


def age_from_year_month(year: int, month: int, on: date) -> int:
    return on.year - year - (1 if on.month < month else 0)


def age_band(age: int | None) -> str:
    if age is None:
        return ""
    if age < 18:
        return "0-17"
    if age < 65:
        return "18-64"
    if age < 75:
        return "65-74"
    if age < 85:
        return "75-84"
    return "85+"


def people_rows(ledger: Ledger) -> list[dict]:
    """marts.person as the platform must build it: one row per identity of the loaded rows.

    Attributes come from the register when the identity has a loaded register row, else from its hospital
    rows, else from its social care rows (within one source a person's details do not change here).
    """
    rows = []
    for identity, facts in ledger.identities.items():
        person = facts.person
        if facts.gp or facts.apc:
            sex = person.sex
        else:  # social care sends Gender: Male / Female / Other
            sex = {"1": "1", "2": "2"}.get(person.sex, "9")
        registered = (
            facts.gp
            and (person.registration_end is None or person.registration_end > AS_OF)
            and (facts.gp_death is None or facts.gp_death > AS_OF)
        )
        death = (facts.gp_death if facts.gp else None) or facts.cld_death or facts.apc_death
        practice = person.practice if facts.gp else person.apc_practice if facts.apc else ""
        rows.append(
            {
                "identity": identity,
                "birth_year": str(person.birth.year),
                "age_band": age_band(age_from_year_month(person.birth.year, person.birth.month, AS_OF)),
                "sex": sex,
                "lsoa_code": person.lsoa.code,
                "locality_code": person.lsoa.locality_code,
                "gp_practice_code": practice,
                "is_registered": "true" if registered else "false",
                "date_of_death": death.isoformat() if death else "",
                "in_hospital_data": "true" if facts.apc else "false",
                "in_social_care_data": "true" if facts.cld else "false",
                "is_linked": "true" if facts.apc and facts.cld else "false",
                "link_method": "nhs_number" if identity.startswith("nhs:") else "local_id_only",
            }
        )
    rows.sort(key=lambda r: r["identity"])
    return rows


def _write_csv(path: Path, columns, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_answer_key(world: World, ledger: Ledger, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    people = people_rows(ledger)
    _write_csv(out / "people.csv", PEOPLE_COLUMNS, people)
    _write_csv(
        out / "files.csv",
        ("file_name", "feed", "rows_read", "rows_loaded", "rows_quarantined", "rows_opted_out"),
        sorted(ledger.files, key=lambda f: f["file_name"]),
    )
    metrics = compute_metrics(world, ledger, {r["identity"]: r for r in people})
    computed = covered_periods(ledger)
    _write_csv(
        out / "metrics.csv",
        (
            "metric_code",
            "period_type",
            "period_start",
            "period_end",
            "geography_level",
            "geography_code",
            "is_final",
            "final_on",
            "numerator",
            "denominator",
            "value",
        ),
        metrics,
    )
    _write_csv(
        out / "cohorts.csv",
        ("cohort", "measure", "key", "value"),
        compute_cohorts(ledger, {r["identity"]: r for r in people}),
    )
    alive_65 = sum(1 for p in world.people if p.age_on(date(2024, 6, 30)) >= 65)
    in_window = [s for s in world.spells if s.admidate >= WINDOW_START]
    financial_year = {
        r["metric_code"]: r["value"]
        for r in metrics
        if r["period_type"] == "financial_year" and r["geography_level"] == "area"
    }
    summary = {
        "population": world.population,
        "seed": world.seed,
        "as_of_date": AS_OF.isoformat(),
        "people": len(people),
        "linked": sum(1 for r in people if r["is_linked"] == "true"),
        "registered": sum(1 for r in people if r["is_registered"] == "true"),
        "local_id_only": sum(1 for r in people if r["link_method"] == "local_id_only"),
        "in_hospital_data": sum(1 for r in people if r["in_hospital_data"] == "true"),
        "in_social_care_data": sum(1 for r in people if r["in_social_care_data"] == "true"),
        "with_date_of_death": sum(1 for r in people if r["date_of_death"]),
        "opted_out_people": sum(1 for p in world.people if p.opted_out),
        "deaths": sum(1 for p in world.people if p.death),
        "deaths_in_hospital": sum(1 for p in world.people if p.death and p.died_in_hospital),
        "share_aged_65_plus_mid_2024": round(alive_65 / max(1, len(world.people)), 4),
        "spells": len(in_window),
        "emergency_spells": sum(1 for s in in_window if s.emergency),
        "episodes": sum(len(s.episodes) for s in in_window),
        "social_care_events": len(world.events),
        "files": len(ledger.files),
        "rows_read": sum(f["rows_read"] for f in ledger.files),
        "rows_loaded": sum(f["rows_loaded"] for f in ledger.files),
        "rows_quarantined": sum(f["rows_quarantined"] for f in ledger.files),
        "rows_opted_out": sum(f["rows_opted_out"] for f in ledger.files),
        "metrics_2024_25_area": financial_year,
        "councils": list(world.councils),
        # Periods whose metrics the platform must not compute (a sender's files do not cover them wholly): it
        # names them in reporting.period_coverage instead.
        "periods_not_computed": [
            f"{period_type} {start.isoformat()}"
            for period_type, start, _end in periods()
            if (period_type, start) not in computed
        ],
        "metrics_2024_25_by_council": {
            council: {
                r["metric_code"]: r["value"]
                for r in metrics
                if r["period_type"] == "financial_year"
                and r["geography_level"] == "local_authority"
                and r["geography_code"] == council
            }
            for council in world.councils
        },
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
