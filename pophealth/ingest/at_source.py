"""Pseudonymisation at source: an identifiable extract row becomes a pseudonymised extract row.

A source that may not send identifiable data runs `pophealth pseudonymise` on its own premises and sends
the pseudonymised extract. The loader makes the very same pseudonymised row in memory from an identifiable
file (`feeds.py`), so both roads go through one function, `pseudonymise_row`, and end in the same
warehouse rows.

A module of its own rather than more of pseudonymise.py: pseudonymise.py holds the primitives (keyed
hashes, the date-of-birth and postcode reductions) and knows nothing of the feeds; this module applies them
to each feed's columns, as its declaration (pophealth/contract/feeds.py) gives them in both forms.

The pseudonymised form of a feed (`Feed.header`) is its contract columns in the contract's order, with
`nhs_number` -> `person_id, nhs_number_check`, `date_of_birth` -> `birth_year, birth_month`,
`postcode` -> `lsoa_code, locality_code` in place, and the local identifiers (`epikey`, `spell_id`,
`LA_Person_Unique_Identifier`) keeping their names but holding their keyed pseudonyms, and a last
column, `linkage_key_version`: the version (one-way fingerprint) of the linkage key that made the file. The
loader refuses a file pseudonymised at source whose rows do not all carry the loading key's version
(`source_key_problem`): pseudonyms made under another key link to nobody and slip past the opt-outs.

Bad values never stop a file and never reach the output in clear: a value that cannot be reduced (a date
of birth that is not a date, a local id whose source code is empty) is written empty and reported by
column and reason; the row is kept, so that the warehouse still sees (and counts, or quarantines) the
record. A row whose number of fields differs from the header is skipped and counted: its values cannot
be assigned to columns safely.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pophealth.contract.feeds import FEEDS, FEEDS_BY_NAME, KEY_VERSION_COLUMN, Feed
from pophealth.contract.identifiers import IdentifierError, NhsNumber, check_nhs_number
from pophealth.identity.pseudonymise import PostcodeLookup, Pseudonymiser, iso_date
from pophealth.ingest.landing import ExtractFile, FileRejected, identify, open_extract

_KEY_VERSION = re.compile(r"^k-[0-9a-f]{12}$")  # LinkageKey.version's shape: only such a value is ever repeated


def pseudonymisable(feed: str) -> Feed:
    """The declaration of a feed that has identifiers (contract/feeds.py); reference data raises ValueError."""
    declared = FEEDS_BY_NAME.get(feed)
    if declared is None or not declared.pseudonymisable:
        raise ValueError(f"{feed} is reference data, not personal: there is nothing to pseudonymise")
    return declared


def is_pseudonymised(columns: Sequence[str]) -> bool:
    """A file pseudonymised at source: it has person_id and no NHS number (lower-cased header names)."""
    return "person_id" in columns and "nhs_number" not in columns


def header_problem(feed: str, columns: Sequence[str]) -> str | None:
    """The required columns of the file's form that its header lacks, as a message; None when all are there."""
    forms = FEEDS_BY_NAME.get(feed)
    if forms is None or not forms.pseudonymisable:
        return None
    if is_pseudonymised(columns):
        missing = [
            " (or ".join(options) + ")" * (len(options) - 1)
            for options in forms.pseudonymised_required
            if not any(c in columns for c in options)
        ]
        return f"missing required column(s): {', '.join(missing)}" if missing else None
    missing = [c for c in forms.identifiable_required if c not in columns]
    if missing:
        return f"missing required column(s): {', '.join(missing)}"
    if "nhs_number" not in columns:
        return "missing required column: nhs_number (or person_id when pseudonymised at source)"
    return None


# ----------------------------------------------------------------------------------------------------------
# One row


