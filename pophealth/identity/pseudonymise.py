"""Pseudonymisation: the keyed hash of the NHS number, keyed pseudonyms of local ids, and the reductions
of date of birth and postcode. Everything here runs in memory, before anything is written.

These are the primitives; `at_source.pseudonymise_row` applies them to a row of each feed.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pophealth.contract.identifiers import LocalPseudonym, NhsNumber, PersonId
from pophealth.identity.keys import LinkageKey

# Local identifiers are hashed under a key derived from the linkage key for that purpose only, so that a
# local pseudonym can never equal, or be tested against, a person_id (domain separation).
_LOCAL_KEY_LABEL = b"pophealth|local-identifier|v1"


_IPAD = bytes(b ^ 0x36 for b in range(256))  # RFC 2104's inner and outer pads, as translation tables
_OPAD = bytes(b ^ 0x5C for b in range(256))


class KeyedHash:
    """HMAC-SHA256 (RFC 2104) under one key, of `prefix` followed by each value given: the padded key's inner and
    outer hash states are made once, and each value costs two copies of a hash state, all in C. The standard
    library's `hmac.HMAC` gives the same digest (tests/unit/test_pseudonymise.py checks it on any key, prefix and
    value), through Python methods per copy and digest that took 40% longer a value; staging hashes every
    identifier of every row (issue 19). Never printed: it holds the key's padded states."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, prefix: bytes = b""):
        if len(key) > 64:  # SHA-256's block: a longer key is hashed first, as RFC 2104 says
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._inner.update(prefix)
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def hexdigest(self, value: bytes) -> str:
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return "KeyedHash(***)"


#: Told of every identity hashed: (kind "nhs" or "local", the pseudonym in hex, the exact bytes hashed).
OnIdentity = Callable[[str, str, bytes], None]


class Pseudonymiser:
    __slots__ = ("_linkage", "_local", "_on_identity", "key_version")

    def __init__(self, key: LinkageKey, *, on_identity: OnIdentity | None = None):
        secret = key.secret_bytes()
        self._linkage = KeyedHash(secret)
        self._local = KeyedHash(hmac.new(secret, _LOCAL_KEY_LABEL, hashlib.sha256).digest())
        # Called for every value hashed, whatever becomes of its row (quarantined and opted-out rows included):
        # the caller decides what to keep.
        self._on_identity = on_identity
        self.key_version = key.version

    def person_id(self, nhs_number: NhsNumber) -> PersonId:
        """Lowercase hex HMAC-SHA256 of the ten ASCII digits: what a source computes on its own premises."""
        digits = nhs_number.digits_for_hashing()
        value = self._linkage.hexdigest(digits)
        if self._on_identity is not None:
            self._on_identity("nhs", value, digits)
        return PersonId(value)

    def local(self, source: str, local_id: str) -> LocalPseudonym:
        """A keyed pseudonym of a local identifier, scoped by its source (`RAJ`, `E10000012`)."""
        hashed = f"{source.strip()}|{local_id.strip()}".encode()
        value = self._local.hexdigest(hashed)
        if self._on_identity is not None:
            self._on_identity("local", value, hashed)
        return LocalPseudonym(value)


_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII digits only


def iso_date(text: str) -> date:
    """A date as the contract writes it (ISO YYYY-MM-DD). ValueError says why not, never with the value."""
    if not _ISO_DATE.match(text):
        raise ValueError("date is not in ISO YYYY-MM-DD form")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError("date does not exist in the calendar") from None


def birth_year_month(date_of_birth: date | None) -> tuple[int | None, int | None]:
    """A date of birth reduced to what age needs: year and month, never the day."""
    if date_of_birth is None:
        return None, None
    return date_of_birth.year, date_of_birth.month


_POSTCODE_SPACE = re.compile(r"\s+")


def normalise_postcode(raw: str | None) -> str:
    return _POSTCODE_SPACE.sub("", raw or "").upper()


def postcode_digest(raw: str | None) -> str:
    """A postcode as the warehouse keeps the published lookup's: a one-way hash of the normalised postcode, so no
    full postcode is at rest in clear, not even the lookup's (public geography, but a full postcode all the same)."""
    return hashlib.sha256(b"pophealth|postcode|" + normalise_postcode(raw).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Area:
    lsoa_code: str
    locality_code: str


#: Postcodes (as sent) whose area a lookup remembers: a file's rows repeat the same postcodes, and a digest per
#: row was a tenth of a row's pseudonymising. Cleared when full, so memory stays bounded whatever the file size.
_AREAS_REMEMBERED = 65_536


class PostcodeLookup:
    """Postcode -> LSOA and locality, held in memory only (postcodes are never written)."""

    def __init__(self, areas: dict[str, Area], localities: dict[str, str]):
        """`areas`: postcode (any spacing or case) -> its area; held by the postcode's digest only."""
        self._areas = {postcode_digest(postcode): area for postcode, area in areas.items()}
        self.localities = localities  # lsoa_code -> locality_code
        # The area of each postcode text seen, found through its digest once: a pure function of the exact text,
        # so the memo cannot be fooled; in memory with the lookup only, which lives for one load or one command.
        self._seen: dict[str | None, Area | None] = {}

    @classmethod
    def from_file(cls, path: Path) -> PostcodeLookup:
        areas: dict[str, Area] = {}
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                area = Area(row["lsoa_code"], row["locality_code"])
                areas[row["postcode"]] = area
        return cls(areas, {a.lsoa_code: a.locality_code for a in areas.values()})

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str]]) -> PostcodeLookup:
        """From (postcode_digest, lsoa_code, locality_code) rows: the published lookup (load._published_postcodes)."""
        lookup = cls({}, {})
        lookup._areas = {digest: Area(lsoa, locality) for digest, lsoa, locality in rows}
        lookup.localities = {a.lsoa_code: a.locality_code for a in lookup._areas.values()}
        return lookup

    @classmethod
    def empty(cls) -> PostcodeLookup:
        return cls({}, {})

    def area(self, postcode: str | None) -> Area | None:
        seen = self._seen
        if postcode in seen:
            return seen[postcode]
        area = self._areas.get(postcode_digest(postcode))
        if len(seen) >= _AREAS_REMEMBERED:
            seen.clear()
        seen[postcode] = area
        return area

    def __len__(self) -> int:
        return len(self._areas)
