"""What counts as an identifiable value from a landing folder, and a scan of bytes for them.

The input's NHS numbers (valid or not, in every spelling the files used), postcodes (with and without the
space) and dates of birth. A date of birth is only searched for when it is not also some other date of
the input and falls more than two years before the first admission: otherwise finding it would prove
nothing (the warehouse rightly holds event dates, and period boundaries and as-of dates derived from
the admissions' dates).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IDENTIFIER_COLUMNS = {"nhs_number"}
_POSTCODE_COLUMNS = {"postcode"}
_BIRTH_COLUMNS = {"date_of_birth"}


@dataclass
class Identifiable:
    nhs_numbers: set[bytes] = field(default_factory=set)
    postcodes: set[bytes] = field(default_factory=set)
    dates_of_birth: set[bytes] = field(default_factory=set)

    def found_in(self, data: bytes) -> list[str]:
        """What kind of identifiable value occurs in `data` (never the value itself)."""
        found = []
        digits = set(re.findall(rb"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)", data))
        if any(re.sub(rb"[ -]", b"", d) in self.nhs_numbers for d in digits):
            found.append("an NHS number")
        # A postcode stands on its own (a field, a word, a value in a tuple): one that is only part of a longer run
        # of letters and digits is not one. Random base64 text in a WAL file (a ciphertext or a token) once held an
        # input postcode's 6 characters by chance, which made a clean run fail now and then (issue 19); a table's
        # values are also scanned through COPY, one tab-separated field at a time, where nothing is lost by this.
        codes = set(re.findall(rb"(?<![A-Za-z0-9])[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}(?![A-Za-z0-9])", data))
        if any(c.replace(b" ", b"") in self.postcodes for c in codes):
            found.append("a postcode")
        dates = set(re.findall(rb"\d{4}-\d{2}-\d{2}", data))
        if dates & self.dates_of_birth:
            found.append("a date of birth")
        return found


def identifiable_values(landing: Path) -> Identifiable:
    values = Identifiable()
    births: set[str] = set()
    other_dates: set[str] = set()
    admissions: set[str] = set()
    for path in landing.glob("*.csv"):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                for column, value in row.items():
                    name = (column or "").strip().lower()
                    value = (value or "").strip()
                    if not value:
                        continue
                    if name in _IDENTIFIER_COLUMNS:
                        values.nhs_numbers.add(re.sub(r"[\s-]", "", value).encode())
                    elif name in _POSTCODE_COLUMNS:
                        values.postcodes.add(value.replace(" ", "").upper().encode())
                    elif name in _BIRTH_COLUMNS:
                        births.add(value)
                    elif _DATE.match(value):
                        other_dates.add(value)
                        if name == "admidate":
                            admissions.add(value)
    first = min(admissions)
    before = f"{int(first[:4]) - 2}{first[4:]}"
    values.dates_of_birth = {b.encode() for b in births - other_dates if b < before}
    values.nhs_numbers = {n for n in values.nhs_numbers if len(n) == 10 and n.isdigit()}
    return values


def files_at_rest(*folders: Path) -> list[tuple[Path, bytes]]:
    """Every file under the folders with its bytes, as a scan reads them while servers are still running.

    A file the live server removes after the listing (its relation cache file, pg_internal.init, is removed and
    written again as tables change) is left out: gone, it holds nothing at rest, and its next version is a new
    file the next scan reads."""
    found = []
    for path in [p for folder in folders for p in folder.rglob("*") if p.is_file()]:
        try:
            found.append((path, path.read_bytes()))
        except FileNotFoundError:
            continue
    return found