def pseudonymise_row(
    feed: str,
    row: dict[str, str],
    pseudonymiser: Pseudonymiser,
    postcodes: PostcodeLookup,
    *,
    period_end: date | None = None,
    unreduced: dict[str, str] | None = None,
) -> dict[str, str]:
    """An identifiable extract row as its pseudonymised extract row.

    `row` maps the header's names, lower-cased (as `landing.open_extract` yields them), to their text.
    The result maps the pseudonymised columns, lower-cased and in the extract's order, to text ("" for
    null); columns outside the contract are not in it, nor is any NHS number, full date of birth,
    postcode or clear local id. Values are passed through as sent otherwise.

    - `person_id` is the HMAC of a valid (or test-range) NHS number, else empty; `nhs_number_check` says
      which (`valid`, `test_range`, `missing`, `invalid`), so unlinked rows can still be counted.
    - A local id becomes `Pseudonymiser.local(SOURCE, "KIND|" + id)` with SOURCE the row's procode or
      LA_Code, trimmed and upper-cased: exactly what the loader has always stored.
    - `birth_year`, `birth_month`; `lsoa_code`, `locality_code` through the lookup (empty when the
      postcode is not in it).
    - `linkage_key_version`: the version of the pseudonymiser's key, on every row.

    A value that cannot be reduced is written empty and its column and reason (never the value) are put
    in `unreduced`: a date of birth that is not a date, or (given `period_end`) after it, and a local id
    whose source code is empty. The loader passes the file's period end and quarantines such rows as it
    always has; the at-source command does not, and leaves the period check to the warehouse.
    """
    forms = pseudonymisable(feed)
    get = row.get
    columns = forms.pseudonymised
    out = dict(zip(columns, map(get, columns, _EMPTIES), strict=False))  # the hot path: this is the fastest way to copy

    raw = get("nhs_number")
    try:
        number = NhsNumber(raw)  # checks the number once; the check is said again only for the unlinkable
    except IdentifierError:
        out["person_id"], out["nhs_number_check"] = "", check_nhs_number(raw).value
    else:
        out["person_id"], out["nhs_number_check"] = pseudonymiser.person_id(number).value, number.check.value

    if "birth_year" in out:
        year = month = ""
        text = (get("date_of_birth") or "").strip()
        if text:
            try:
                born = iso_date(text)
            except ValueError as problem:
                _note(unreduced, "date_of_birth", str(problem))
            else:
                if period_end is not None and born > period_end:
                    _note(unreduced, "date_of_birth", "date of birth is after the extract's period end")
                else:
                    year, month = str(born.year), str(born.month)
        out["birth_year"], out["birth_month"] = year, month

    if "lsoa_code" in out:
        area = postcodes.area(get("postcode"))
        out["lsoa_code"], out["locality_code"] = (area.lsoa_code, area.locality_code) if area else ("", "")

    for local in forms.local_ids:
        value = (get(local.column) or "").strip()
        scope = (get(local.scope) or "").strip().upper()
        if value and scope:
            out[local.column] = pseudonymiser.local(scope, f"{local.kind}|{value}").value
        else:
            out[local.column] = ""
            if value:
                _note(unreduced, local.column, f"cannot be pseudonymised without {local.scope}")
    out[KEY_VERSION_COLUMN] = pseudonymiser.key_version
    return out


_EMPTIES = itertools.repeat("")


def _note(unreduced: dict[str, str] | None, column: str, reason: str) -> None:
    if unreduced is not None and column not in unreduced:
        unreduced[column] = reason


def source_key_problem(row: dict[str, str], loading_version: str) -> str | None:
    """Why a row of a file pseudonymised at source says it was not made under the loading key; None when it was.

    The file is then refused whole. The message names the version found (only when it has a key version's
    shape: any other value is not repeated) and the loading key's version; never a key or a person_id.
    """
    found = row.get(KEY_VERSION_COLUMN)
    if found is not None and found.strip() == loading_version:
        return None
    if found is None:
        said = f"has no {KEY_VERSION_COLUMN} column, so it does not say which linkage key made it"
    elif not found.strip():
        said = f"has a row with an empty {KEY_VERSION_COLUMN}, so it does not say which linkage key made it"
    elif _KEY_VERSION.match(found.strip()):
        said = f"was made under linkage key version {found.strip()}"
    else:
        said = f"has a {KEY_VERSION_COLUMN} that is not a key version (not shown)"
    return (
        f"the file is pseudonymised at source and {said}; the loading key is version {loading_version}. "
        "Pseudonyms made under another key link to nobody and slip past the opt-outs: nothing of the file "
        f"was loaded; the source pseudonymises it again under the current key (`pophealth pseudonymise` "
        f"writes {KEY_VERSION_COLUMN})"
    )


# ----------------------------------------------------------------------------------------------------------
# A whole file: the `pophealth pseudonymise` command


