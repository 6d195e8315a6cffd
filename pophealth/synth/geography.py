"""Synthetic geography of Mid and South Essex: each council's localities, their LSOAs, postcodes and GP practices.

Essex County Council plans by its 12 districts (their real ONS codes and names); Southend-on-Sea and
Thurrock by localities of their own (Thurrock's four integrated locality areas, e.g. `GRAYS`), as contract
v2 allows. Council and district codes are the real ones (public); LSOA codes, postcodes and practice codes
are made up but well formed, so nothing here is anybody's address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AREA_CODE = "E10000012"  # Essex County Council: the council of a single-council world

# (code, name, 2014 population in thousands, postcode area)
DISTRICTS = (
    ("E07000066", "Basildon", 180, "SS"),
    ("E07000067", "Braintree", 150, "CM"),
    ("E07000068", "Brentwood", 76, "CM"),
    ("E07000069", "Castle Point", 89, "SS"),
    ("E07000070", "Chelmsford", 172, "CM"),
    ("E07000071", "Colchester", 181, "CO"),
    ("E07000072", "Epping Forest", 130, "IG"),
    ("E07000073", "Harlow", 84, "CM"),
    ("E07000074", "Maldon", 63, "CM"),
    ("E07000075", "Rochford", 85, "SS"),
    ("E07000076", "Tendring", 140, "CO"),
    ("E07000077", "Uttlesford", 85, "CB"),
)

# The councils of Mid and South Essex and the localities each plans by (code, name, thousands, postcode area).
COUNCILS = {
    "E10000012": ("Essex", DISTRICTS),
    "E06000033": (
        "Southend-on-Sea",
        (
            ("SOS_WEST", "West", 45, "SS"),
            ("SOS_WEST_CENTRAL", "West Central", 45, "SS"),
            ("SOS_EAST_CENTRAL", "East Central", 45, "SS"),
            ("SOS_EAST", "East", 45, "SS"),
        ),
    ),
    "E06000034": (
        "Thurrock",
        (
            ("GRAYS", "Grays", 55, "RM"),
            ("TILBURY", "Tilbury and Chadwell", 35, "RM"),
            ("STANFORD-LE-HOPE", "Stanford-le-Hope and Corringham", 45, "SS"),
            ("AVELEY_OCKENDON", "Aveley, South Ockendon and Purfleet", 40, "RM"),
        ),
    ),
}
MID_AND_SOUTH_ESSEX = ("E10000012", "E06000033", "E06000034")

PEOPLE_PER_LSOA = 1500
PEOPLE_PER_PRACTICE = 8000
POSTCODES_PER_LSOA = 6
_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the letters used in the inward part of real postcodes


@dataclass(frozen=True)
class Lsoa:
    code: str
    locality_code: str
    locality_name: str
    postcodes: tuple[str, ...]
    la_code: str = AREA_CODE


@dataclass(frozen=True)
class Locality:
    code: str
    name: str
    share: float
    lsoas: tuple[Lsoa, ...]
    practices: tuple[str, ...]
    la_code: str = AREA_CODE


def _postcode(area: str, lsoa_index: int, k: int) -> str:
    district = lsoa_index % 90 + 1
    first = _LETTERS[(lsoa_index // 90) % len(_LETTERS)]
    second = _LETTERS[(lsoa_index // (90 * len(_LETTERS))) % len(_LETTERS)]
    return f"{area}{district} {k + 1}{first}{second}"


def build_geography(population: int, councils: tuple[str, ...] = (AREA_CODE,)) -> tuple[Locality, ...]:
    """The localities of these councils (codes of COUNCILS), people shared out by their populations."""
    unknown = [c for c in councils if c not in COUNCILS]
    if unknown or not councils:
        raise ValueError(f"councils must be some of {', '.join(COUNCILS)}; got {', '.join(councils) or 'none'}")
    places = [(council, *place) for council in councils for place in COUNCILS[council][1]]
    total = sum(p[3] for p in places)
    localities = []
    lsoa_index = practice_index = 0
    for council, code, name, thousands, area in places:
        share = thousands / total
        people = population * share
        lsoas = []
        for _ in range(max(2, round(people / PEOPLE_PER_LSOA))):
            postcodes = tuple(_postcode(area, lsoa_index, k) for k in range(POSTCODES_PER_LSOA))
            lsoas.append(Lsoa(f"E01{21000 + lsoa_index:06d}", code, name, postcodes, council))
            lsoa_index += 1
        practices = []
        for _ in range(max(1, math.ceil(people / PEOPLE_PER_PRACTICE))):
            practice_index += 1
            practices.append(f"F81{practice_index:03d}" if practice_index < 1000 else f"F8{practice_index:04d}")
        localities.append(Locality(code, name, share, tuple(lsoas), tuple(practices), council))
    return tuple(localities)
