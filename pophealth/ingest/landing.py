"""The landing area: which files are there, what feed each is, and reading one as the contract says.

Reading is streaming (one row at a time) and strict about the file as a whole: anything that makes
the file unreadable or not the contract's raises `FileRejected` with a message a data engineer can act
on, never a stack trace and never a value from the file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pophealth.contract.feeds import FEEDS, FEEDS_BY_NAME, LOAD_ORDER

log = logging.getLogger(__name__)

# Large free-text fields exist in real extracts; the limit only guards against a broken quote swallowing a file.
csv.field_size_limit(16 * 1024 * 1024)


#: What reading a broken .csv.gz raises (a truncated or corrupt stream): a refusal of the file, not a crash.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class FileRejected(Exception):
    """The whole file is refused; the message names the rule, never a value."""


@dataclass(frozen=True)
class ExtractFile:
    path: Path
    feed: str
    provider: str | None
    period_end: date | None

    @property
    def name(self) -> str:
        return self.path.name


def identify(path: Path) -> ExtractFile | None:
    """The feed a file belongs to by its name, or None when the name is not one of the contract's."""
    for feed in FEEDS:
        name = feed.file_name
        match = name.pattern.match(path.name)
        if not match:
            continue
        period = None
        if name.period == "day":
            raw = match.group("period")
            try:
                period = date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
            except ValueError:
                return None
        elif name.period == "year":
            period = date(int(match.group("period")), 12, 31)
        provider = match.group("provider") if name.has_provider else None
        return ExtractFile(path, feed.name, provider, period)
    return None


#: The one compression the loader reads (as a stream): `<name>.csv.gz`, as the trusts' transfer tools send it.
GZIP_SUFFIX = ".gz"
#: Other compressions and archives, named so that the reason a file is not loaded says what it is.
OTHER_COMPRESSIONS = (".zip", ".bz2", ".xz", ".7z", ".zst", ".tgz", ".rar", ".lz", ".lzma", ".z", ".gzip", ".tar")
_DATE_PART = re.compile(r"_(?P<date>[0-9]{8})\.csv(?:\.gz)?$")


#: Why a symbolic link in the landing folder is never read, whatever its name and wherever it points.
SYMLINK_REASON = (
    "a symbolic link, not a file delivered into the landing folder: the loader never follows a link "
    "(it could point at any file this machine's loader can read); copy the extract in instead"
)


def why_not_an_extract(path: Path) -> str:
    """Why a file name is not one of the contract's extracts, in a few words (the name is not personal data)."""
    if path.is_symlink():
        return SYMLINK_REASON
    name = path.name
    lower = name.lower()
    if _case_fold_match(name) and not any(f.file_name.pattern.match(name) for f in FEEDS):
        return (
            "wrong case: the contract's names are lower case apart from the provider code (e.g. apc_RAJ_20250131.csv)"
        )
    for suffix in OTHER_COMPRESSIONS:
        if lower.endswith(suffix):
            return f"compressed or archived as {suffix}: the loader reads .csv and .csv.gz only"
    feed = next(
        (
            f
            for f in sorted(LOAD_ORDER, key=len, reverse=True)
            if lower.startswith(f + "_") or lower.startswith(f + ".")
        ),
        None,
    )
    if feed is None:
        return f"not a feed of the extract contract ({', '.join(LOAD_ORDER)})"
    form = FEEDS_BY_NAME[feed].file_name.form
    if not (lower.endswith(".csv") or lower.endswith(".csv.gz")):
        return f"not a CSV file: the contract's name is {form} (or .csv.gz)"
    found = _DATE_PART.search(name)
    if found:
        raw = found.group("date")
        try:
            date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
        except ValueError:
            return f"an impossible date in the name: the contract's name is {form}"
    elif "YYYYMMDD" in form:
        return f"the date is not in the contract's form YYYYMMDD: the contract's name is {form}"
    return f"the name does not follow the contract's {form}"


def _case_fold_match(name: str) -> bool:
    return any(re.match(f.file_name.pattern.pattern, name, re.IGNORECASE) for f in FEEDS)


@dataclass(frozen=True)
class LandingScan:
    extracts: list[ExtractFile]
    unrecognised: list[Path]

    def not_extracts(self) -> list[tuple[str, str]]:
        """Each file that is not an extract of the contract, with why: never loaded, and said so."""
        return [(p.name, why_not_an_extract(p)) for p in self.unrecognised]


#: Names a file has while it is being written or copied in (hidden, `.part`, `.tmp`): never picked up.
TEMPORARY_SUFFIXES = (".part", ".tmp")
#: How long a just-written file must stay unchanged before it is picked up (the contract is silent on this).
ENV_SETTLE_SECONDS = "POPHEALTH_LANDING_SETTLE_SECONDS"
DEFAULT_SETTLE_SECONDS = 2.0
MAX_SETTLE_SECONDS = 60.0


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(TEMPORARY_SUFFIXES)


def scan(landing: Path) -> LandingScan:
    """Every file at the top of the landing folder (sub-folders are not extracts), in load order.

    A symbolic link is never an extract, even one named like an extract and pointing at a file in the landing
    folder: it is listed with the files that are not extracts (SYMLINK_REASON), so it is accounted for."""
    if not landing.is_dir():
        raise FileRejected(f"the landing folder does not exist: {landing}")
    extracts: list[ExtractFile] = []
    unrecognised: list[Path] = []
    for path in sorted(p for p in landing.iterdir() if (p.is_symlink() or p.is_file()) and not is_temporary(p)):
        extract = None if path.is_symlink() else identify(path)
        (extracts.append(extract) if extract else unrecognised.append(path))
    extracts.sort(key=lambda e: (LOAD_ORDER.index(e.feed), e.period_end or date.min, e.provider or "", e.name))
    return LandingScan(extracts, unrecognised)


