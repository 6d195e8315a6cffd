"""The information governance audit report: one self-contained HTML page an IG officer reads in a browser.

It answers, from the live warehouse and the data sharing register, without asking an engineer: which sources,
under which agreement, what was loaded and removed; where each published figure comes from; who can read what
(the grants as they are in the database, not as the code intends); who re-identified whom, when and why (how
many people, never who); whether anything identifiable is stored; how many people each person-level mart
still singles out on its quasi-identifiers (`pophealth.governance.disclosure`, counts only); and the quality gates'
history.

The page is a Jinja2 template (templates/ig_report.html.j2, autoescaped: every value from the database is text);
it fetches nothing (no script, font or style from the network).

The identifiable-value scan reads every row (not a sample) of every text, date and integer column, and the
text form of every jsonb, json, array, xml and user-defined column, of every table outside `vault`
(ciphertext by design: nothing there is readable without the vault key) and the system schemas. It looks for
NHS numbers that pass the Modulus 11 check digit (pophealth/contract/identifiers.py) standing alone in a text value or
as a 10-digit integer, full postcodes, and full dates in any column whose name says birth. An NHS number
written in other digits (full-width, Arabic-Indic, Devanagari, any Unicode decimal digit) or with other
dashes and spaces is read as the ASCII number it spells before the check digit is tried. Pseudonyms (64 hex
characters) and file checksums cannot match: a candidate must not touch a letter or digit either side.

The columns that hold machine identifiers by their meaning (MACHINE_IDENTIFIERS: a dbt node id, a run id, a
checksum, a hash of the audit chain, each with why) are not scanned, and the page lists them; every other column
is, whatever its values look like. A finding names the table, the column and the kind of value, never the value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from psycopg import sql

from pophealth import config
from pophealth.contract import agreements
from pophealth.contract.identifiers import is_valid_nhs_number
from pophealth.governance import disclosure
from pophealth.warehouse import db

PLATFORM_ROLES = ("loader", "analyst", "ig_auditor", "reidentifier")
#: Read on a value whose digits are ASCII already (as_ascii_digits): three, three and four digits, spaces or dashes
#: between (U+2010..U+2015 and the minus sign too, which NFKC does not turn into "-").
NHS_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z])([0-9]{3})[ \-\u2010-\u2015\u2212]?([0-9]{3})[ \-\u2010-\u2015\u2212]?([0-9]{4})"
    r"(?![0-9A-Za-z])"
)
NHS_PREFILTER = r"(^|[^0-9A-Za-z])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}([^0-9A-Za-z]|$)"
POSTCODE = r"(^|[^0-9A-Za-z])[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}([^0-9A-Za-z]|$)"
POSTCODE_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}(?![0-9A-Za-z])")
TEXT_TYPES = ("text", "character varying", "character")
#: Scanned as their text form (`column::text`): a jsonb document, an array (of text or of numbers), xml, an enum or
#: a composite can hold an NHS number as well as a text column can.
TEXT_FORM_TYPES = ("jsonb", "json", "ARRAY", "xml", "USER-DEFINED")
SCANNED_TYPES = (
    *TEXT_TYPES,
    *TEXT_FORM_TYPES,
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
    "bigint",
    "integer",
    "numeric",
)
#: Not scanned: the encrypted vault (ciphertext only) and PostgreSQL's own schemas.
SKIPPED_SCHEMAS = ("vault", "pg_catalog", "information_schema", "pg_toast")
_RUN_ID = (
    "the run that wrote the row: an Airflow run id (manual__<timestamp>, scheduled__<timestamp>) or the "
    "command's own; made by the machine, never from a person's data"
)
_CHAIN_HASH = "a sha256 of the audit hash chain (64 hex characters), computed from the rows; it names no one"
#: Columns whose values are machine identifiers by what the column means, so that a value that happens to spell ten
#: digits passing the Modulus 11 check is not an NHS number: not scanned, and listed on the page with why. Keyed
#: schema.table.column; a column is added here only for its meaning, never because a scan flagged it.
MACHINE_IDENTIFIERS: dict[str, str] = {
    "audit.dbt_result.unique_id": "dbt's node id (test.pophealth.<test name>.<10 hex digits>): the hash at its end is "
    "a digest of the test's configuration, ten decimal digits in about 1% of tests, "
    "and one in eleven of those passes the check digit; it names a test, not a person",
    "audit.dbt_result.run_id": _RUN_ID,
    "audit.load.run_id": _RUN_ID,
    "audit.gate_result.run_id": _RUN_ID,
    "audit.optout_by_purpose.run_id": _RUN_ID,
    "audit.marts_publication.run_id": _RUN_ID,
    "audit.column_lineage.run_id": _RUN_ID,
    "audit.load.file_sha256": "the sha256 checksum of a delivered file (64 hex characters): it identifies a file",
    "audit.load.file_bytes": "a delivered file's size in bytes: a measurement, ten digits for a file of 1 GB or more",
    **{
        f"audit.{table}.{column}": _CHAIN_HASH
        for table in ("reidentification", "reidentification_approval", "key_rotation")
        for column in ("previous_hash", "row_hash")
    },
}
CANDIDATES_PER_COLUMN = 10_000  # a bound on the rows fetched for the check digit per column


def as_ascii_digits(text: str) -> str:
    """The text with every decimal digit as its ASCII digit: NFKC first (full-width digits, dashes and spaces to
    ASCII), then any other script's decimal digit (Arabic-Indic, Devanagari, ...) by its Unicode value."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if not ch.isascii() and ch.isdecimal() else ch for ch in text)


