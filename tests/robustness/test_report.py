"""docs/robustness.md is generated from the table the robustness tests run, so it cannot drift from them."""

from tests.robustness.report import COMMAND, DOC, render
from tests.robustness.spec import CASES, FAULTS


def test_the_committed_report_is_what_the_generator_writes_now():
    assert DOC.is_file(), f"docs/robustness.md is missing: run {COMMAND}"
    assert DOC.read_text() == render(), f"docs/robustness.md is stale: run {COMMAND}"


def test_the_report_has_one_row_per_case_and_fault():
    text = render()
    for entry in (*CASES, *FAULTS):
        assert text.count(f"| `{entry.id}` |") == 1


def test_case_ids_are_unique():
    ids = [c.id for c in CASES] + [f.id for f in FAULTS]
    assert len(ids) == len(set(ids))