def settle_seconds() -> float:
    raw = os.environ.get(ENV_SETTLE_SECONDS, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_SETTLE_SECONDS
    except ValueError:
        raise FileRejected(f"{ENV_SETTLE_SECONDS} must be a number of seconds") from None
    return min(max(seconds, 0.0), MAX_SETTLE_SECONDS)


def _look(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def settled(extracts: list[ExtractFile], seconds: float | None = None) -> list[ExtractFile]:
    """The extracts that are complete; a file still being written is left for the next run.

    A file changed within the last `seconds` is looked at again `seconds` later (one wait, whatever the
    number of files); if its size or modification time moved, or it went, it is still being written. A
    folder of older files costs no wait. Temporary names never get here (`scan`)."""
    seconds = settle_seconds() if seconds is None else seconds
    first = {e.path: _look(e.path) for e in extracts}
    now_ns = time.time_ns()
    young = [e for e in extracts if (seen := first[e.path]) and now_ns - seen[1] < seconds * 1e9]
    if young:
        time.sleep(seconds)
    moving = {e.path for e in young if _look(e.path) != first[e.path]} | {p for p, look in first.items() if not look}
    for path in sorted(moving):
        log.info("%s is still being written: left for the next run", path.name)
    return [e for e in extracts if e.path not in moving]


def _open_not_a_link(path: Path) -> io.BufferedReader:
    """The file for reading, refused if it is a symbolic link: O_NOFOLLOW, so a file swapped for a link between
    the scan and the read is refused too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if path.is_symlink():
            raise FileRejected(SYMLINK_REASON) from None
        raise FileRejected(f"the file cannot be read: {exc.strerror}") from None
    return open(fd, "rb")


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with _open_not_a_link(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass
class CsvReader:
    """A contract CSV opened for streaming: `columns` are the header's names, lower-cased and trimmed."""

    columns: list[str]
    extra_columns: list[str]
    rows: Iterator[tuple[int, dict[str, str]]]


def open_extract(
    path: Path, contract_columns: tuple[str, ...], required: tuple[str, ...]
) -> tuple[io.TextIOBase, CsvReader]:
    """Open a CSV extract; check its header against the contract. The caller closes the handle."""
    binary = _open_not_a_link(path)
    handle: io.TextIOBase
    if path.name.endswith(GZIP_SUFFIX):
        unzipped = gzip.GzipFile(fileobj=binary, mode="rb")
        # So that closing the text handle closes the file too (as gzip.open(path) does); gzip's own attribute,
        # typed FileIO there.
        unzipped.myfileobj = binary  # type: ignore[assignment]
        handle = io.TextIOWrapper(unzipped, encoding="utf-8-sig", newline="", errors="strict")
    else:
        handle = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="", errors="strict")
    try:
        try:
            header_line = handle.readline()
        except UnicodeDecodeError:
            raise FileRejected("the file is not UTF-8 text") from None
        except _GZIP_ERRORS:
            raise FileRejected("the file is not a valid gzip stream") from None
        if not header_line.strip():
            raise FileRejected("the file is empty: no header row")
        if "\x00" in header_line:
            raise FileRejected("the header contains a NUL byte: the file is binary or corrupt")
        header = next(csv.reader([header_line]))
        if len(header) == 1 and ";" in header[0]:
            raise FileRejected("the file is not comma separated (the header uses ';')")
        columns = [h.strip().lower() for h in header]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise FileRejected(f"the header repeats column(s): {', '.join(duplicated)}")
        missing = [c for c in required if c not in columns]
        if missing:
            raise FileRejected(f"missing required column(s): {', '.join(missing)}")
        extra = [c for c in columns if c not in contract_columns]
    except BaseException:
        handle.close()
        raise
    return handle, CsvReader(columns, extra, _rows(handle, columns))


def _lines(handle: io.TextIOBase) -> Iterator[str]:
    # Python 3.11's csv reader accepts NUL bytes; in a text extract one means a binary or corrupt file.
    for number, line in enumerate(handle, start=2):
        if "\x00" in line:
            raise FileRejected(f"the file contains a NUL byte (line {number}): it is binary or corrupt")
        yield line


def _rows(handle: io.TextIOBase, columns: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(_lines(handle), strict=True)
    width = len(columns)
    row_number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise FileRejected(f"the file is not UTF-8 text (after data row {row_number})") from None
        except _GZIP_ERRORS:
            raise FileRejected(f"the file is not a valid gzip stream (after data row {row_number})") from None
        except csv.Error as exc:
            raise FileRejected(f"the file is not valid CSV at data row {row_number + 1}: {_csv_reason(exc)}") from None
        row_number += 1
        if not values:  # a blank line
            continue
        if len(values) != width:
            yield row_number, {"__width__": str(len(values))}
            continue
        if values[0].strip().lower() == columns[0] and [v.strip().lower() for v in values] == columns:
            # Two files joined into one: the second's rows would overlap the first's; no row of it is quarantined.
            raise FileRejected(
                f"a repeated header row at row {row_number} (1 = the first data row): the file "
                "looks like two files joined; send each period as a file of its own"
            )
        yield row_number, dict(zip(columns, values, strict=False))


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if "NUL" in text or "\\x00" in text:
        return "it contains a NUL byte"
    if "field larger" in text:
        return "a field is larger than 16 MB (an unbalanced quote?)"
    if "quote" in text or "EOF" in text or "end of data" in text:
        return "an unbalanced quote"
    return "malformed row"