def nhs_numbers_in(value: str) -> int:
    """How many NHS numbers that pass the check digit stand in a text value, in whatever digits they are written."""
    text = as_ascii_digits(value)
    return sum(1 for m in NHS_CANDIDATE.finditer(text) if is_valid_nhs_number("".join(m.groups())))


def postcode_only_beyond_ascii(value: str) -> bool:
    """A full postcode written in full-width letters and digits ("ＳＷ１Ａ　１ＡＡ") or other digits, which the
    database's ASCII match (POSTCODE, counted in SQL) does not see: counted here, and only here."""
    if value.isascii() or POSTCODE_IN_TEXT.search(value):
        return False
    return bool(POSTCODE_IN_TEXT.search(as_ascii_digits(value)))


def _json_unescaped(value: str) -> str:
    """A json value (kept as written) with its \\u escapes read: "\\uff19" is a digit nine."""
    try:
        return json.dumps(json.loads(value), ensure_ascii=False)
    except ValueError:
        return value


# -- the scan ------------------------------------------------------------------------------------------------


@dataclass
class Finding:
    relation: str
    column: str
    kind: str
    rows: int


@dataclass
class ScanResult:
    tables: int = 0
    columns: int = 0
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    machine_identifiers: list[str] = field(default_factory=list)  # schema.table.column, present and not scanned

    @property
    def clean(self) -> bool:
        return not self.findings


