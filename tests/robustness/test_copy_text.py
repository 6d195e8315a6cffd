"""The batch table's COPY text (load.copy_text): any value a transform returns reaches PostgreSQL exactly.

The loader sends its rows as preformatted COPY text in large pieces rather than one psycopg write_row per
row; these tests hold its escaping to PostgreSQL itself: every string (but NUL, which a file cannot hold:
landing refuses it, and surrogates, which strict UTF-8 never yields), None, whole numbers, dates and decimals
go through a real COPY and come back equal.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pophealth.ingest.load import copy_text

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
#: The characters COPY text gives a meaning to, often: the strategy above alone would seldom combine them.
SPECIAL = st.text(st.sampled_from(["\\", "\t", "\n", "\r", "\b", "\f", "\v", "N", ".", "a", "é", " "]))
ROW = st.tuples(
    st.one_of(st.none(), TEXT, SPECIAL),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.dates(date(1, 1, 1), date(9999, 12, 31))),
    st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=4, max_value=10**12)),
    st.one_of(st.none(), TEXT),
)


def _round_trip(rows: list[tuple]) -> list[tuple]:
    from pophealth.warehouse import db

    with db.connect() as conn, conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMP TABLE copied (n int, t text, i bigint, d date, m numeric, u text)")
        with conn.cursor() as cur, cur.copy("COPY copied (n, t, i, d, m, u) FROM STDIN") as copy:
            copy.write("".join(f"{n}\t{copy_text(row)}\n" for n, row in enumerate(rows)))
        return [tuple(r) for r in conn.execute("SELECT t, i, d, m, u FROM copied ORDER BY n")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=8))
def test_any_row_round_trips_through_copy(warehouse, rows):
    assert _round_trip(rows) == rows


def test_the_escapes_and_null_are_postgresql_s(warehouse):
    # The cases a wrong escape gets wrong, named: a backslash before N is text, not NULL; an empty string is not NULL.
    rows = [("\\N", None, None, None, ""), ("a\tb\nc\rd\\e", 0, date(2024, 2, 29), Decimal("-0.50"), None)]
    assert _round_trip(rows) == rows
    assert copy_text(("\\N", None, "")) == "\\\\N\t\\N\t"