class AtSourceRefused(Exception):
    """The command cannot start; the message says why, never with a value from a file."""


@dataclass
class AtSourceSummary:
    """What the command did, in counts and column names only."""

    source: str
    out: Path
    feed: str
    key_version: str
    rows_written: int = 0
    unlinked: Counter = field(default_factory=Counter)  # nhs_number_check (missing, invalid) -> rows
    test_range: int = 0
    dropped_columns: list[str] = field(default_factory=list)
    emptied: Counter = field(default_factory=Counter)  # (column, reason) -> rows
    postcodes_not_found: int = 0
    rows_skipped: int = 0
    first_skipped_row: int | None = None
    seconds: float = 0.0


def read_postcode_lookup(path: Path) -> PostcodeLookup:
    """The postcode lookup, its header checked as the loader's reference feed checks it."""
    if not path.is_file():
        raise AtSourceRefused(f"the postcode lookup does not exist: {path}")
    try:
        lookup = FEEDS_BY_NAME["ref_postcode_lookup"]
        handle, _reader = open_extract(path, lookup.contract_columns, lookup.required_columns)
    except FileRejected as problem:
        raise AtSourceRefused(f"{path.name}: {problem}") from None
    handle.close()
    return PostcodeLookup.from_file(path)


def _identifiable_extract(source: Path) -> ExtractFile:
    extract = identify(source)
    if extract is None:
        raise AtSourceRefused(
            f"{source.name}: the file name does not match any feed of the extract contract "
            f"({', '.join(f.file_name.form for f in FEEDS if f.pseudonymisable)})"
        )
    if not FEEDS_BY_NAME[extract.feed].pseudonymisable:
        raise AtSourceRefused(
            f"{source.name} is reference data, not personal: it needs no pseudonymisation; send it as it is"
        )
    if not source.is_file():
        raise AtSourceRefused(f"the input file does not exist: {source}")
    return extract


def _output_path(source: Path, out: Path, extract: ExtractFile) -> Path:
    if out.is_dir():
        out = out / source.name
    if out.exists() and out.resolve() == source.resolve():
        raise AtSourceRefused("the output would overwrite the identifiable input: write it to another folder")
    named = identify(out)
    if named is None or (named.feed, named.provider, named.period_end) != (
        extract.feed,
        extract.provider,
        extract.period_end,
    ):
        # The loader knows a file by its name: a wrong one would load as another feed, provider or period.
        raise AtSourceRefused(f"the output must be named like the input ({source.name}), or be a folder")
    if not out.parent.is_dir():
        raise AtSourceRefused(f"the output folder does not exist: {out.parent}")
    return out


def pseudonymise_extract(
    source: Path,
    out: Path,
    lookup: Path | None,
    *,
    pseudonymiser: Pseudonymiser | None = None,
    progress: Callable[[str], None] | None = None,
    every_seconds: float = 5.0,
    every_rows: int = 10_000,
) -> AtSourceSummary:
    """Write the pseudonymised extract of an identifiable one, streaming, with constant memory.

    `out` is a file named like `source` in another folder, or a folder. Without `pseudonymiser`, the key
    comes from `keys.load_linkage_key()` (no key: `KeyError_`, nothing written). The output is written to a
    hidden temporary file beside it and renamed at the end: `out` is whole or absent, never half written.
    `progress` is told of rows done and rows per second every `every_seconds` (looked at every
    `every_rows` rows).
    """
    started = time.monotonic()
    extract = _identifiable_extract(source)
    out = _output_path(source, out, extract)
    forms = FEEDS_BY_NAME[extract.feed]
    needs_lookup = "lsoa_code" in forms.pseudonymised
    if needs_lookup and lookup is None:
        raise AtSourceRefused("give --lookup ref_postcode_lookup.csv: postcodes become LSOA codes through it")
    if pseudonymiser is None:
        from pophealth.identity.keys import load_linkage_key

        pseudonymiser = Pseudonymiser(load_linkage_key())  # fail closed: no key, nothing written
    postcodes = read_postcode_lookup(lookup) if needs_lookup and lookup is not None else PostcodeLookup.empty()
    summary = AtSourceSummary(source.name, out, extract.feed, pseudonymiser.key_version)

    handle, reader = open_extract(source, forms.contract_columns, ())
    with handle:
        if is_pseudonymised(reader.columns):
            raise FileRejected("the file has person_id and no nhs_number: it is pseudonymised already")
        problem = header_problem(extract.feed, reader.columns)
        if problem:
            raise FileRejected(problem)
        summary.dropped_columns = [c for c in reader.columns if c not in forms.identifiable]
        temporary = tempfile.NamedTemporaryFile(  # a dot file: the landing scan never sees it
            "w", encoding="utf-8", newline="", dir=out.parent, prefix=f".{out.name}.", suffix=".partial", delete=False
        )
        try:
            with temporary:
                _write_rows(
                    reader.rows,
                    temporary,
                    forms,
                    pseudonymiser,
                    postcodes,
                    summary,
                    started,
                    progress,
                    every_seconds,
                    every_rows,
                )
                temporary.flush()
                os.fsync(temporary.fileno())
            os.replace(temporary.name, out)
        except BaseException:
            Path(temporary.name).unlink(missing_ok=True)
            raise
    summary.seconds = time.monotonic() - started
    return summary


