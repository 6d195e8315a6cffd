"""docs/robustness.md is generated from the table the robustness tests run, so it cannot drift from them."""

from tests.robustness.report import COMMAND, DOC, render
from tests.robustness.spec import CASES, FAULTS, LOOKUP_AND_CRASH, OPTOUT_LISTS


def test_the_committed_report_is_what_the_generator_writes_now():
    assert DOC.is_file(), f"docs/robustness.md is missing: run {COMMAND}"
    assert DOC.read_text() == render(), f"docs/robustness.md is stale: run {COMMAND}"


def test_the_report_has_one_row_per_case_and_fault():
    text = render()
    for entry in (*CASES, *FAULTS, *LOOKUP_AND_CRASH, *OPTOUT_LISTS):
        assert text.count(f"| `{entry.id}` |") == 1


def test_case_ids_are_unique():
    ids = [c.id for c in CASES] + [f.id for f in FAULTS] + [d.id for d in (*LOOKUP_AND_CRASH, *OPTOUT_LISTS)]
    assert len(ids) == len(set(ids))


def test_each_lookup_and_crash_case_has_its_test():
    from tests.robustness import test_published_and_failed as tests

    for delivery in LOOKUP_AND_CRASH:
        assert callable(getattr(tests, f"test_{delivery.id}", None)), delivery.id


def test_each_opt_out_list_case_has_its_test():
    from tests.integration import test_pseudonyms_by_purpose as tests

    for delivery in OPTOUT_LISTS:
        assert callable(getattr(tests, f"test_{delivery.id}", None)), delivery.id
