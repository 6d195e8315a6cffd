"""Pseudonymisation: the keyed hash of the NHS number, keyed pseudonyms of local ids, and the reductions
of date of birth and postcode. Everything here runs in memory, before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pophealth.identifiers import LocalPseudonym, NhsNumber, PersonId
from pophealth.keys import LinkageKey

# Local identifiers are hashed under a key derived from the linkage key for that purpose only, so that a
# local pseudonym can never equal, or be tested against, a person_id (domain separation).
_LOCAL_KEY_LABEL = b"pophealth|local-identifier|v1"


class Pseudonymiser:
    __slots__ = ("_linkage", "_local", "key_version")

    def __init__(self, key: LinkageKey):
        secret = key.secret_bytes()
        self._linkage = hmac.new(secret, digestmod=hashlib.sha256)
        self._local = hmac.new(hmac.new(secret, _LOCAL_KEY_LABEL, hashlib.sha256).digest(), digestmod=hashlib.sha256)
        self.key_version = key.version

    def person_id(self, nhs_number: NhsNumber) -> PersonId:
        """Lowercase hex HMAC-SHA256 of the ten ASCII digits: what a source computes on its own premises."""
        mac = self._linkage.copy()
        mac.update(nhs_number.digits_for_hashing())
        return PersonId(mac.hexdigest())

    def local(self, source: str, local_id: str) -> LocalPseudonym:
        """A keyed pseudonym of a local identifier, scoped by its source (`RAJ`, `E10000012`)."""
        mac = self._local.copy()
        mac.update(f"{source.strip()}|{local_id.strip()}".encode("utf-8"))
        return LocalPseudonym(mac.hexdigest())


def birth_year_month(date_of_birth: date | None) -> tuple[int | None, int | None]:
    """A date of birth reduced to what age needs: year and month, never the day."""
    if date_of_birth is None:
        return None, None
    return date_of_birth.year, date_of_birth.month


_POSTCODE_SPACE = re.compile(r"\s+")


def normalise_postcode(raw: str | None) -> str:
    return _POSTCODE_SPACE.sub("", raw or "").upper()


@dataclass(frozen=True, slots=True)
class Area:
    lsoa_code: str
    locality_code: str


class PostcodeLookup:
    """Postcode -> LSOA and locality, held in memory only (postcodes are never written)."""

    def __init__(self, areas: dict[str, Area], localities: dict[str, str]):
        self._areas = areas
        self.localities = localities  # lsoa_code -> locality_code

    @classmethod
    def from_file(cls, path: Path) -> PostcodeLookup:
        areas: dict[str, Area] = {}
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                area = Area(row["lsoa_code"], row["locality_code"])
                areas[normalise_postcode(row["postcode"])] = area
        return cls(areas, {a.lsoa_code: a.locality_code for a in areas.values()})

    @classmethod
    def empty(cls) -> PostcodeLookup:
        return cls({}, {})

    def area(self, postcode: str | None) -> Area | None:
        return self._areas.get(normalise_postcode(postcode))

    def __len__(self) -> int:
        return len(self._areas)