def _write_rows(
    rows,
    target,
    forms: Feed,
    pseudonymiser: Pseudonymiser,
    postcodes: PostcodeLookup,
    summary: AtSourceSummary,
    started: float,
    progress,
    every_seconds: float,
    every_rows: int,
) -> None:
    writer = csv.writer(target, lineterminator="\n")
    writer.writerow(forms.header)
    has_postcode = "lsoa_code" in forms.pseudonymised
    last_said = started
    done = 0
    for row_number, row in rows:
        done += 1
        if progress is not None and done % every_rows == 0:
            now = time.monotonic()
            if now - last_said >= every_seconds:
                last_said = now
                progress(f"{summary.source}: {done:,} rows ({done / max(now - started, 1e-9):,.0f} rows/s)")
        if "__width__" in row:
            summary.rows_skipped += 1
            summary.first_skipped_row = summary.first_skipped_row or row_number
            continue
        unreduced: dict[str, str] = {}
        values = pseudonymise_row(forms.name, row, pseudonymiser, postcodes, unreduced=unreduced)
        writer.writerow(values.values())  # in the header's order: pseudonymise_row builds it so
        summary.rows_written += 1
        check = values["nhs_number_check"]
        if check == "test_range":
            summary.test_range += 1
        elif check != "valid":
            summary.unlinked[check] += 1
        if has_postcode and not values["lsoa_code"] and (row.get("postcode") or "").strip():
            summary.postcodes_not_found += 1
        for column, reason in unreduced.items():
            summary.emptied[(column, reason)] += 1
    if done == 0:
        raise FileRejected("the file has a header but no data rows")


def summary_text(summary: AtSourceSummary) -> str:
    """One screen: counts and column names, never a value; the key's version, never the key."""
    rate = summary.rows_written / summary.seconds if summary.seconds else 0.0
    unlinked = sum(summary.unlinked.values())
    by_check = ", ".join(f"{check} {count:,}" for check, count in sorted(summary.unlinked.items()))
    lines = [f"Pseudonymised {summary.source} ({summary.feed}) -> {summary.out}"]

    def say(label: str, value: str) -> None:
        lines.append(f"  {label:<34}{value}")

    say("rows written", f"{summary.rows_written:,}")
    say("unlinked (no valid NHS number)", f"{unlinked:,}" + (f" ({by_check})" if unlinked else ""))
    say("test-range NHS numbers", f"{summary.test_range:,}")
    say(
        "columns dropped",
        ", ".join(summary.dropped_columns) + " (not in the contract; none of their values was written)"
        if summary.dropped_columns
        else "none",
    )
    for (column, reason), count in sorted(summary.emptied.items()):
        say(f"{column} left empty", f"{count:,} ({reason})")
    if summary.postcodes_not_found:
        say("postcodes not in the lookup", f"{summary.postcodes_not_found:,} (lsoa_code left empty)")
    if summary.rows_skipped:
        say(
            "rows skipped",
            f"{summary.rows_skipped:,} (their number of fields differs from the header; "
            f"the first is data row {summary.first_skipped_row})",
        )
    say("linkage key version", summary.key_version)
    say("time", f"{summary.seconds:.1f} s ({rate:,.0f} rows/s)")
    return "\n".join(lines)
