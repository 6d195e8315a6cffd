"""Writing a synthetic world as the extracts of docs/contract/extracts.md, exactly as sources send them.

Beside each file the writer notes, from its own knowledge of the world, what the platform must do with
every row it wrote: load it (and as whom), quarantine it, or remove it for an opt-out. That ledger is
what the answer key is worked out from; the platform never sees it.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pophealth.contract.feeds import FEEDS_BY_NAME
from pophealth.synth.world import HISTORY_START, WINDOW_END, WINDOW_START, Event, Person, Spell, World, invalidate

#: The contract's columns as the sources write them, in their order (the feeds' declarations).
GP_REGISTER_WRITTEN, APC_WRITTEN, CLD_WRITTEN = (FEEDS_BY_NAME[f].written for f in ("gp_register", "apc", "cld"))

CLD_PERIOD_ENDS = (
    date(2024, 6, 30),
    date(2024, 9, 30),
    date(2024, 12, 31),
    date(2025, 3, 31),
    date(2025, 6, 30),
    date(2025, 9, 30),
)
POPULATION_YEARS = (2023, 2024, 2025)
#: How the trusts deliver their hospital extracts: a file a month (the spells finished in it, the open ones in the
#: last); one file for the whole window; or cumulative year-to-date files every month (each a superset of the last,
#: with the spells open at its end as they stood, and a few mistakes corrected in the next file). Social care is sent
#: as rolling-year submissions (each repeats the last 12 months): quarterly, or every month with `ytd`.
DELIVERIES = ("monthly", "annual", "ytd")

# The first social care file is a Release 1 submission: these Release 2 values are sent as Release 1.
RELEASE1 = {
    "Service user": "Service User",
    "Unpaid carer": "Carer",
    "Unpaid carer support: Direct to unpaid carer": "Carer Support: Direct to Carer",
    "Long term support: Community": "Long Term Support: Community",
    "Long term support: Residential care": "Long Term Support: Residential Care",
    "Long term support: Nursing care": "Long Term Support: Nursing Care",
    "Short term support: ST-Max": "Short Term Support: ST-Max",
    "Discharge from hospital": "Discharge from Hospital",
    "CASSR commissioned support": "CASSR Commissioned Support",
    "Progress to reablement/ST-Max": "Progress to Reablement/ST-Max",
    "Progress to assessment, review or reassessment": "Progress to Assessment",
    "Progress to support planning or services": "Progress to Support Planning / Services",
    "Continuation of support or services": "Provision of service",
    "NFA: Support ended as planned": "Service ended as planned",
    "NFA: Deceased": "NFA - Deceased",
    "NFA: Support ended for other reason": "NFA - Support ended - other reason",
    "NFA: Self-funded client or under 12wk disregard": "NFA - Self-funded client (inc. 12wk disregard)",
    "NFA: Responsibility moved to another local authority": "NFA - Moved to another LA",
    "NFA: Information and advice or signposting": "NFA - Information & Advice / Signposting only",
    "NFA: Support declined": "NFA - Support declined",
    "NFA: Referral to NHS services or NHS funded social care": "NFA - 100% NHS-funded care",
    "Direct payment": "Direct Payment",
    "CASSR managed personal budget": "CASSR Managed Personal Budget",
    "Community / Other route": "Community / Other Route",
}
SELF_FUNDED = "NFA: Self-funded client or under 12wk disregard"
ETHNICITY = ("A", "A", "A", "A", "A", "A", "A", "B", "C", "D", "H", "J", "N", "S")


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""


def month_end(day: date) -> date:
    following = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return following - timedelta(days=1)


def population_counts(world: World, year: int) -> dict[tuple[str, str, int], int]:
    """The mid-year estimate the world implies: residents alive on 30 June by LSOA, sex and age (90 = 90+)."""
    on = date(year, 6, 30)
    counts: dict[tuple[str, str, int], int] = {}
    for person in world.people:
        if person.birth > on or (person.death and person.death <= on):
            continue
        if person.registration_end and not person.death and person.registration_end <= on:
            continue  # moved away
        sex = person.sex if person.sex in ("1", "2") else ("1" if person.index % 2 else "2")
        key = (person.lsoa.code, sex, min(90, person.age_on(on)))
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(slots=True)
class IdentityFacts:
    """What the loaded rows of one identity say: which feeds it is in, and the dates of death they carry."""

    person: Person
    gp: bool = False
    apc: bool = False
    cld: bool = False
    gp_death: date | None = None
    cld_death: date | None = None  # the latest Date_of_Death on its loaded social care rows
    apc_death: date | None = None  # the disdate of a loaded spell that ended in death (dismeth 4)


@dataclass
class Ledger:
    """The writer's record of every row it wrote that the platform must load, by identity."""

    files: list[dict] = field(default_factory=list)
    identities: dict[str, IdentityFacts] = field(default_factory=dict)
    loaded_spells: list[tuple[str, Spell]] = field(default_factory=list)  # (identity, spell)
    loaded_events: list[tuple[str, Event, date]] = field(default_factory=list)  # (identity, event, latest file)
    # (feed, provider, first day, last day) that each written file's rows cover, as the loader reads it
    # (pophealth.ingest.load.COVERAGE_START): the answer key's metrics are those of the periods every sender covers.
    coverage: list[tuple[str, str, date, date]] = field(default_factory=list)

    def loaded(self, identity: str, feed: str, person: Person, death: date | None = None) -> None:
        facts = self.identities.get(identity)
        if facts is None:
            facts = self.identities[identity] = IdentityFacts(person)
        if feed == "gp_register":
            facts.gp, facts.gp_death = True, death
        elif feed == "apc":
            facts.apc = True
            if death and (facts.apc_death is None or death > facts.apc_death):
                facts.apc_death = death
        else:
            facts.cld = True
            if death and (facts.cld_death is None or death > facts.cld_death):
                facts.cld_death = death


