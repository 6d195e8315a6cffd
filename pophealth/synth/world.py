"""A synthetic population and what happens to it: hospital spells, social care events, registrations, deaths.

The structure is what real data has, at Essex proportions: an age and sex profile with about 20% aged
65 and over; a hidden frailty, rising with age, that drives emergency admissions, social care use and
death; falls with injury codes; delayed discharges; readmissions; reablement after discharge; care home
admissions. Everything is drawn from one `random.Random(seed)`, in one order, so a seed always gives
the same world. Nothing here writes files: `extracts` does, from this world.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from pophealth.contract.identifiers import nhs_check_digit
from pophealth.synth.geography import AREA_CODE, Locality, Lsoa, build_geography

HISTORY_START = date(2023, 7, 1)  # social care history starts here: the first rolling 12-month file is whole
WINDOW_START = date(2024, 4, 1)  # hospital extracts cover the window
WINDOW_END = date(2025, 9, 30)  # the as-of date
PROVIDERS = ("RAJ", "RDE", "RQW")

# Age profile at 2023-07-01 (5-year bands from 0-4 to 100-104), Essex-like: about 20% aged 65 and over
# and 8.4% aged 76 and over by mid-2024.
AGE_BAND_SHARES = (
    0.056,
    0.060,
    0.058,
    0.055,
    0.053,
    0.058,
    0.060,
    0.061,
    0.062,
    0.068,
    0.072,
    0.068,
    0.060,
    0.060,
    0.047,
    0.035,
    0.025,
    0.016,
    0.007,
    0.0017,
    0.0003,
)

# Which trust a locality mostly uses.
HOME_PROVIDER = {
    "E07000066": "RAJ",
    "E07000069": "RAJ",
    "E07000075": "RAJ",
    "E07000068": "RAJ",
    "E07000070": "RAJ",
    "E07000074": "RAJ",
    "E07000071": "RDE",
    "E07000076": "RDE",
    "E07000067": "RDE",
    "E07000072": "RQW",
    "E07000073": "RQW",
    "E07000077": "RQW",
}

HFRS_CODES = (
    "F00",
    "G81",
    "G30",
    "I69",
    "R29",
    "N39",
    "F05",
    "W19",
    "S00",
    "R31",
    "B96",
    "R41",
    "R26",
    "I67",
    "R56",
    "R40",
    "T83",
    "S06",
    "S42",
    "E87",
    "M25",
    "E86",
    "R54",
    "Z50",
    "F03",
    "W18",
    "Z75",
    "F01",
    "S80",
    "L03",
    "H54",
    "E53",
    "Z60",
    "G20",
    "R55",
    "S22",
    "K59",
    "N17",
    "L89",
    "Z22",
    "B95",
    "L97",
    "R44",
    "K26",
    "I95",
    "N19",
    "A41",
    "Z87",
    "J96",
    "X59",
    "M19",
    "G40",
    "M81",
    "S72",
    "S32",
    "E16",
    "R94",
    "N18",
    "R33",
    "R69",
    "N28",
    "R32",
    "G31",
    "Y95",
    "S09",
    "R45",
    "G45",
    "Z74",
    "M79",
    "W06",
    "S01",
    "A04",
    "A09",
    "J18",
    "J69",
    "R47",
    "E55",
    "Z93",
    "R02",
    "R63",
    "H91",
    "W10",
    "W01",
    "E05",
    "M41",
    "R13",
    "Z99",
    "U80",
    "M80",
    "K92",
    "I63",
    "N20",
    "F10",
    "Y84",
    "R00",
    "J22",
    "Z73",
    "R79",
    "Z91",
    "S51",
    "F32",
    "M48",
    "E83",
    "M15",
    "D64",
    "L08",
    "R11",
    "K52",
    "R50",
)
EMERGENCY_PRIMARY = (
    "J18.9",
    "N39.0",
    "I50.0",
    "J44.1",
    "I63.9",
    "R55",
    "R06.0",
    "K59.0",
    "A41.9",
    "E86",
    "I21.9",
    "R07.4",
    "L03.1",
    "J22",
    "F05.9",
    "R29.6",
    "R41.0",
    "K92.2",
    "N17.9",
    "R10.4",
)
ELECTIVE_PRIMARY = ("K80.2", "H25.9", "M17.1", "C50.9", "Z51.1", "K40.9", "N40", "M16.1", "C18.7", "I25.1")
FALL_INJURIES = ("S72.0", "S72.1", "S42.2", "S06.0", "S22.4", "S32.5", "S52.5", "S00.8", "S01.0", "T14.0")
FALL_CAUSES = ("W19", "W01", "W10", "W06", "W18", "W05")
COMORBIDITIES = ("I10", "E11.9", "J44.9", "N18.3", "I48.9", "E78.0", "Z86.7", "I25.9", "M81.9", "F32.9")


@dataclass(slots=True)
class Person:
    index: int
    nhs_number: str
    birth: date
    sex: str
    lsoa: Lsoa
    postcode: str
    practice: str
    frailty: float
    local_id: str  # the council's id, used only if the person reaches social care
    registered: bool = True
    registration_start: date | None = None
    registration_end: date | None = None
    death: date | None = None
    died_in_hospital: bool = False
    opted_out: bool = False
    gp_number_invalid: bool = False  # the register holds a mistyped number for them
    cld_number: str = "valid"  # valid, missing or invalid on every social care row

    @property
    def apc_practice(self) -> str:
        """The practice a hospital records: the registered one, or 'not known' for people not registered here."""
        return self.practice if self.registered else NO_PRACTICE

    def on_register_at(self, day: date) -> bool:
        """On the GP register, alive and not opted out on `day`: the people risk stratification ranks."""
        return (
            self.registered
            and not self.opted_out
            and not self.gp_number_invalid
            and (self.registration_end is None or self.registration_end > day)
            and (self.death is None or self.death > day)
        )

    def age_on(self, day: date) -> int:
        return day.year - self.birth.year - ((day.month, day.day) < (self.birth.month, self.birth.day))


@dataclass(slots=True)
class Episode:
    epistart: date
    epiend: date | None
    diagnoses: tuple[str, ...]


@dataclass(slots=True)
class Spell:
    person: Person
    procode: str
    spell_id: str
    admidate: date
    disdate: date | None  # None: not finished at the end of the window
    admimeth: str
    episodes: list[Episode]
    dismeth: str
    disdest: str
    classpat: str
    mainspef: str
    discharge_ready_date: date | None = None
    invalid_number: bool = False  # every episode carries a mistyped NHS number
    admisorc: str = "19"

    @property
    def emergency(self) -> bool:
        return self.admimeth in ("21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28")


@dataclass(slots=True)
class Event:
    person: Person
    event_type: str
    start: date
    end: date | None = None
    outcome: str | None = None
    client_type: str = "Service user"
    route: str | None = None
    assessment_type: str | None = None
    service_type: str | None = None
    component: str | None = None
    delivery: str | None = None
    review_reason: str | None = None
    unit_cost: str | None = None
    cost_unit: str | None = None
    units: str | None = None
    support_reason: str = "Physical support: Personal care support"
    accommodation: str = "Owner occupier or shared ownership scheme"


@dataclass
class World:
    population: int
    seed: int
    localities: tuple[Locality, ...]
    people: list[Person]
    spells: list[Spell]
    events: list[Event]
    extra_optout_numbers: list[str] = field(default_factory=list)

    @property
    def councils(self) -> tuple[str, ...]:
        """The councils of the world, in the order given (each person lives in one: their LSOA's)."""
        return tuple(dict.fromkeys(locality.la_code for locality in self.localities))


# ------------------------------------------------------------------------------------------------------
# NHS numbers: the 999 test range holds about 900,000 valid numbers; a world bigger than that (Essex at full
# scale) continues in the 998, 997, ... blocks, which NHS England does not issue either.

NUMBERS_PER_REGISTERED = 1.2  # people drawn per person on the register at the end: about 1.1
_VALID_PER_BLOCK = 880_000  # valid numbers in a block of a million stems, with a margin (1 in 11 has no check digit)


def _nhs_numbers(rng: random.Random, count: int) -> list[str]:
    blocks = 1 + (count - 1) // _VALID_PER_BLOCK
    draws = min(blocks * 1_000_000, int(count * 1.12) + 100 * blocks)
    numbers: list[str] = []
    for stem in rng.sample(range(blocks * 1_000_000), draws):
        prefix = 999 - stem // 1_000_000
        body = f"{prefix}{stem % 1_000_000:06d}"
        digit = nhs_check_digit(body)
        if digit is not None and len(set(body + str(digit))) > 1:
            numbers.append(body + str(digit))
            if len(numbers) == count:
                return numbers
    raise RuntimeError("not enough NHS numbers drawn")  # cannot happen: 1 stem in 11 fails, the margin is 12%


def invalidate(number: str) -> str:
    """The same number with a wrong check digit (still ten digits)."""
    return number[:9] + str((int(number[9]) + 3) % 10)


# ------------------------------------------------------------------------------------------------------
# Rates, per year, by age. Tuned so that a world lands near the reference figures of
# docs/contract/reference-figures.md: about 95 emergency spells per 1,000 people a year and 405 per
# 1,000 aged 75+, 633 falls admissions and 583 care home admissions per 100,000 aged 65+, 82% of older
# people at home 91 days after reablement, about 10 delayed days per day per 100,000 aged 18+, deaths
# about 1% a year.

EMERGENCY_RATE = ((18, 0.040), (45, 0.034), (65, 0.055), (75, 0.16), (85, 0.37), (200, 0.66))
ELECTIVE_RATE = ((18, 0.03), (65, 0.07), (200, 0.14))
DEATH_RATE = ((50, 0.00035), (65, 0.002), (75, 0.006), (85, 0.019), (200, 0.056))
FALL_SHARE = ((65, 0.0018), (75, 0.0069), (85, 0.0116), (200, 0.0224))  # of emergency spells, x frailty / 1.5
EARLY_READMISSION = 0.065  # chance of an emergency readmission within 30 days, x frailty
REABLEMENT_SHARE = 0.11  # of people aged 65+ discharged home alive after an emergency spell
REABLEMENT_SUCCESS = ((75, 0.87), (85, 0.84), (200, 0.79))  # at home 91 days later (England 2014/15)
CARE_HOME_FROM_HOSPITAL = 0.0055  # per emergency discharge aged 75+, x frailty
CARE_HOME_FROM_COMMUNITY = 0.0023  # per person aged 65+ over the history, x frailty
DELAYED_SHARE = 0.19  # of emergency spells aged 65+ staying 3 days or more
SELF_FUNDED_SHARE = 0.1
NO_PRACTICE = "V81999"  # the national code for "registered practice not known"
SELF_FUNDED = "NFA: Self-funded client or under 12wk disregard"


def _by_age(table: tuple[tuple[int, float], ...], age: int) -> float:
    for upper, value in table:
        if age < upper:
            return value
    return table[-1][1]


def _days(d: date, n: float) -> date:
    return d + timedelta(days=int(n))


class _Simulation:
    def __init__(self, population: int, seed: int, councils: tuple[str, ...] = (AREA_CODE,)):
        self.rng = random.Random(seed)
        self.population = population
        self.seed = seed
        self.localities = build_geography(population, councils)
        self.spells: list[Spell] = []
        self.events: list[Event] = []
        self.spell_counter = dict.fromkeys(PROVIDERS, 0)

    # -- people -----------------------------------------------------------------------------------------
    def person(self, index: int, number: str) -> Person:
        """One person as they are at the start of the history (who they are, where, how frail)."""
        rng = self.rng
        band = min(bisect.bisect(self.cumulative_age, rng.random() * self.cumulative_age[-1]), len(AGE_BAND_SHARES) - 1)
        age = band * 5 + rng.randrange(5)
        birth = _days(HISTORY_START, -(age * 365.25 + rng.randrange(1, 365)))
        sex = "2" if rng.random() < (0.5 if age < 65 else 0.55 if age < 85 else 0.65) else "1"
        if rng.random() < 0.0005:
            sex = "9"
        locality = self.localities[
            min(
                bisect.bisect(self.cumulative_place, rng.random() * self.cumulative_place[-1]), len(self.localities) - 1
            )
        ]
        lsoa = rng.choice(locality.lsoas)
        frailty = rng.lognormvariate(-0.18, 0.6)
        person = Person(
            index=index,
            nhs_number=number,
            birth=birth,
            sex=sex,
            lsoa=lsoa,
            postcode=rng.choice(lsoa.postcodes),
            practice=rng.choice(locality.practices),
            frailty=frailty,
            local_id=f"EC{(index * 7919 + 104729) % 10_000_000:07d}",
        )
        person.registered = rng.random() > 0.015
        if person.registered:
            person.registration_start = max(birth, _days(date(1995, 1, 1), rng.randrange(10_400)))
        person.opted_out = rng.random() < 0.05
        person.gp_number_invalid = rng.random() < 0.001
        draw = rng.random()
        person.cld_number = "missing" if draw < 0.08 else "invalid" if draw < 0.085 else "valid"
        return person

    # -- one life -----------------------------------------------------------------------------------------
    def live(self, person: Person) -> None:
        rng = self.rng
        age = person.age_on(HISTORY_START)
        frail = person.frailty * (1.0 + max(0, age - 60) / 15)
        self.frail = frail
        death_rate = _by_age(DEATH_RATE, age) * min(frail, 6.0)
        self.until = WINDOW_END
        if rng.random() < 1 - math.exp(-death_rate * 2.25):
            person.death = _days(HISTORY_START, rng.randrange(822))
            self.until = person.death
        moved = self.moved = None
        if person.registered and rng.random() < 0.01:  # moved out of the area: nothing more is known here
            moved = self.moved = person.registration_end = _days(WINDOW_START, rng.randrange(540))
            if person.registration_start and person.registration_start > moved:
                person.registration_start = max(person.birth, _days(moved, -rng.randrange(1, 3000)))
            self.until = min(self.until, moved)
        self.protected: list[tuple[date, date]] = []  # days 1-91 after a reablement that worked
        self.in_care_home = False
        self._social_care_at_start(person, age, frail)
        t = HISTORY_START
        readmission: date | None = None  # an emergency readmission already decided on
        no_emergency_before = t
        while True:
            age_now = person.age_on(t)
            emergency_rate = _by_age(EMERGENCY_RATE, age_now) * person.frailty * (1.5 if self.in_care_home else 1.0)
            # Exponential gaps are memoryless, so drawing both afresh after every spell is exact.
            next_emergency = _days(max(t, no_emergency_before), rng.expovariate(emergency_rate / 365))
            if readmission is not None and readmission < next_emergency:
                next_emergency = readmission
            next_elective = _days(t, rng.expovariate(_by_age(ELECTIVE_RATE, age_now) / 365))
            admission = min(next_emergency, next_elective)
            if admission > self.until:
                break
            emergency = next_emergency <= next_elective
            spell = self._spell(person, admission, emergency, frail)
            readmission, no_emergency_before = None, spell.admidate
            if spell.disdate is None or spell.dismeth == "4":
                break
            t = spell.disdate
            if emergency and person.age_on(t) >= 65:
                readmission, no_emergency_before = self._after_discharge(person, spell)
            if (
                emergency
                and readmission is None
                and no_emergency_before <= t
                and rng.random() < EARLY_READMISSION * min(frail, 4.0)
            ):
                readmission = _days(t, rng.randrange(30))
            if readmission is not None and readmission > self.until:
                readmission = None
        if not self.in_care_home and age >= 65 and rng.random() < CARE_HOME_FROM_COMMUNITY * min(frail, 4.0) * 2.25:
            start = _days(HISTORY_START, rng.randrange(822))
            for first, last in self.protected:
                if first <= start <= last:
                    start = _days(last, 1 + rng.randrange(60))
            if start <= self.until:
                self._care_home(person, start, route="Community / Other route")
        self._finish(person, moved)

    def _finish(self, person: Person, moved: date | None) -> None:
        """Death and moving away end everything: nothing is recorded after them."""
        if person.death is not None and (person.death > WINDOW_END or (moved and person.death > moved)):
            person.death = None
        if person.death is not None:
            if person.registered:
                person.registration_end = person.death
                if person.registration_start and person.registration_start > person.death:
                    person.registration_start = person.birth
            for event in self._mine:
                if event.start <= person.death and (event.end is None or event.end > person.death):
                    event.end, event.outcome = person.death, "NFA: Deceased"
            self._mine = [e for e in self._mine if e.start <= person.death]
        elif moved is not None:
            for event in self._mine:
                if event.start <= moved and (event.end is None or event.end > moved):
                    event.end, event.outcome = moved, "NFA: Responsibility moved to another local authority"
            self._mine = [e for e in self._mine if e.start <= moved]
        self.events.extend(self._mine)
        self._mine = []

    def _die(self, person: Person, day: date) -> None:
        """A death earlier than the one drawn at the start of the life (or the only one)."""
        if person.death is None or day < person.death:
            person.death = day
            self.until = min(self.until, day)

    # -- hospital -------------------------------------------------------------------------------------------
    def _spell(self, person: Person, admission: date, emergency: bool, frail: float) -> Spell:
        rng = self.rng
        age = person.age_on(admission)
        home = HOME_PROVIDER.get(person.lsoa.locality_code, "RAJ")  # Southend and Thurrock: RAJ's hospitals
        procode = home if rng.random() < 0.9 else rng.choice(PROVIDERS)
        self.spell_counter[procode] += 1
        spell_id = f"{procode}{self.spell_counter[procode]:08d}"
        fall = emergency and rng.random() < _by_age(FALL_SHARE, age) * min(frail, 3.0) / 1.5
        if emergency:
            mean_los = 7.7 if age >= 75 else 5.0 if age >= 65 else 3.0
            los = int(rng.expovariate(1 / mean_los)) + (1 if rng.random() < 0.7 else 0)
            classpat = "1"
            admimeth = rng.choices(("21", "22", "23", "24", "2A", "2B", "28"), (80, 9, 1, 1, 4, 2, 3))[0]
            mainspef = "430" if age >= 75 and rng.random() < 0.6 else "110" if fall else "300"
        else:
            day_case = rng.random() < 0.6
            los = 0 if day_case else 1 + int(rng.expovariate(1 / 3))
            classpat = "2" if day_case else "1"
            admimeth = rng.choices(("11", "12", "13"), (70, 25, 5))[0]
            mainspef = rng.choice(("100", "101", "110", "130", "120", "502"))
        discharge = _days(admission, los)
        died = False
        if person.death is not None and person.death <= discharge:
            discharge, died = max(person.death, admission), True
        elif emergency and rng.random() < (0.006 if age < 65 else 0.02 if age < 85 else 0.045) * min(frail, 3.0):
            died = True
        finished = discharge <= WINDOW_END
        if died and finished:
            person.died_in_hospital = True
            self._die(person, discharge)
        elif died:
            died = False  # dies after the end of the window: not known yet
        # Diagnoses: the primary, then comorbidities and frailty codes, more of them for frailer people.
        if fall:
            primary = rng.choice(FALL_INJURIES)
            extra = [rng.choice(FALL_CAUSES)]
        else:
            primary = rng.choice(EMERGENCY_PRIMARY if emergency else ELECTIVE_PRIMARY)
            extra = []
        for _ in range(min(12, int(rng.expovariate(1 / (1 + 2.5 * min(frail, 4.0) * (age >= 65)))))):
            extra.append(rng.choice(HFRS_CODES) if rng.random() < 0.5 else rng.choice(COMORBIDITIES))
        codes = [primary] + [c for c in dict.fromkeys(extra) if c != primary]
        codes = [self._spelling(c) for c in codes[:20]]
        episodes = self._episodes(admission, discharge if finished else None, codes)
        ready = None
        if emergency and finished and not died and age >= 65 and los >= 3 and rng.random() < DELAYED_SHARE:
            ready = _days(discharge, -min(los - 1, 1 + int(rng.expovariate(1 / 5.5))))
        if died:
            dismeth, disdest = "4", "79"
        elif finished:
            dismeth = rng.choices(("1", "2", "3", "9"), (95, 3, 1, 1))[0]
            disdest = "85" if self.in_care_home else rng.choices(("19", "51", "29"), (96, 3, 1))[0]
        else:
            dismeth, disdest = "8", "98"
        spell = Spell(
            person,
            procode,
            spell_id,
            admission,
            discharge if finished else None,
            admimeth,
            episodes,
            dismeth,
            disdest,
            classpat,
            mainspef,
            ready,
            invalid_number=rng.random() < 0.003,
        )
        spell.admisorc = "85" if self.in_care_home else rng.choices(("19", "51", "29"), (96, 3, 1))[0]
        self.spells.append(spell)
        return spell

    def _spelling(self, code: str) -> str:
        """Sources write ICD-10 codes with and without the dot."""
        return code.replace(".", "") if "." in code and self.rng.random() < 0.4 else code

    def _episodes(self, admission: date, discharge: date | None, codes: list[str]) -> list[Episode]:
        """One to three contiguous episodes; every episode keeps the primary and the second diagnosis."""
        rng = self.rng
        end = discharge if discharge is not None else WINDOW_END
        length = (end - admission).days
        count = 1 if length < 3 else rng.choices((1, 2, 3), (70, 22, 8))[0]
        cuts = sorted(rng.sample(range(1, length), count - 1)) if count > 1 else []
        bounds = [admission] + [_days(admission, c) for c in cuts] + [end]
        episodes = []
        for i in range(len(bounds) - 1):
            last = i == len(bounds) - 2
            episode_codes = tuple(codes) if i == 0 else tuple(codes[:2] + codes[3:])
            episodes.append(Episode(bounds[i], None if (last and discharge is None) else bounds[i + 1], episode_codes))
        return episodes

    # -- social care ------------------------------------------------------------------------------------------
    def _social_care_at_start(self, person: Person, age: int, frail: float) -> None:
        rng = self.rng
        until = self.until
        if 18 <= age < 80 and rng.random() < 0.008:
            start = _days(HISTORY_START, rng.randrange(800))
            if start <= until:
                self._add(
                    Event(
                        person,
                        "Assessment",
                        _days(start, -14),
                        _days(start, -7),
                        "Progress to support planning or services",
                        client_type="Unpaid carer",
                        assessment_type="Long term assessment",
                        support_reason="Support to carer",
                    )
                )
                self._add(
                    Event(
                        person,
                        "Service",
                        start,
                        _days(start, 90 + rng.randrange(200)),
                        "NFA: Support ended as planned",
                        client_type="Unpaid carer",
                        service_type="Unpaid carer support: Direct to unpaid carer",
                        component="Direct payment",
                        delivery="Direct payment",
                        unit_cost="250.00",
                        cost_unit="One-off",
                        support_reason="Support to carer",
                    )
                )
        # Contacts that end in information and advice, or elsewhere.
        if age >= 18 and rng.random() < (0.006 if age < 65 else 0.02 * min(frail, 4.0)):
            start = _days(HISTORY_START, rng.randrange(822))
            if start <= until:
                self._add(
                    Event(
                        person,
                        "Request",
                        start,
                        start,
                        rng.choice(
                            (
                                "NFA: Information and advice or signposting",
                                "NFA: Information and advice or signposting",
                                "NFA: Referral to NHS services or NHS funded social care",
                                "NFA: Support declined",
                            )
                        ),
                        route="Community / Other route",
                    )
                )
        share = 0.004 if age < 65 else 0.02 if age < 75 else 0.06 if age < 85 else 0.18
        if rng.random() < share * min(frail, 4.0) / 1.5:
            started = _days(HISTORY_START, -rng.randrange(30, 1500))
            self._long_term_community(person, started, with_pathway=False)
        elif age >= 65 and rng.random() < 0.015 * min(frail, 4.0) * 2.25:
            start = _days(HISTORY_START, rng.randrange(822))
            if start <= until:
                self._long_term_community(person, start, with_pathway=True)

    def _long_term_community(self, person: Person, start: date, with_pathway: bool) -> None:
        rng = self.rng
        if with_pathway:
            self._add(
                Event(
                    person,
                    "Request",
                    _days(start, -21),
                    _days(start, -21),
                    "Progress to assessment, review or reassessment",
                    route="Community / Other route",
                )
            )
            self._add(
                Event(
                    person,
                    "Assessment",
                    _days(start, -10),
                    _days(start, -3),
                    "Progress to support planning or services",
                    assessment_type="Long term assessment",
                )
            )
        self._add(
            Event(
                person,
                "Service",
                start,
                None,
                "Continuation of support or services",
                service_type="Long term support: Community",
                component="Home support or domiciliary care",
                delivery=rng.choice(("CASSR commissioned support", "Direct payment", "CASSR managed personal budget")),
                unit_cost=f"{rng.choice((19.5, 21.0, 23.4)):.2f}",
                cost_unit="Hourly",
                units=str(rng.choice((5, 7, 10, 14, 21))),
            )
        )
        review = _days(start, 365)
        while review <= self.until:
            if review >= HISTORY_START:
                self._add(
                    Event(
                        person,
                        "Review",
                        review,
                        review,
                        "Continuation of support or services",
                        review_reason="Planned review",
                    )
                )
            review = _days(review, 365)

    def _after_discharge(self, person: Person, spell: Spell) -> tuple[date | None, date]:
        """Reablement for some older people discharged home; a care home for a few.

        Returns an emergency readmission already decided on (or None), and the day before which no other
        emergency admission happens (after a reablement that worked: day 92).
        """
        rng = self.rng
        discharge = spell.disdate
        frail = self.frail
        if self.in_care_home:
            return None, discharge
        if person.age_on(discharge) >= 75 and rng.random() < CARE_HOME_FROM_HOSPITAL * min(frail, 3.0):
            start = _days(discharge, rng.randrange(28))
            if start <= self.until:
                if start == discharge:
                    spell.disdest = "85"  # straight to a care home
                self._care_home(person, start, route="Discharge from hospital")
            return None, discharge
        if rng.random() >= REABLEMENT_SHARE:
            return None, discharge
        offset = rng.choices((-3, -2, -1, 0, 1, 2, 3, 5, 7), (2, 3, 5, 30, 25, 15, 10, 6, 4))[0]
        start = _days(discharge, offset)
        if start > self.until:
            return None, discharge
        self._add(
            Event(
                person,
                "Request",
                min(start, discharge),
                min(start, discharge),
                "Progress to reablement/ST-Max",
                route="Discharge from hospital",
            )
        )
        end = _days(start, 14 + rng.randrange(29))
        self._add(
            Event(
                person,
                "Service",
                start,
                end if end <= self.until else None,
                rng.choice(
                    (
                        "NFA: Support ended as planned",
                        "NFA: Support ended as planned",
                        "Progress to support planning or services",
                    )
                ),
                service_type="Short term support: ST-Max",
                component="Reablement",
                delivery="CASSR commissioned support",
                unit_cost="0.00",
                cost_unit="Weekly",
                units="0",
            )
        )
        if rng.random() < _by_age(REABLEMENT_SUCCESS, person.age_on(discharge)):
            # At home 91 days later: no emergency admission, no care home and no death in days 1-91.
            window = (_days(discharge, 1), _days(discharge, 91))
            self.protected.append(window)
            if person.death is not None and person.death <= window[1]:
                person.death = _days(window[1], 1 + rng.randrange(400))
                self.until = min(d for d in (person.death, self.moved, WINDOW_END) if d is not None)
            return None, _days(discharge, 92)
        failure = rng.random()
        day = _days(discharge, 1 + rng.randrange(91))
        if failure < 0.65:
            return day, discharge  # readmitted as an emergency
        if failure < 0.85:
            self._die(person, day)
        elif day <= self.until:
            self._care_home(person, day, route="Discharge from reablement")
        return None, discharge

    def _care_home(self, person: Person, start: date, route: str) -> None:
        rng = self.rng
        self.in_care_home = True
        nursing = rng.random() < 0.35
        self._add(
            Event(
                person,
                "Request",
                _days(start, -14),
                _days(start, -14),
                "Progress to assessment, review or reassessment",
                route=route,
            )
        )
        self._add(
            Event(
                person,
                "Assessment",
                _days(start, -7),
                _days(start, -1),
                "Progress to support planning or services",
                assessment_type="Long term assessment",
            )
        )
        self_funded = rng.random() < SELF_FUNDED_SHARE
        self._close_open_services(person, _days(start, -1), outcome="NFA: Support ended for other reason")
        self._add(
            Event(
                person,
                "Service",
                start,
                _days(start, 84) if self_funded else None,
                SELF_FUNDED if self_funded else "Continuation of support or services",
                service_type=("Long term support: Nursing care" if nursing else "Long term support: Residential care"),
                component="Long term nursing care" if nursing else "Long term residential care",
                delivery="CASSR commissioned support",
                unit_cost=f"{900 + rng.randrange(400)}.00",
                cost_unit="Weekly",
                units="1",
                accommodation="Registered care home",
            )
        )

    def _close_open_services(self, person: Person, on: date, outcome: str) -> None:
        for event in self._mine:
            if event.event_type == "Service" and event.end is None and event.start <= on:
                event.end, event.outcome = max(on, event.start), outcome

    def _add(self, event: Event) -> None:
        if event.person.death is not None and event.start > event.person.death:
            return
        if event.end is not None and event.end > WINDOW_END:
            event.end = None
        # One event per unique key (the deduplication key of the national processing).
        detail = (event.route, event.assessment_type, event.service_type, event.component)
        keys = self._keys
        while (event.event_type, event.start, event.client_type, detail) in keys:
            event.start = _days(event.start, 1)
            if event.end is not None and event.end < event.start:
                event.end = event.start
        if event.start > WINDOW_END:
            return
        keys.add((event.event_type, event.start, event.client_type, detail))
        self._mine.append(event)

    def run(self) -> World:
        """People are drawn and live one at a time until the register at the as-of date holds `population`.

        The population is the one risk stratification ranks (registered, alive, not opted out, on the
        register with a valid number at the as-of date), so a world of 1,438,682 gives Essex's pyramid exactly;
        the people who died, moved away, opted out or were never registered come on top of it.
        """
        rng = self.rng
        extra = max(3, self.population // 500)
        numbers = _nhs_numbers(rng, int(self.population * NUMBERS_PER_REGISTERED) + 100 + extra)
        self.cumulative_age = list(itertools.accumulate(AGE_BAND_SHARES))
        self.cumulative_place = list(itertools.accumulate(loc.share for loc in self.localities))
        people: list[Person] = []
        registered = 0
        while registered < self.population:
            if len(people) + extra >= len(numbers):
                raise RuntimeError("not enough NHS numbers drawn for this population")  # about 1 in 7 is spare
            person = self.person(len(people), numbers[len(people)])
            self._keys: set = set()  # this person's unique event keys
            self._mine: list[Event] = []  # this person's events, until death or moving away settles them
            self.live(person)
            people.append(person)
            registered += person.on_register_at(WINDOW_END)
        return World(self.population, self.seed, self.localities, people, self.spells, self.events, numbers[-extra:])


def generate_world(population: int, seed: int, councils: tuple[str, ...] = (AREA_CODE,)) -> World:
    if population < 1:
        raise ValueError("the population must be at least 1")
    return _Simulation(population, seed, councils).run()
