"""What analysts can still single out: for each person-level mart, how many of its people are unique on
their quasi-identifiers.

A person-level mart is a table or view in `marts` (and in `direct_care`, where that schema exists) with a
`person_id` column, found in PostgreSQL's catalogue: a new mart is measured without a change here. Its
quasi-identifiers are the columns it has of those someone could know of a person from elsewhere: birth
year, age, age band, sex, LSOA, locality, practice, date of death, and every date column of the row
(admission, discharge, service start).

How it is counted, in PostgreSQL (only counts leave it; never a value):
- a record is a distinct (person_id, quasi-identifiers) of the table; rows without a person_id are left out;
- a class is the records that share their quasi-identifiers, its size the number of people in it;
- a person counts in the smallest class of any of their records: the record that singles them out best.
  Unique means a class of 1 (k = 1); the k-anonymity figures are the people in classes of 1, 2-4 and 5+.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

#: Where analysts (and care teams) read person-level rows.
PERSON_LEVEL_SCHEMAS = ("marts", "direct_care")
#: Columns someone could know of a person from elsewhere, when a mart has them (dates are added by type).
QUASI_IDENTIFIERS = (
    "birth_year",
    "age",
    "age_band",
    "sex",
    "lsoa_code",
    "locality_code",
    "gp_practice_code",
    "date_of_death",
)
DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")


@dataclass(frozen=True)
class Uniqueness:
    """One mart's people and how many of them its quasi-identifiers single out."""

    mart: str  # schema.table
    quasi_identifiers: tuple[str, ...]
    people: int  # distinct person_id
    unique: int  # in a class of 1
    in_classes_of_2_to_4: int
    in_classes_of_5_or_more: int

    @property
    def share_unique(self) -> float:
        return self.unique / self.people if self.people else 0.0


def person_level_marts(conn, schemas: tuple[str, ...] = PERSON_LEVEL_SCHEMAS) -> list[tuple[str, str, tuple[str, ...]]]:
    """(schema, table, quasi-identifiers) of every table or view in `schemas` with a person_id column."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'p') AND NOT c.relispartition
             AND EXISTS (SELECT 1 FROM pg_attribute p WHERE p.attrelid = c.oid AND p.attname = 'person_id'
                                                        AND NOT p.attisdropped)
           ORDER BY n.nspname, c.relname, a.attnum""",
        (list(schemas),),
    ).fetchall()
    marts: dict[tuple[str, str], list[str]] = {}
    for schema, table, column, kind in rows:
        columns = marts.setdefault((schema, table), [])
        if column in QUASI_IDENTIFIERS or kind in DATE_TYPES:
            columns.append(column)
    return [(schema, table, tuple(columns)) for (schema, table), columns in marts.items()]


def measure(conn, schema: str, table: str, quasi_identifiers: tuple[str, ...]) -> Uniqueness:
    """The people of one table and the sizes of the classes its quasi-identifiers put them in."""
    columns = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in quasi_identifiers)
    partition = (
        sql.SQL("PARTITION BY ") + sql.SQL(", ").join(map(sql.Identifier, quasi_identifiers))
        if quasi_identifiers
        else sql.SQL("")
    )
    people, unique, small, crowd = conn.execute(
        sql.SQL(
            """WITH records AS (SELECT DISTINCT person_id{columns} FROM {table} WHERE person_id IS NOT NULL),
                classes AS (SELECT person_id, count(*) OVER ({partition}) AS size FROM records),
                people AS (SELECT person_id, min(size) AS size FROM classes GROUP BY person_id)
           SELECT count(*), count(*) FILTER (WHERE size = 1), count(*) FILTER (WHERE size BETWEEN 2 AND 4),
                  count(*) FILTER (WHERE size >= 5)
           FROM people"""
        ).format(columns=columns, table=sql.Identifier(schema, table), partition=partition)
    ).fetchone()
    return Uniqueness(f"{schema}.{table}", quasi_identifiers, people, unique, small, crowd)


def quasi_identifier_uniqueness(conn, schemas: tuple[str, ...] = PERSON_LEVEL_SCHEMAS) -> list[Uniqueness]:
    """Every person-level mart in `schemas`, measured."""
    return [measure(conn, schema, table, columns) for schema, table, columns in person_level_marts(conn, schemas)]


def uniqueness_text(results: list[Uniqueness]) -> str:
    """The figures as a few lines of text, for the command line: counts only."""
    lines = [f"{'mart':<34}{'people':>9}{'unique':>9}{'share':>8}{'k 2-4':>9}{'k 5+':>9}  quasi-identifiers"]
    for r in results:
        lines.append(
            f"{r.mart:<34}{r.people:>9,}{r.unique:>9,}{r.share_unique:>8.1%}{r.in_classes_of_2_to_4:>9,}"
            f"{r.in_classes_of_5_or_more:>9,}  {', '.join(r.quasi_identifiers) or '(none)'}"
        )
    return "\n".join(lines)