class _Writer:
    def __init__(self, out: Path, world: World, ledger: Ledger, delivery: str = "monthly"):
        self.delivery = delivery
        self.out = out
        self.world = world
        self.ledger = ledger
        self.rng = random.Random(world.seed * 7 + 1)  # the writer's own draws: spellings of numbers

    def spelled(self, number: str) -> str:
        """Sources write NHS numbers with spaces or hyphens now and then."""
        draw = self.rng.random()
        if draw < 0.03:
            return f"{number[:3]} {number[3:6]} {number[6:]}"
        if draw < 0.05:
            return f"{number[:3]}-{number[3:6]}-{number[6:]}"
        return number

    def write(self, name: str, feed: str, header, rows, fates: dict[str, int]) -> None:
        with (self.out / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        # Rows of people with an opt-out are loaded (kept for their direct care) and counted apart: the marts
        # build leaves them out of every secondary use (contract v2).
        read = fates["loaded"] + fates["quarantined"] + fates["opted_out"]
        self.ledger.files.append(
            {
                "file_name": name,
                "feed": feed,
                "rows_read": read,
                "rows_loaded": fates["loaded"] + fates["opted_out"],
                "rows_quarantined": fates["quarantined"],
                "rows_opted_out": fates["opted_out"],
            }
        )

    # -- reference data ---------------------------------------------------------------------------------------
    def reference(self) -> None:
        # One council's world sends the lookup without la_code (the contract's default: one council's area);
        # a world of several councils names each postcode's council.
        several = len(self.world.councils) > 1
        header = ("postcode", "lsoa_code", "locality_code", "locality_name") + (("la_code",) if several else ())
        rows = [
            (postcode, lsoa.code, lsoa.locality_code, lsoa.locality_name) + ((lsoa.la_code,) if several else ())
            for locality in self.world.localities
            for lsoa in locality.lsoas
            for postcode in lsoa.postcodes
        ]
        self.write(
            "ref_postcode_lookup.csv",
            "ref_postcode_lookup",
            header,
            rows,
            {"loaded": len(rows), "quarantined": 0, "opted_out": 0},
        )
        for year in POPULATION_YEARS:
            counts = population_counts(self.world, year)
            estimates = [
                (lsoa.code, sex, age, counts.get((lsoa.code, sex, age), 0))
                for locality in self.world.localities
                for lsoa in locality.lsoas
                for sex in ("1", "2")
                for age in range(91)
            ]
            self.write(
                f"ref_population_{year}.csv",
                "ref_population",
                ("lsoa_code", "sex", "age", "population"),
                estimates,
                {"loaded": len(estimates), "quarantined": 0, "opted_out": 0},
            )

    # -- opt-outs ---------------------------------------------------------------------------------------------
    def optouts(self) -> None:
        numbers = [p.nhs_number for p in self.world.people if p.opted_out] + self.world.extra_optout_numbers
        self.rng.shuffle(numbers)
        invalid = [invalidate(n) for n in self.world.extra_optout_numbers[:2]]
        rows = [(self.spelled(n),) for n in numbers] + [(n,) for n in invalid]
        self.write(
            f"optouts_{WINDOW_END:%Y%m%d}.csv",
            "optouts",
            ("nhs_number",),
            rows,
            {"loaded": len(numbers), "quarantined": len(invalid), "opted_out": 0},
        )

    # -- the GP register ------------------------------------------------------------------------------------------
    def gp_register(self) -> None:
        rows = []
        fates = {"loaded": 0, "quarantined": 0, "opted_out": 0}
        for person in self.world.people:
            if not person.registered:
                continue
            if person.registration_end and person.registration_end < WINDOW_START:
                continue
            if person.death and person.death < WINDOW_START:
                continue
            number = invalidate(person.nhs_number) if person.gp_number_invalid else person.nhs_number
            rows.append(
                (
                    self.spelled(number),
                    _iso(person.birth),
                    person.sex,
                    person.postcode,
                    person.practice,
                    _iso(person.registration_start),
                    _iso(person.registration_end),
                    _iso(person.death),
                )
            )
            if person.gp_number_invalid:
                fates["quarantined"] += 1
            elif person.opted_out:
                fates["opted_out"] += 1
            else:
                fates["loaded"] += 1
                self.ledger.loaded(f"nhs:{person.nhs_number}", "gp_register", person, person.death)
        self.write(f"gp_register_{WINDOW_END:%Y%m%d}.csv", "gp_register", GP_REGISTER_WRITTEN, rows, fates)

    # -- hospital -------------------------------------------------------------------------------------------------
    def apc(self) -> None:
        """The trusts' files, by the writer's delivery pattern (DELIVERIES). Every pattern holds the same spells as
        they stand at the end of the window, so the platform must give the same metrics from each."""
        spells = [spell for spell in self.world.spells if spell.admidate >= WINDOW_START]
        files: dict[tuple[str, date], list[tuple[Spell, date | None]]] = {}  # -> (spell, as at; None: as finished)
        if self.delivery == "monthly":
            for spell in spells:
                period = month_end(spell.disdate) if spell.disdate else month_end(WINDOW_END)
                files.setdefault((spell.procode, period), []).append((spell, None))
        elif self.delivery == "annual":
            # One file per trust for the whole window (what a trust sends once a year).
            for spell in spells:
                files.setdefault((spell.procode, WINDOW_END), []).append((spell, None))
        else:
            # Year to date, every month, as SUS sends it: each file holds every spell finished since the start of its
            # financial year, and the spells still open at its end as they stood then (so a spell that starts in one
            # file's period and ends in the next arrives unfinished, then finished).
            period = month_end(WINDOW_START)
            while period <= WINDOW_END:
                year_start = date(period.year - (period.month < 4), 4, 1)
                for spell in spells:
                    if spell.disdate and year_start <= spell.disdate <= period:
                        files.setdefault((spell.procode, period), []).append((spell, None))
                    elif spell.admidate <= period and (spell.disdate is None or spell.disdate > period):
                        files.setdefault((spell.procode, period), []).append((spell, period))
                period = month_end(period + timedelta(days=1))
        for procode in sorted({p for p, _ in files}):
            period = month_end(WINDOW_START)
            while period <= WINDOW_END:
                if files.get((procode, period)):  # a trust with no finished spell in a month sends no file
                    self._apc_file(procode, period, files[(procode, period)])
                period = month_end(period + timedelta(days=1))
        for spell in spells:
            if not (spell.person.opted_out and not spell.invalid_number):
                self.ledger.loaded_spells.append((self._apc_identity(spell), spell))

    @staticmethod
    def _apc_identity(spell: Spell) -> str:
        return f"spell:{spell.procode}|{spell.spell_id}" if spell.invalid_number else f"nhs:{spell.person.nhs_number}"

    def _mistaken(self, spell: Spell, period: date) -> bool:
        """Year-to-date files only: a few emergency spells are first sent as elective in the file of the month they
        finished, and corrected in every later file of the year (a late correction inside a cumulative file)."""
        last_of_year = date(period.year + (period.month >= 4), 3, 31)
        return (
            self.delivery == "ytd"
            and spell.emergency
            and spell.disdate is not None
            and month_end(spell.disdate) == period
            and period < min(last_of_year, WINDOW_END)
            and int(spell.spell_id[-3:]) % 7 == 0
        )

    def _apc_file(self, procode: str, period: date, spells: list[tuple[Spell, date | None]]) -> None:
        rows = []
        fates = {"loaded": 0, "quarantined": 0, "opted_out": 0}
        for spell, as_at in spells:
            person = spell.person
            number = invalidate(person.nhs_number) if spell.invalid_number else person.nhs_number
            written = self.spelled(number)
            identity = self._apc_identity(spell)
            removed = person.opted_out and not spell.invalid_number
            finished = as_at is None
            for order, episode in enumerate(spell.episodes, start=1):
                if as_at is not None and episode.epistart > as_at:
                    break  # not begun yet on the file's period end
                diagnoses = list(episode.diagnoses) + [""] * (20 - len(episode.diagnoses))
                epiend = episode.epiend if as_at is None or (episode.epiend and episode.epiend <= as_at) else None
                ready = spell.discharge_ready_date
                ready = ready if as_at is None or (ready and ready <= as_at) else None
                row = {
                    "epikey": f"{spell.spell_id}{order:02d}",
                    "spell_id": spell.spell_id,
                    "nhs_number": written,
                    "nhs_number_status": "01",
                    "date_of_birth": _iso(person.birth),
                    "sex": person.sex,
                    "postcode": person.postcode,
                    "gp_practice_code": person.apc_practice,
                    "procode": spell.procode,
                    "admidate": _iso(spell.admidate),
                    "disdate": _iso(spell.disdate if finished else None),
                    "epistart": _iso(episode.epistart),
                    "epiend": _iso(epiend),
                    "epiorder": str(order),
                    "admimeth": "11" if self._mistaken(spell, period) else spell.admimeth,
                    "admisorc": spell.admisorc,
                    "disdest": spell.disdest if finished else "98",
                    "dismeth": spell.dismeth if finished else "8",
                    "classpat": spell.classpat,
                    "mainspef": spell.mainspef,
                    "tretspef": spell.mainspef,
                    "discharge_ready_date": _iso(ready),
                }
                row.update({f"diag_{i:02d}": code for i, code in enumerate(diagnoses, start=1)})
                rows.append([row[c] for c in APC_WRITTEN])
                if removed:
                    fates["opted_out"] += 1
                else:
                    fates["loaded"] += 1
                    self.ledger.loaded(
                        identity, "apc", person, spell.disdate if finished and spell.dismeth == "4" else None
                    )
        self.write(f"apc_{procode}_{period:%Y%m%d}.csv", "apc", APC_WRITTEN, rows, fates)
        if rows:  # from the first discharge (or, with none, the first episode end) in the file, to its period end
            disdate_at, epiend_at = APC_WRITTEN.index("disdate"), APC_WRITTEN.index("epiend")
            dated = [r[disdate_at] for r in rows if r[disdate_at]] or [r[epiend_at] for r in rows if r[epiend_at]]
            first = period.replace(day=1)
            if dated:
                first = min(first, date.fromisoformat(min(dated)).replace(day=1))
            self.ledger.coverage.append(("apc", procode, first, period))

    # -- social care ------------------------------------------------------------------------------------------------
    def cld(self) -> None:
        """Each council sends its own files (cld_<LA code>_<date>.csv) with the events of the people it supports:
        here, its residents."""
        for council in self.world.councils:
            self._council_cld(council)

    def _council_cld(self, council: str) -> None:
        events = sorted(
            (e for e in self.world.events if e.person.lsoa.la_code == council),
            key=lambda e: (e.person.index, e.start, e.event_type),
        )
        last_file: dict[int, date] = {}
        period_ends = list(CLD_PERIOD_ENDS)
        if self.delivery == "ytd":
            # The council resubmits its rolling year every month: each file repeats eleven months of the last.
            period_ends = [CLD_PERIOD_ENDS[0]]
            while period_ends[-1] < WINDOW_END:
                period_ends.append(month_end(period_ends[-1] + timedelta(days=1)))
        for file_number, period_end in enumerate(period_ends):
            period_start = date(period_end.year - 1, period_end.month, period_end.day) + timedelta(days=1)
            release1 = file_number == 0
            rows = []
            fates = {"loaded": 0, "quarantined": 0, "opted_out": 0}
            for n, event in enumerate(events):
                if event.start > period_end:
                    continue
                if event.start < period_start and not (
                    event.event_type == "Service" and (event.end is None or event.end >= period_start)
                ):
                    continue
                rows.append(self._cld_row(event, council, period_start, period_end, release1, f"{file_number}-{n}"))
                person = event.person
                if person.cld_number == "valid" and person.opted_out:
                    fates["opted_out"] += 1
                    continue
                fates["loaded"] += 1
                identity = (
                    f"nhs:{person.nhs_number}" if person.cld_number == "valid" else f"la:{council}|{person.local_id}"
                )
                death = person.death if person.death and person.death <= period_end else None
                self.ledger.loaded(identity, "cld", person, death)
                last_file[id(event)] = period_end
            self.write(f"cld_{council}_{period_end:%Y%m%d}.csv", "cld", CLD_WRITTEN, rows, fates)
            if rows:  # a file with no rows is refused by the loader: it covers nothing
                self.ledger.coverage.append(("cld", council, period_start.replace(day=1), period_end))
        for event in events:
            if id(event) in last_file:
                person = event.person
                identity = (
                    f"nhs:{person.nhs_number}" if person.cld_number == "valid" else f"la:{council}|{person.local_id}"
                )
                self.ledger.loaded_events.append((identity, event, last_file[id(event)]))

    def _cld_row(
        self, event: Event, council: str, period_start: date, period_end: date, release1: bool, reference: str
    ) -> list:
        person = event.person

        def value(v):
            return RELEASE1.get(v, v) if (release1 and v) else (v or "")

        numbers = {"valid": person.nhs_number, "invalid": invalidate(person.nhs_number), "missing": ""}
        number = numbers[person.cld_number]
        end = event.end if event.end and event.end <= period_end else None
        death = person.death if person.death and person.death <= period_end else None
        gender = {"1": "Male", "2": "Female"}.get(person.sex, "Other")
        row = {
            "LA_Code": council,
            "Reporting_Period_Start_Date": _iso(period_start),
            "Reporting_Period_End_Date": _iso(period_end),
            "Client_Type": value(event.client_type),
            "LA_Person_Unique_Identifier": person.local_id,
            "NHS_Number": self.spelled(number) if number else "",
            "Gender": gender,
            "Ethnicity": ETHNICITY[person.index % len(ETHNICITY)],
            "Date_of_Birth": _iso(person.birth),
            "Date_of_Death": _iso(death),
            "Postcode": person.postcode,
            "Primary_Support_Reason": event.support_reason,
            "Accommodation_Status": event.accommodation,
            "Event_Type": event.event_type,
            "Event_Reference": reference,
            "Event_Start_Date": _iso(event.start),
            "Event_End_Date": _iso(end),
            # An open service's outcome is not known yet, except that the council already knows who pays.
            "Event_Outcome": value(event.outcome)
            if (end or event.event_type != "Service" or event.outcome == SELF_FUNDED)
            else value("Continuation of support or services"),
            "Request_Route_of_Access": value(event.route),
            "Assessment_Type": event.assessment_type or "",
            "Service_Type": value(event.service_type),
            "Service_Component": event.component or "",
            "Delivery_Mechanism": value(event.delivery),
            "Review_Reason": event.review_reason or "",
            "Unit_Cost": event.unit_cost or "",
            "Cost_Frequency_Unit_Type": event.cost_unit or "",
            "Planned_units_per_week": event.units or "",
        }
        return [row[c] for c in CLD_WRITTEN]


def write_extracts(world: World, out: Path, delivery: str = "monthly") -> Ledger:
    if delivery not in DELIVERIES:
        raise ValueError(f"unknown delivery pattern {delivery!r}: one of {', '.join(DELIVERIES)}")
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger()
    writer = _Writer(out, world, ledger, delivery)
    writer.reference()
    writer.optouts()
    writer.gp_register()
    writer.apc()
    writer.cld()
    return ledger


__all__ = ["write_extracts", "DELIVERIES", "Ledger", "IdentityFacts", "CLD_PERIOD_ENDS", "HISTORY_START"]
