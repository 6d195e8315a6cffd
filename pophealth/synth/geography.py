"""Synthetic Essex geography: the 12 districts as localities, their LSOAs, postcodes and GP practices.

District codes and names are the real ones (public); LSOA codes, postcodes and practice codes are made
up but well formed, so nothing here is anybody's address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AREA_CODE = "E10000012"  # Essex County Council

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


@dataclass(frozen=True)
class Locality:
    code: str
    name: str
    share: float
    lsoas: tuple[Lsoa, ...]
    practices: tuple[str, ...]


def _postcode(area: str, lsoa_index: int, k: int) -> str:
    district = lsoa_index % 90 + 1
    first = _LETTERS[(lsoa_index // 90) % len(_LETTERS)]
    second = _LETTERS[(lsoa_index // (90 * len(_LETTERS))) % len(_LETTERS)]
    return f"{area}{district} {k + 1}{first}{second}"


def build_geography(population: int) -> tuple[Locality, ...]:
    total = sum(d[2] for d in DISTRICTS)
    localities = []
    lsoa_index = practice_index = 0
    for code, name, thousands, area in DISTRICTS:
        share = thousands / total
        people = population * share
        lsoas = []
        for _ in range(max(2, round(people / PEOPLE_PER_LSOA))):
            postcodes = tuple(_postcode(area, lsoa_index, k) for k in range(POSTCODES_PER_LSOA))
            lsoas.append(Lsoa(f"E01{21000 + lsoa_index:06d}", code, name, postcodes))
            lsoa_index += 1
        practices = []
        for _ in range(max(1, math.ceil(people / PEOPLE_PER_PRACTICE))):
            practice_index += 1
            practices.append(f"F81{practice_index:03d}" if practice_index < 1000 else f"F8{practice_index:04d}")
        localities.append(Locality(code, name, share, tuple(lsoas), tuple(practices)))
    return tuple(localities)