def scan_warehouse(conn) -> ScanResult:
    result = ScanResult()
    columns = conn.execute(
        """SELECT c.table_schema, c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE' AND c.table_schema <> ALL(%s) AND c.table_schema NOT LIKE 'pg_temp%%'
             AND c.data_type = ANY(%s)
           ORDER BY 1, 2, c.ordinal_position""",
        (list(SKIPPED_SCHEMAS), list(SCANNED_TYPES)),
    ).fetchall()
    by_table: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for schema, table, column, kind in columns:
        by_table[(schema, table)].append((column, kind))
    for (schema, table), cols in by_table.items():
        relation = sql.Identifier(schema, table)
        result.tables += 1
        result.rows += conn.execute(sql.SQL("SELECT count(*) FROM {}").format(relation)).fetchone()[0]
        for column, kind in cols:
            where = f"{schema}.{table}"
            if f"{where}.{column}" in MACHINE_IDENTIFIERS:
                result.machine_identifiers.append(f"{where}.{column}")
                continue
            result.columns += 1
            ident = sql.Identifier(column)
            if kind in TEXT_TYPES or kind in TEXT_FORM_TYPES:
                text = ident if kind in TEXT_TYPES else sql.SQL("{}::text").format(ident)
                # Candidates: ASCII digits in the NHS number's shape, any value with a character beyond ASCII
                # (other digits, dashes, spaces), and a json value with a \u escape (json keeps them as written).
                # Streamed, not bounded: a column of names with accents must not crowd a number out of the look.
                rows = conn.cursor().stream(
                    sql.SQL(
                        "SELECT {c} FROM {t} WHERE {c} ~ %s OR octet_length({c}) > char_length({c}) "
                        "OR strpos({c}, %s) > 0"
                    ).format(c=text, t=relation),
                    (NHS_PREFILTER, "\\u"),
                )
                read = _json_unescaped if kind == "json" else str
                hits = postcodes_beyond_ascii = 0
                for (value,) in rows:
                    value = read(value)
                    hits += bool(nhs_numbers_in(value))
                    postcodes_beyond_ascii += postcode_only_beyond_ascii(value)
                if hits:
                    result.findings.append(Finding(where, column, "NHS number (passes Modulus 11)", hits))
                postcodes = (
                    postcodes_beyond_ascii
                    + conn.execute(
                        sql.SQL("SELECT count(*) FROM {t} WHERE {c} ~ %s").format(c=text, t=relation), (POSTCODE,)
                    ).fetchone()[0]
                )
                if postcodes:
                    result.findings.append(Finding(where, column, "full postcode", postcodes))
                if "birth" in column or column in ("dob",):
                    dates = conn.execute(
                        sql.SQL("SELECT count(*) FROM {t} WHERE {c} ~ %s").format(c=text, t=relation),
                        (r"\d{4}-\d{2}-\d{2}|\d{2}/\d{2}/\d{4}",),
                    ).fetchone()[0]
                    if dates:
                        result.findings.append(Finding(where, column, "full date of birth", dates))
            elif kind in ("bigint", "integer", "numeric"):
                rows = conn.execute(
                    sql.SQL("SELECT {c}::text FROM {t} WHERE {c} BETWEEN 1000000000 AND 9999999999 LIMIT %s").format(
                        c=ident, t=relation
                    ),
                    (CANDIDATES_PER_COLUMN,),
                ).fetchall()
                hits = sum(1 for (value,) in rows if is_valid_nhs_number(value))
                if hits:
                    result.findings.append(Finding(where, column, "NHS number (passes Modulus 11)", hits))
            elif "birth" in column or column == "dob":  # a date column named for birth holds a full date of birth
                dates = conn.execute(sql.SQL("SELECT count({c}) FROM {t}").format(c=ident, t=relation)).fetchone()[0]
                if dates:
                    result.findings.append(Finding(where, column, "full date of birth", dates))
    return result


# -- what the report reads -------------------------------------------------------------------------------------


def _rows(conn, query: str, params: tuple = ()) -> list[tuple]:
    return conn.execute(query, params).fetchall()


