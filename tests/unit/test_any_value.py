"""Any text in any field of a personal feed's row is loaded or quarantined (RowProblem), never a crash.

Each feed's good row (both forms: identifiable, and pseudonymised at source) has one or more of its fields
replaced by arbitrary text; the transform, with a real RowContext, must return a row or raise RowProblem
(a row of a person with an opt-out is loaded like any other). A row pseudonymised at source whose
`linkage_key_version` is not the loading key's refuses its whole file (FileRejected): that field is the file's
key, not a value of the row, so it is varied only in a test of its own. Surrogates are left out: a file is read
as strict UTF-8, so none can reach a row. The same kinds of value go through a real load in the robustness corpus
(tests/robustness/spec.py).
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pophealth.contract.feeds import FEEDS_BY_NAME, KEY_VERSION_COLUMN
from pophealth.contract.identifiers import NhsNumberCheck, check_nhs_number
from pophealth.ingest.at_source import pseudonymise_row
from pophealth.ingest.feeds import INTEGER_MAX, SMALLINT_MAX, TRANSFORMS, RowContext, RowProblem
from pophealth.ingest.landing import FileRejected
from tests.unit.test_feeds import LOOKUP, PSEUDO, apc, event, register

PROVIDERS = {"gp_register": None, "apc": "RAJ", "cld": "E10000012"}
GOOD = {"gp_register": register(), "apc": apc(), "cld": event()}

#: Text as a file can hold it: any character but a surrogate (strict UTF-8) or NUL (the file is refused).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
#: Values that look nearly right: digits of other scripts, huge numbers, signs, spaces, unusual characters.
TRICKY = st.sampled_from(
    [
        "\uff19\uff19\uff19\uff10\uff10\uff10\uff10\uff10\uff11\uff18",  # a test NHS number in full-width digits
        "\u0669\u0669\u0669\u0660\u0660\u0660\u0660\u0660\u0661\u0668",  # the same in Arabic-Indic digits
        "99999999999",
        "9" * 40,
        "-1",
        "+1",
        "1e400",
        "NaN",
        "Infinity",
        "\u00b2",
        "1\u00bd",
        "0x10",
        " 1 ",
        "1_000",
        "\u2028",
        "\ufeff",
        "2025-02-30",
        "\uff12\uff10\uff12\uff15-01-01",
        "0000-01-01",
        "9999-12-31",
        "'; --",
        "\\N",
    ]
)
VALUES = st.one_of(ANY_TEXT, TRICKY)


def _ctx(feed: str) -> RowContext:
    return RowContext(PSEUDO, LOOKUP, frozenset(), PROVIDERS[feed], date(2025, 9, 30))


def _pseudonymised(feed: str) -> dict[str, str]:
    return pseudonymise_row(feed, GOOD[feed], PSEUDO, LOOKUP, period_end=date(2025, 9, 30))


def _loads_or_quarantines(feed: str, row: dict[str, str]) -> None:
    try:
        stored = TRANSFORMS[feed](row, _ctx(feed))
    except RowProblem:
        return
    assert len(FEEDS_BY_NAME[feed].copy_row(stored)) == len(FEEDS_BY_NAME[feed].table_columns)
    for column in ("epiorder", "birth_year", "birth_month"):
        if stored.get(column) is not None:
            assert 0 <= stored[column] <= SMALLINT_MAX
    for column in ("unit_cost", "planned_units_per_week"):
        if stored.get(column) is not None:
            assert stored[column].is_finite() and abs(stored[column]) < 10**20


@pytest.mark.parametrize("form", ["identifiable", "pseudonymised"])
@pytest.mark.parametrize("feed", sorted(PROVIDERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_text_in_any_field_loads_or_quarantines(feed, form, data):
    row = dict(GOOD[feed] if form == "identifiable" else _pseudonymised(feed))
    columns = sorted(c for c in row if c != KEY_VERSION_COLUMN)
    for column in data.draw(st.lists(st.sampled_from(columns), min_size=1, max_size=4, unique=True)):
        row[column] = data.draw(VALUES)
    _loads_or_quarantines(feed, row)


@pytest.mark.parametrize("feed", sorted(PROVIDERS))
@settings(max_examples=60, deadline=None)
@given(value=VALUES)
def test_every_field_alone_with_any_text(feed, value):
    for column in sorted(GOOD[feed]):
        _loads_or_quarantines(feed, {**GOOD[feed], column: value})


def test_full_width_digits_make_an_nhs_number_invalid():
    full_width = "".join(chr(0xFF10 + int(d)) for d in "9990000018")
    assert check_nhs_number(full_width) is NhsNumberCheck.INVALID
    stored = TRANSFORMS["apc"](apc(nhs_number=full_width), _ctx("apc"))
    assert stored["nhs_number_key"] is None and stored["nhs_number_check"] == "invalid"


@pytest.mark.parametrize(
    "value, reason",
    [
        ("99999999999", "larger than 32,767"),
        ("\u00b2", "not a whole number"),
        ("\uff11", "not a whole number"),
    ],
)
def test_an_epiorder_no_column_holds_is_quarantined(value, reason):
    with pytest.raises(RowProblem) as problem:
        TRANSFORMS["apc"](apc(epiorder=value), _ctx("apc"))
    assert problem.value.column == "epiorder" and reason in problem.value.reason
    assert value not in problem.value.reason


def test_a_population_over_an_integer_is_quarantined():
    ctx = RowContext(PSEUDO, LOOKUP, frozenset(), None, date(2024, 12, 31))
    row = {"lsoa_code": "E01990001", "sex": "1", "age": "40", "population": str(INTEGER_MAX + 1)}
    with pytest.raises(RowProblem, match="larger than"):
        TRANSFORMS["ref_population"](row, ctx)


@settings(max_examples=60, deadline=None)
@given(value=VALUES)
def test_any_other_key_version_refuses_the_whole_file_never_a_crash(value):
    row = {**_pseudonymised("apc"), KEY_VERSION_COLUMN: value}
    if value == PSEUDO.key_version:
        return
    with pytest.raises(FileRejected):
        TRANSFORMS["apc"](row, _ctx("apc"))
