"""The robustness corpus and faults: one table that the tests run and `docs/robustness.md` is generated from.

Every bad input is made from a good synthetic hospital (apc) extract by a small, named change. Each case
states the exact outcome the extract contract (`docs/contract/extracts.md`) asks for:

- `refused`: the whole file is refused before anything is stored, with a message naming the rule;
- `gate_failed`: the file is staged but its quality gate refuses it (a rule of `expectations/registry.yml`),
  so nothing of it is published;
- `loaded`: the file is published; the rows named are quarantined with the reason given and every other
  row is loaded (`nhs_number_check` says how a row's NHS number was read);
- `duplicate`: the file was already published as it is: recorded, nothing loaded twice;
- `not_an_extract`: the name is not the contract's; the file is never picked up.

Synthetic data only: the NHS numbers are the generator's (999 test range) or made up here.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROVIDER = "RAJ"
IDENTIFIABLE_COLUMNS = ("nhs_number", "date_of_birth", "postcode", "epikey", "spell_id")


@dataclass(frozen=True)
class Good:
    """The good extract the cases start from: its header and its data rows (row 1 is the first data row)."""

    header: list[str]
    rows: list[list[str]]

    def col(self, name: str) -> int:
        return self.header.index(name)

    def identifiable_values(self) -> set[str]:
        return {row[self.col(c)] for row in self.rows for c in IDENTIFIABLE_COLUMNS if row[self.col(c)]}


def csv_bytes(
    header: list[str], rows: list[list[str]], *, delimiter: str = ",", newline: str = "\n", encoding: str = "utf-8"
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def good_bytes(good: Good) -> bytes:
    return csv_bytes(good.header, good.rows)


def with_values(good: Good, row: int, **values: str) -> bytes:
    """The good file with some values of one data row (1-based) changed."""
    rows = [list(r) for r in good.rows]
    for column, value in values.items():
        rows[row - 1][good.col(column)] = value
    return csv_bytes(good.header, rows)


def nhs(good: Good, row: int) -> str:
    return good.rows[row - 1][good.col("nhs_number")]


# ---------------------------------------------------------------------------------------------------- outcomes

LAST_ROW = -1  # in `Expect.quarantined`: the file's last data row


def _row(number: int) -> str:
    return "the last row" if number == LAST_ROW else f"row {number:,}"


@dataclass(frozen=True)
class Expect:
    verdict: str  # refused, gate_failed, loaded, duplicate, not_an_extract
    message: str = ""  # a fragment the refusal's message must hold
    quarantined: dict[int, str] = field(default_factory=dict)  # data row -> (column, reason fragment)
    nhs_number_check: dict[int, str] = field(default_factory=dict)  # data row -> how its NHS number was read
    extra_columns: tuple[str, ...] = ()
    note: str = ""  # a decision where the contract is silent, or a fix the case led to

    def describe(self) -> str:
        return self._outcome() + (f". {self.note}" if self.note else "")

    def _outcome(self) -> str:
        if self.verdict == "refused":
            return f"whole file refused: \u201c{self.message}\u201d; nothing stored"
        if self.verdict == "gate_failed":
            return f"staged, then refused by the quality gate rule `{self.message}`; nothing published"
        if self.verdict == "duplicate":
            return "the second delivery is recorded as a duplicate; nothing loaded twice"
        if self.verdict == "not_an_extract":
            return (
                "never loaded; named with its reason in `pophealth status` (with a note under the verdict), the "
                f"run summary and the ingest DAG's log: \u201c{self.message}\u201d"
            )
        parts = ["loaded"]
        if self.quarantined:
            parts.append(
                "; ".join(
                    f"{_row(r)} quarantined ({reason}), the rest loaded" for r, reason in self.quarantined.items()
                )
            )
        else:
            parts.append("every row loaded")
        parts += [
            f"row {r} loaded with NHS number `{check}`" + (" (unlinked, counted)" if check == "invalid" else "")
            for r, check in self.nhs_number_check.items()
        ]
        if self.extra_columns:
            parts.append(f"extra column(s) {', '.join(self.extra_columns)} ignored and reported in audit.load")
        return "; ".join(parts)


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    how: str
    deliveries: Callable[[Good], list[bytes]]  # the files delivered, in order, under the same name
    expect: Expect
    file_name: str | None = None  # another name than the contract's apc_<provider>_<period>.csv
    secrets: tuple[str, ...] = ()  # identifiable values the case adds, which no message may hold


def one(make: Callable[[Good], bytes]) -> Callable[[Good], list[bytes]]:
    return lambda good: [make(good)]


def _truncated(good: Good) -> bytes:
    data = good_bytes(good).rstrip(b"\n")
    last = data.rfind(b"\n")
    return data[: last + 1 + (len(data) - last) // 3]  # a third of the last line, then the file ends


def _unbalanced_quote(good: Good) -> bytes:
    lines = good_bytes(good).split(b"\n")
    lines[2] = lines[2].replace(b",", b',"', 1)  # a field opens a quote that never closes
    return b"\n".join(lines)


def _nul(good: Good) -> bytes:
    lines = good_bytes(good).split(b"\n")
    lines[2] = lines[2][:20] + b"\x00" + lines[2][20:]
    return b"\n".join(lines)


def _dropped(good: Good, column: str) -> bytes:
    keep = [i for i, c in enumerate(good.header) if c != column]
    return csv_bytes([good.header[i] for i in keep], [[r[i] for i in keep] for r in good.rows])


def _renamed(good: Good, old: str, new: str) -> bytes:
    return csv_bytes([new if c == old else c for c in good.header], good.rows)


def _extra(good: Good) -> bytes:
    return csv_bytes(good.header + ["ward_name", "Local_Flag"], [r + ["Ward 7", "Y"] for r in good.rows])


def _latin1(good: Good) -> bytes:
    names = ["Zoë Brontë"] + ["Ann Smith"] * (len(good.rows) - 1)
    return csv_bytes(
        good.header + ["patient_name"], [r + [n] for r, n in zip(good.rows, names, strict=False)], encoding="latin-1"
    )


def _full_width(digits: str) -> str:
    return "".join(chr(0xFF10 + int(d)) for d in digits)


def _repeated_header(good: Good) -> bytes:
    return csv_bytes(good.header, good.rows[:10] + [list(good.header)] + good.rows[10:])


BIG_FIELD = 10 * 1024 * 1024
MILLION = 1_000_000
MILLION_BAD_ROW = 500_000

CASES: tuple[Case, ...] = (
    Case(
        "empty_file",
        "an empty file (0 bytes)",
        "nothing written",
        one(lambda g: b""),
        Expect("refused", "the file is empty"),
    ),
    Case(
        "header_only",
        "a header and no data rows",
        "the good file's header line only",
        one(lambda g: csv_bytes(g.header, [])),
        Expect("refused", "the file has a header but no data rows"),
    ),
    Case(
        "missing_required_column",
        "a required column missing",
        "the `admidate` column removed",
        one(lambda g: _dropped(g, "admidate")),
        Expect("refused", "missing required column(s): admidate"),
    ),
    Case(
        "renamed_column",
        "a column renamed",
        "`epikey` renamed `episode_key`",
        one(lambda g: _renamed(g, "epikey", "episode_key")),
        Expect("refused", "missing required column(s): epikey"),
    ),
    Case(
        "extra_columns",
        "extra columns the contract does not have",
        "`ward_name` and `Local_Flag` added",
        one(_extra),
        Expect("loaded", extra_columns=("ward_name", "local_flag")),
    ),
    Case(
        "semicolon_delimited",
        "semicolon-delimited",
        "written with `;` between fields",
        one(lambda g: csv_bytes(g.header, g.rows, delimiter=";")),
        Expect("refused", "the file is not comma separated"),
    ),
    Case(
        "latin1_name",
        "Latin-1 encoded, with a non-ASCII name",
        "a `patient_name` column, `Zoë Brontë` in row 1, written as Latin-1",
        one(_latin1),
        Expect("refused", "the file is not UTF-8 text"),
        secrets=("Zoë Brontë", "Ann Smith"),
    ),
    Case(
        "byte_order_mark",
        "a UTF-8 byte-order mark",
        "`EF BB BF` before the header",
        one(lambda g: b"\xef\xbb\xbf" + good_bytes(g)),
        Expect("loaded"),
    ),
    Case(
        "crlf_line_endings",
        "Windows line endings",
        "every line ends `\\r\\n`",
        one(lambda g: csv_bytes(g.header, g.rows, newline="\r\n")),
        Expect("loaded"),
    ),
    Case(
        "truncated_last_line",
        "the last line cut short",
        "the file ends a third of the way into its last line",
        one(_truncated),
        Expect("loaded", quarantined={LAST_ROW: "fields, the header has"}),
    ),
    Case(
        "unbalanced_quote",
        "an unbalanced quote",
        "a field of data row 2 opens a quote that never closes",
        one(_unbalanced_quote),
        Expect("refused", "an unbalanced quote"),
    ),
    Case(
        "nul_byte",
        "a NUL byte",
        "a NUL byte inside data row 2",
        one(_nul),
        Expect(
            "refused",
            "NUL byte",
            note="Fixed here: Python 3.11's csv reader accepts NUL, so the loader "
            "now refuses a NUL anywhere in the file, not only in the header",
        ),
    ),
    Case(
        "ten_mb_field",
        "a 10 MB single field",
        "`diag_02` of row 2 is 10 MB of letters",
        one(lambda g: with_values(g, 2, diag_02="X" * BIG_FIELD)),
        Expect(
            "loaded",
            quarantined={2: "diag_02: value is longer than 1,000 characters"},
            note="Fixed here: the value was stored whole; no field of the contract is longer than a few "
            "hundred characters, so a value over 1,000 quarantines its row",
        ),
    ),
    Case(
        "binary_garbage",
        "binary garbage",
        "64 KB of seeded random bytes",
        one(lambda g: random.Random(8).randbytes(64 * 1024)),
        Expect("refused", "the file is not UTF-8 text"),
    ),
    Case(
        "dd_mm_yyyy_date",
        "a date written DD/MM/YYYY",
        "`admidate` of row 2 as `23/05/2024`",
        one(lambda g: with_values(g, 2, admidate="23/05/2024")),
        Expect("loaded", quarantined={2: "admidate: date is not in ISO YYYY-MM-DD form"}),
    ),
    Case(
        "impossible_date",
        "an impossible date",
        "`admidate` of row 2 is `2025-02-30`",
        one(lambda g: with_values(g, 2, admidate="2025-02-30")),
        Expect("loaded", quarantined={2: "admidate: date does not exist in the calendar"}),
    ),
    Case(
        "discharge_before_admission",
        "discharge before admission",
        "`disdate` and `epiend` of row 2 the day before 2000-01-01 admission",
        one(
            lambda g: with_values(
                g, 2, admidate="2000-01-02", epistart="2000-01-02", epiend="2000-01-01", disdate="2000-01-01"
            )
        ),
        Expect(
            "gate_failed",
            "apc.discharge_after_admission",
            note="One impossible spell refuses the file: the gate's rule is an error, as the registry decides",
        ),
    ),
    Case(
        "future_date",
        "a date in the future",
        "`disdate` and `epiend` of row 2 are `2099-12-31`",
        one(lambda g: with_values(g, 2, disdate="2099-12-31", epiend="2099-12-31")),
        Expect("gate_failed", "apc.dates.not_after_period_end"),
    ),
    Case(
        "nhs_number_letters",
        "an NHS number with letters",
        "row 2's NHS number has a letter in place of a digit",
        one(lambda g: with_values(g, 2, nhs_number="99A" + nhs(g, 2)[3:])),
        Expect("loaded", nhs_number_check={2: "invalid"}),
    ),
    Case(
        "nhs_number_9_digits",
        "an NHS number of 9 digits",
        "row 2's NHS number without its last digit",
        one(lambda g: with_values(g, 2, nhs_number=nhs(g, 2)[:9])),
        Expect("loaded", nhs_number_check={2: "invalid"}),
    ),
    Case(
        "nhs_number_11_digits",
        "an NHS number of 11 digits",
        "row 2's NHS number with a `0` added",
        one(lambda g: with_values(g, 2, nhs_number=nhs(g, 2) + "0")),
        Expect("loaded", nhs_number_check={2: "invalid"}),
    ),
    Case(
        "nhs_number_bad_check_digit",
        "an NHS number whose check digit is wrong",
        "row 2's last digit changed",
        one(lambda g: with_values(g, 2, nhs_number=nhs(g, 2)[:9] + str((int(nhs(g, 2)[9]) + 1) % 10))),
        Expect("loaded", nhs_number_check={2: "invalid"}),
    ),
    Case(
        "nhs_number_full_width",
        "an NHS number in full-width digits",
        "row 2's NHS number written with full-width digits (U+FF10 to U+FF19)",
        one(lambda g: with_values(g, 2, nhs_number=_full_width(nhs(g, 2)))),
        Expect(
            "loaded",
            nhs_number_check={2: "invalid"},
            note="Fixed here: Python's `\\d` took them as digits and staging crashed (UnicodeEncodeError), recorded "
            "as an interruption; the contract's digits are ASCII 0-9",
        ),
    ),
    Case(
        "epiorder_overflow",
        "a number its column cannot hold",
        "`epiorder` of row 2 is `99999999999`",
        one(lambda g: with_values(g, 2, epiorder="99999999999")),
        Expect(
            "loaded",
            quarantined={2: "epiorder: number is larger than 32,767"},
            note="Fixed here: the COPY failed (smallint out of range) and the whole load crashed",
        ),
    ),
    Case(
        "epiorder_superscript",
        "an unexpected character in a number",
        "`epiorder` of row 2 is `\u00b2` (superscript two)",
        one(lambda g: with_values(g, 2, epiorder="\u00b2")),
        Expect(
            "loaded",
            quarantined={2: "epiorder: not a whole number"},
            note="Fixed here: `str.isdigit` took it and `int` crashed the load. Any other exception in a load "
            "is recorded `failed` (class only) and stops the marts: tests/robustness/test_published_and_failed.py",
        ),
    ),
    Case(
        "nhs_number_spaces",
        "an NHS number with spaces (valid per the contract)",
        "row 2's as `999 123 4567`",
        one(lambda g: with_values(g, 2, nhs_number=f"{nhs(g, 2)[:3]} {nhs(g, 2)[3:6]} {nhs(g, 2)[6:]}")),
        Expect("loaded", nhs_number_check={2: "test_range"}),
    ),
    Case(
        "nhs_number_hyphens",
        "an NHS number with hyphens (valid per the contract)",
        "row 2's as `999-123-4567`",
        one(lambda g: with_values(g, 2, nhs_number=f"{nhs(g, 2)[:3]}-{nhs(g, 2)[3:6]}-{nhs(g, 2)[6:]}")),
        Expect("loaded", nhs_number_check={2: "test_range"}),
    ),
    Case(
        "same_file_twice",
        "the same file delivered twice",
        "the good file, delivered again unchanged",
        lambda g: [good_bytes(g), good_bytes(g)],
        Expect("duplicate", note="Two deliveries at the same time end the same way (fault `two_loads_at_once`)"),
    ),
    Case(
        "resubmission",
        "a resubmission replacing an earlier file (same provider and period)",
        "the good file, then the same period again without its last row",
        lambda g: [good_bytes(g), csv_bytes(g.header, g.rows[:-1])],
        Expect("loaded", note="The earlier load is superseded; the period holds the second file's rows only"),
    ),
    Case(
        "bad_file_name",
        "a file name that is not the contract's",
        "named `apc_RAJ_2025-10-31.csv`",
        one(good_bytes),
        Expect("not_an_extract", "the date is not in the contract's form YYYYMMDD"),
        file_name="apc_RAJ_2025-10-31.csv",
    ),
    Case(
        "wrong_case_name",
        "a file name in the wrong case",
        "named `APC_RAJ_20250131.csv`",
        one(good_bytes),
        Expect("not_an_extract", "wrong case"),
        file_name="APC_RAJ_20250131.csv",
    ),
    Case(
        "zip_name",
        "an extract compressed as .zip",
        "named `apc_RAJ_20250131.zip`",
        one(good_bytes),
        Expect("not_an_extract", "compressed or archived as .zip"),
        file_name="apc_RAJ_20250131.zip",
    ),
    Case(
        "bz2_name",
        "an extract compressed as .bz2",
        "the good file bzip2-compressed, named `apc_RAJ_20250131.csv.bz2`",
        one(lambda g: bz2.compress(good_bytes(g))),
        Expect("not_an_extract", "compressed or archived as .bz2"),
        file_name="apc_RAJ_20250131.csv.bz2",
    ),
    Case(
        "impossible_date_name",
        "an impossible date in the file name",
        "named `apc_RAJ_20250230.csv`",
        one(good_bytes),
        Expect("not_an_extract", "an impossible date"),
        file_name="apc_RAJ_20250230.csv",
    ),
    Case(
        "unknown_feed_name",
        "a feed the contract does not have",
        "named `ae_RAJ_20250131.csv`",
        one(good_bytes),
        Expect("not_an_extract", "not a feed of the extract contract"),
        file_name="ae_RAJ_20250131.csv",
    ),
    Case(
        "gzip_extract",
        "a gzip-compressed extract",
        "the good file gzip-compressed, named `apc_RAJ_20251231.csv.gz`",
        one(lambda g: gzip.compress(good_bytes(g))),
        Expect(
            "loaded", note="Fixed here: a `.csv.gz` was never picked up and nothing said so; it is read as a stream"
        ),
        file_name="apc_RAJ_20251231.csv.gz",
    ),
    Case(
        "repeated_header",
        "two files joined: the header repeated inside the file",
        "the header line again before data row 11",
        one(_repeated_header),
        Expect(
            "refused",
            "a repeated header row at row 11",
            note="Fixed here: the header row was quarantined with a wrong reason and the joined rows reached dbt",
        ),
    ),
    Case(
        "repeated_episode_key",
        "an episode key repeated within the file",
        "data row 2 again at the end of the file",
        one(lambda g: csv_bytes(g.header, g.rows + [g.rows[1]])),
        Expect(
            "gate_failed",
            "apc.episode_key.unique",
            note="The gate's message names the rule, how many rows and their row numbers, never the key; the "
            "dbt uniqueness test is a second line. A social care file repeating a unique event: "
            "`cld.event.unique_in_file` (tests/robustness/test_published_and_failed.py)",
        ),
    ),
    Case(
        "sql_and_formula_values",
        "values that look like SQL or spreadsheet formulas",
        "row 2's `diag_02..diag_05` are `'); DROP TABLE raw.apc_episode; --`, `=HYPERLINK(\"http://x\")`, "
        "`+SUM(1,1)`, `@cmd`",
        one(
            lambda g: with_values(
                g,
                2,
                diag_02="'); DROP TABLE raw.apc_episode; --",
                diag_03='=HYPERLINK("http://x")',
                diag_04="+SUM(1,1)",
                diag_05="@cmd",
            )
        ),
        Expect("loaded", note="Stored as text exactly as sent, never executed (see below on formulas)"),
    ),
    Case(
        "million_rows_one_bad",
        "a million rows, one bad row in the middle",
        f"the good rows repeated with fresh episode and spell keys to {MILLION:,} rows; row {MILLION_BAD_ROW:,} "
        "has `admidate` `2025-02-30`; streamed to disk",
        lambda g: [],
        Expect("loaded", quarantined={MILLION_BAD_ROW: "admidate: date does not exist in the calendar"}),
    ),
)

#: Cases with a test of their own (the others run in the table-driven test).
OWN_TEST = {"million_rows_one_bad"}

#: The values `sql_and_formula_values` stores; the test checks they are kept as text, as sent.
FORMULA_VALUES = {
    "diag_02": "'); DROP TABLE raw.apc_episode; --",
    "diag_03": '=HYPERLINK("http://x")',
    "diag_04": "+SUM(1,1)",
    "diag_05": "@cmd",
}


def write_million(good: Good, path: Path, rows: int = MILLION, bad_row: int = MILLION_BAD_ROW) -> None:
    """The million-row file: the good rows repeated, block after block, with fresh episode and spell keys (the
    block's number appended to both), and the row `bad_row` (counted from 1) with an impossible admission date.

    Each good row is rendered as CSV once, cut where its keys end; a block is those pieces joined with the block's
    suffix, written in one call. Written row by row with the csv module it took 3.5 s; the file is byte for byte
    the same (tests/unit/test_robustness_spec.py)."""
    epikey, spell, admidate = good.col("epikey"), good.col("spell_id"), good.col("admidate")
    cut = "\0"  # no extract value holds a NUL, and the csv module does not quote one

    def line(row: list[str]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(row)
        return out.getvalue()

    def keyed(row: list[str]) -> list[str]:
        fresh = list(row)
        fresh[epikey] += cut
        fresh[spell] += cut
        return fresh

    pieces = [line(keyed(row)).split(cut) for row in good.rows]
    per_block = len(good.rows)
    with path.open("w", newline="") as handle:
        handle.write(line(good.header))
        for block, first in enumerate(range(0, rows, per_block)):
            suffix = f"B{block}"
            lines = [suffix.join(p) for p in pieces[: rows - first]]
            if first < bad_row <= first + per_block:
                bad = keyed(good.rows[bad_row - first - 1])
                bad[admidate] = "2025-02-30"
                lines[bad_row - first - 1] = suffix.join(line(bad).split(cut))
            handle.write("".join(lines))


# ---------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    id: str  # its test is tests/robustness/test_faults.py::test_<id>
    what: str
    how: str
    outcome: str


FAULTS: tuple[Fault, ...] = (
    Fault(
        "server_stops_mid_load",
        "the PostgreSQL server stops in the middle of a load",
        "a child process stages and publishes a 100,000-row file; the embedded server is stopped (fast shutdown) "
        "once the load is under way",
        "the load fails with a one-line database error; the raw table holds none of the file (the staging "
        "transaction is rolled back); retried (bounded), the load completes and holds all of it once. The "
        "next load finds the cut-off one's audit row still `loading` with no process behind it (its "
        "connection's lock is gone) and records it as `interrupted`",
    ),
    Fault(
        "killed_mid_load",
        "the loading process is killed (SIGKILL) in the middle of a load",
        "a child process stages a 100,000-row file and is killed once the load is under way",
        "nothing of the file is stored and no batch table is left; a rerun loads all of it once, and records "
        "the killed load as `interrupted`",
    ),
    Fault(
        "same_dag_run_twice",
        "the same DAG run twice",
        "`pophealth dag ingest_apc --landing ...` twice on the same landing folder (real Airflow)",
        "the second run finds nothing new; raw.apc_episode and the load audit are unchanged; the marts equal "
        "the answer key",
    ),
    Fault(
        "two_loads_at_once",
        "two loads of the same source at once",
        "two processes stage and publish the same file at the same time",
        "as if one after the other: one load published, the other recorded as a duplicate; no doubled rows; "
        "both audited. Fixed here: `publish_load` checks, under the feed's publish lock, whether the same file "
        "was published meanwhile (before, the second replaced the first: no doubled rows, but a needless "
        "superseded load)",
    ),
    Fault(
        "file_still_being_written",
        "a file still being written in the landing folder",
        "a writer process appends to an extract slowly while the landing folder is scanned; temporary names "
        "(`.x.csv`, `*.part`, `*.tmp`) are present too",
        "the growing file and the temporary names are not picked up; once the writer has finished the file is "
        "picked up and loaded (settle rule: POPHEALTH_LANDING_SETTLE_SECONDS, default 2 s)",
    ),
)


# ------------------------------------------------------------------------------- reference data and crashes


@dataclass(frozen=True)
class Delivery:
    """A delivery around the files themselves (the postcode lookup, a crash, the landing folder, a social care
    file): its test is tests/robustness/test_published_and_failed.py::test_<id>."""

    id: str
    what: str
    how: str
    outcome: str


LOOKUP_AND_CRASH: tuple[Delivery, ...] = (
    Delivery(
        "a_personal_load_uses_the_published_lookup_and_ignores_the_landing_folders",
        "a postcode lookup in the landing folder that was never published",
        "a lookup putting every postcode in locality `ELSEWHERE` next to a hospital file, not loaded itself",
        "the hospital file's postcodes are reduced through the last published lookup (raw.ref_postcode), never "
        "a file in the landing folder. Fixed here: the landing folder's lookup was read for every personal file",
    ),
    Delivery(
        "without_a_published_lookup_a_personal_load_is_refused",
        "no published postcode lookup",
        "raw.ref_postcode emptied, then a hospital file delivered",
        "refused: \u201cno postcode lookup is published\u201d; nothing stored",
    ),
    Delivery(
        "a_lookup_without_locality_code_is_refused_and_personal_loads_go_on",
        "a postcode lookup without `locality_code`",
        "the world's lookup with the column removed",
        "the lookup is refused (\u201cmissing required column(s): locality_code\u201d); the next hospital "
        "file loads with the lookup in force. Fixed here: every personal load crashed",
    ),
    Delivery(
        "a_lookup_its_gate_refuses_is_never_used",
        "a postcode lookup that fails its gate",
        "every `locality_code` is `NOT A CODE`",
        "refused by `ref_postcode_lookup.locality_code.format`; the published lookup is unchanged and the next "
        "hospital file uses it. Fixed here: personal files were published through the refused lookup",
    ),
    Delivery(
        "council_locality_codes_pass_the_gate_and_are_used",
        "council locality codes (contract v2), with `la_code`",
        "the world's lookup with each LSOA's locality one of `GRAYS`, `TILBURY`, `STANFORD-LE-HOPE`, "
        "`AVELEY_OCKENDON`, and `la_code` `E06000034`",
        "passes its gate and is published (postcode digest, LSOA, locality and la_code in raw.ref_postcode); the next "
        "hospital file's localities are the council's codes. Fixed here: the gate took only ONS district codes",
    ),
    Delivery(
        "a_crash_is_recorded_failed_stops_the_marts_and_needs_a_person",
        "a crash while staging (a value no rule expects)",
        "`raw.apc_episode.sex` narrowed to `varchar(1)` under the loader, and a row's sex is `XX`: a real COPY error",
        "recorded `failed` with the exception's class only (`StringDataRightTruncation`), never its text; "
        "`build_marts` refuses to publish (`assert_loads_gated`) and `pophealth status` says FAILED (a crash; "
        "needs a person), exit 1, until a good file of the period loads. `interrupted` is kept for a killed "
        "process or a stopped server. Fixed here: a crash was recorded `interrupted` and the marts were "
        "published without the file",
    ),
    Delivery(
        "files_that_are_not_extracts_are_named_in_status_the_run_summary_and_the_dag_log",
        "files in the landing folder that are not extracts",
        "`APC_RAJ_20250131.csv`, `apc_RAJ_20250131.zip`, beside a `.csv.gz` extract, a hidden file, a `.part` "
        "file and an `answer_key/` folder",
        "each is named with its reason in `pophealth status` (and a note under its verdict: not a failure, exit "
        "0), in the run summary (whose first "
        "line says files were not loaded) and in the ingest DAG's log; the `.csv.gz` is loaded; hidden and "
        "temporary names and sub-folders stay silent",
    ),
    Delivery(
        "a_cld_file_repeating_an_event_is_refused_by_its_gate_with_row_numbers_not_keys",
        "a social care file repeating one of its own events",
        "its first data row again at the end",
        "refused by the gate rule `cld.event.unique_in_file`: how many rows and their row numbers, never the "
        "key; the dbt deduplication is a second line",
    ),
)


# ------------------------------------------------------------------------------- the opt-out list in force

#: Their tests are tests/integration/test_pseudonyms_by_purpose.py::test_<id> (contract v2: the opt-out by purpose).
OPTOUT_LISTS: tuple[Delivery, ...] = (
    Delivery(
        "the_latest_list_is_in_force_removal_brings_back_and_an_older_list_is_refused_as_stale",
        "a later opt-out list without one person, then the earlier list delivered again late, then a still "
        "later list with them",
        "lists written beside the world's, dated a month and two months after it",
        "the latest-dated list is in force: the person is back in marts.person at the next build; the late "
        "older list is recorded `stale` (\u201cbefore the list in force\u201d) and never published; the still "
        "later list takes them out of every secondary-use mart again. Fixed here: publishing replaced the list "
        "with whichever came last, and a superseded list was picked up again as new",
    ),
    Delivery(
        "of_several_lists_in_the_folder_only_the_newest_is_picked_up_the_others_recorded_stale_once",
        "three new opt-out lists in the landing folder at once, runs repeated, then an older one arriving late",
        "three lists dated after the one in force; `pending_extracts` and `stale_optout_lists` as a run calls them",
        "only the newest is picked up; the two others are recorded `stale` once; a run with nothing new picks "
        "up nothing (nothing republished); the late older list is recorded `stale` and never picked up",
    ),
    Delivery(
        "an_opted_out_person_is_in_case_finding_and_in_no_row_or_count_of_marts_or_reporting",
        "people on the list in force with records in the feeds",
        "the world's opted-out people",
        "their rows are loaded (counted in `rows_opted_out`) for their own care: in "
        "`direct_care.case_finding`, in no row and no count of `marts` and `reporting`; each build records how "
        "many people each purpose left out (`audit.optout_by_purpose`). Before contract v2 they were removed "
        "from raw and the vault, so their care team could not find them",
    ),
)