def _table_exists(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def grants(conn) -> dict:
    """Who can read what, from PostgreSQL's catalogues as they are now."""
    roles = _rows(
        conn,
        """
        SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
               coalesce((SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_auth_members m
                         JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '')
        FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY r.rolname""",
    )
    tables = _rows(
        conn,
        """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
               n.nspname, c.relname, a.privilege_type, pg_get_userbyid(a.grantor)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
        WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
          AND a.grantee <> c.relowner
        ORDER BY 1, 2, 3, 4""",
    )
    columns = _rows(
        conn,
        """
        SELECT grantee, table_schema, table_name, string_agg(column_name, ', ' ORDER BY column_name), privilege_type
        FROM information_schema.column_privileges
        WHERE table_schema !~ '^pg_' AND table_schema <> 'information_schema'
          AND grantee <> (SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n
                          ON n.oid = c.relnamespace WHERE n.nspname = table_schema AND c.relname = table_name)
          AND NOT EXISTS (SELECT 1 FROM information_schema.role_table_grants t
                          WHERE t.grantee = column_privileges.grantee
                          AND t.table_schema = column_privileges.table_schema
                          AND t.table_name = column_privileges.table_name
                          AND t.privilege_type = column_privileges.privilege_type)
        GROUP BY 1, 2, 3, 5 ORDER BY 1, 2, 3""",
    )
    schemas = _rows(
        conn,
        """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, n.nspname,
               string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
        FROM pg_namespace n, aclexplode(n.nspacl) a
        WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' AND a.grantee <> n.nspowner
        GROUP BY 1, 2 ORDER BY 1, 2""",
    )
    functions = _rows(
        conn,
        """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               p.prosecdef
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a
        WHERE n.nspname IN ('vault', 'audit') AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
        ORDER BY 1, 2""",
    )
    defaults = _rows(
        conn,
        """
        SELECT pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '(every schema)'),
               CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                    WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""",
    )
    return {
        "roles": roles,
        "tables": tables,
        "columns": columns,
        "schemas": schemas,
        "functions": functions,
        "defaults": defaults,
    }


# -- the page ---------------------------------------------------------------------------------------------------
# The page is the template templates/ig_report.html.j2 (package data), autoescaped; this module prepares its values.

_PAGES = Environment(
    loader=PackageLoader("pophealth.governance"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_PAGES.filters["text"] = lambda value: "" if value is None else str(value)


def _sources(register: agreements.Register, loads: list[tuple]) -> dict:
    today = agreements.today()
    rows = [
        [
            a.organisation_name,
            a.organisation_code,
            a.feed,
            a.provider or "",
            a.dsa_reference,
            a.version,
            a.start_date,
            a.end_date,
            "in force" if a.in_force(today) else "NOT in force",
            a.legal_basis_article_6,
            a.legal_basis_article_9,
            a.common_law_basis,
            ", ".join(a.purposes),
            a.data_controller,
        ]
        for a in register.agreements
    ]
    known = {(a.feed, a.provider) for a in register.agreements}
    unknown = sorted({(r[1], r[2]) for r in loads if (r[1], r[2]) not in known}, key=str)
    return {
        "version": register.version,
        "agreements": len(register.agreements),
        "today": today,
        "rows": rows,
        "unknown": [f"{f} from {p}" if p else f for f, p in unknown],
    }


def _loads(loads: list[tuple], optouts_by_purpose: list[tuple]) -> dict:
    rows = [
        [
            r[0],
            r[1],
            r[2] or "",
            r[3] or "",
            r[4],
            r[5],
            (r[6] or "")[:16] + ("…" if r[6] else ""),
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
            r[12] or "",
            r[13] or "",
            r[14] or "",
            (r[15] or "")[:300],
        ]
        for r in loads
    ]
    return {"rows": rows, "by_purpose": optouts_by_purpose}


def _graph(edges: list[tuple[str, str]]) -> dict:
    """Sources on the left, published tables on the right, a line for each dependency (drawn as inline SVG)."""
    sources = sorted({s for s, _ in edges}, key=lambda s: (s.startswith("seed "), s.startswith("audit."), s))
    targets = sorted({t for _, t in edges})
    step, width = 26, 900
    y_s = {s: 20 + i * step * max(len(targets), 1) / max(len(sources), 1) for i, s in enumerate(sources)}
    y_t = {t: 20 + i * step for i, t in enumerate(targets)}
    return {
        "width": width,
        "height": max(len(sources), len(targets)) * step + 30,
        "lines": [
            {
                "y1": f"{y_s[s]:.0f}",
                "y2": f"{y_t[t]:.0f}",
                "colour": "#b0b8c1" if s.startswith(("seed ", "audit.")) else "#0b3d5c",
            }
            for s, t in edges
        ],
        "sources": [{"y": f"{y_s[s] + 4:.0f}", "text": s} for s in sources],
        "targets": [{"y": f"{y_t[t] + 4:.0f}", "text": t} for t in targets],
    }


def _lineage(lineage: list[tuple]) -> dict:
    if not lineage:
        return {"graph": None, "marts": []}
    edges = sorted({(feed, mart) for mart, _, feed, _, _, _ in lineage})
    by_column: dict[str, dict[str, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for mart, column, feed, source_column, kind, path in lineage:
        by_column[mart][column].append((feed, source_column, kind, path))
    marts = []
    for mart in sorted(by_column):
        rows = []
        for column, sources in by_column[mart].items():
            for kind in ("direct", "indirect"):
                named = defaultdict(list)
                for feed, source_column, k, _ in sources:
                    if k == kind:
                        named[feed].append(source_column)
                if named:
                    rows.append(
                        [column, kind, "; ".join(f"{f}: {', '.join(sorted(c))}" for f, c in sorted(named.items()))]
                    )
        marts.append({"name": mart, "columns": len(by_column[mart]), "rows": rows})
    return {"graph": _graph(edges), "marts": marts}


def _access(g: dict) -> dict:
    per_role = defaultdict(list)
    for grantee, schema, table, privilege, _grantor in g["tables"]:
        per_role[grantee].append((schema, table, privilege))
    tables_by_role = []
    for role in sorted(per_role, key=lambda r: (r not in PLATFORM_ROLES, r)):
        grouped = defaultdict(list)
        for schema, table, privilege in per_role[role]:
            grouped[(schema, table)].append(privilege)
        tables_by_role.append((role, [[f"{s}.{t}", ", ".join(sorted(p))] for (s, t), p in sorted(grouped.items())]))
    return {
        "roles": g["roles"],
        "schemas": g["schemas"],
        "tables_by_role": tables_by_role,
        "columns": g["columns"],
        "functions": g["functions"],
        "defaults": g["defaults"],
    }


def _reidentification(rows: list[tuple], per_login: list[tuple], approvals: list[tuple], checks) -> dict:
    from pophealth.governance.chain import summary_lines

    return {
        "chain_lines": list(summary_lines(checks)),
        "heads": [[c.table, c.head_position, c.head_hash] for c in checks],
        "per_login": per_login,
        "requests": rows,
        "approvals": approvals,
    }


def _scan(result: ScanResult) -> dict:
    return {
        "clean": result.clean,
        "findings": result.findings,
        "columns": result.columns,
        "tables": result.tables,
        "rows": result.rows,
        "finding_rows": [[f.relation, f.column, f.kind, f.rows] for f in result.findings],
        "machine_identifier_rows": [[c, MACHINE_IDENTIFIERS[c]] for c in result.machine_identifiers],
    }


def _singling_out(results: list[disclosure.Uniqueness]) -> list[list]:
    return [
        [
            r.mart,
            ", ".join(r.quasi_identifiers) or "(none)",
            r.people,
            r.unique,
            f"{r.share_unique:.1%}",
            r.in_classes_of_2_to_4,
            r.in_classes_of_5_or_more,
        ]
        for r in results
    ]


def build_report(conn, register: agreements.Register) -> tuple[str, dict]:
    loads = _rows(
        conn,
        """
        SELECT load_id, feed, provider, period_end, file_name, status, file_sha256, file_bytes, rows_read, rows_loaded,
               rows_quarantined, rows_opted_out, key_version, to_char(started_at, 'YYYY-MM-DD HH24:MI'),
               to_char(published_at, 'YYYY-MM-DD HH24:MI'), message
        FROM audit.load ORDER BY load_id DESC""",
    )
    optouts_by_purpose = _rows(
        conn,
        """SELECT to_char(built_at, 'YYYY-MM-DD HH24:MI'), optout_load_id,
                                               optout_period_end, purpose, people_on_list, people_left_out
                                        FROM audit.optout_by_purpose ORDER BY built_at DESC, purpose LIMIT 200""",
    )
    lineage = (
        _rows(
            conn,
            """SELECT mart, column_name, source_feed, source_column, kind, path FROM audit.column_lineage
                              ORDER BY mart, column_name, source_feed, source_column""",
        )
        if _table_exists(conn, "audit.column_lineage")
        else []
    )
    reids = _rows(
        conn,
        """SELECT request_id, to_char(requested_at, 'YYYY-MM-DD HH24:MI:SS'), requested_by,
                                  on_behalf_of, purpose, coalesce(people_named, cardinality(person_ids)),
                                  people_in_vault, decision, coalesce(reason, '')
                           FROM audit.reidentification ORDER BY request_id DESC""",
    )
    approvals = _rows(
        conn,
        """SELECT request_id, to_char(decided_at, 'YYYY-MM-DD HH24:MI:SS'), decided_by, decision, note
                               FROM audit.reidentification_approval ORDER BY approval_id DESC""",
    )
    per_login = _rows(
        conn,
        """
        WITH asked AS (SELECT requested_by AS login, count(*) AS requests,
                              count(*) FILTER (WHERE decision = 'released') AS released,
                              count(*) FILTER (WHERE decision = 'awaiting_approval') AS held,
                              count(*) FILTER (WHERE decision = 'refused') AS refused,
                              coalesce(sum(coalesce(people_named, cardinality(person_ids))), 0) AS people
                       FROM audit.reidentification GROUP BY requested_by),
             decided AS (SELECT decided_by AS login, count(*) FILTER (WHERE decision = 'approved') AS approvals,
                                count(*) FILTER (WHERE decision = 'refused') AS refusals
                         FROM audit.reidentification_approval GROUP BY decided_by)
        SELECT login, coalesce(requests, 0), coalesce(released, 0), coalesce(held, 0), coalesce(refused, 0),
               coalesce(people, 0), coalesce(approvals, 0), coalesce(refusals, 0)
        FROM asked FULL JOIN decided USING (login) ORDER BY login""",
    )
    from pophealth.governance.chain import verify

    checks = verify(conn, config.paths().home / "audit_chain_heads.json")
    gate_rows = _rows(
        conn,
        """
        SELECT load_id, feed, suite, to_char(max(checked_at), 'YYYY-MM-DD HH24:MI'), count(*),
               count(*) FILTER (WHERE status = 'passed'),
               count(*) FILTER (WHERE status = 'failed' AND severity = 'error'),
               count(*) FILTER (WHERE status = 'failed' AND severity = 'warn'),
               count(*) FILTER (WHERE status = 'not_applicable'),
               coalesce(string_agg(check_id, ', ' ORDER BY check_id) FILTER (WHERE status = 'failed'), ''),
               coalesce(string_agg(check_id, ', ' ORDER BY check_id) FILTER (WHERE status = 'not_applicable'), '')
        FROM audit.gate_result GROUP BY load_id, feed, suite, run_id ORDER BY max(checked_at) DESC""",
    )
    statuses = _rows(
        conn,
        """SELECT feed, status, count(*), to_char(max(started_at), 'YYYY-MM-DD HH24:MI')
                              FROM audit.load GROUP BY feed, status ORDER BY feed, status""",
    )
    access = grants(conn)
    scan = scan_warehouse(conn)
    uniqueness = disclosure.quasi_identifier_uniqueness(conn)
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = _PAGES.get_template("ig_report.html.j2").render(
        written=written,
        sources=_sources(register, loads),
        loads=_loads(loads, optouts_by_purpose),
        lineage=_lineage(lineage),
        access=_access(access),
        reidentification=_reidentification(reids, per_login, approvals, checks),
        scan=_scan(scan),
        singling_out=_singling_out(uniqueness),
        gates={"statuses": statuses, "runs": gate_rows},
    )
    summary = {
        "loads": len(loads),
        "agreements": len(register.agreements),
        "lineage_links": len(lineage),
        "reidentifications": len(reids),
        "chains": checks,
        "scan_clean": scan.clean,
        "findings": len(scan.findings),
        "finding_list": [(f.relation, f.column, f.kind, f.rows) for f in scan.findings],
        "columns_scanned": scan.columns,
        "most_unique": max(uniqueness, key=lambda r: r.share_unique, default=None),
    }
    return page, summary


def write_ig_report(out: Path) -> dict:
    register = agreements.load_register()
    with db.connect() as conn:
        page, summary = build_report(conn, register)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return summary
