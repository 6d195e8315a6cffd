"""The results a gate keeps itself when every rule passed in its one query (pophealth/quality/data_docs.py) are Great
Expectations' own: the same JSON, key for key, as GE serialises the result the gate measured, in the place GE's
validation results store keeps it, and read back by that store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pophealth.config import environment
from pophealth.quality import data_docs, validation
from pophealth.quality.rules import Rule, load_rules, marts_rules
from pophealth.quality.validation import Measured, build_expectation


def _measured_rules() -> list[Rule]:
    """Every rule of both files, as each gate runs it: each source's own thresholds, a rule on the number of rows with
    and without its bounds. All of them are of the kinds the one query measures."""
    rules: list[Rule] = []
    for rule in load_rules():
        rules.append(rule)
        rules.extend(rule.for_provider(p) for p in rule.by_provider)
        if rule.row_count is not None:
            rules.append(rule.with_kwargs(min_value=93, max_value=None))
            rules.append(rule.with_kwargs(min_value=0, max_value=1200))
    rules.extend(marts_rules().rules)
    measured = [r for r in rules if validation._MEASURED_KWARGS.get(r.expectation, set()) >= set(r.kwargs)]
    assert len(measured) == len(rules), "a rule of the registry is one the one query does not measure"
    return measured


def test_every_rule_s_configuration_is_great_expectations_own():
    for rule in _measured_rules():
        ge = build_expectation(rule).configuration.to_json_dict()
        # As text: a dict holding 1 equals one holding 1.0, and GE writes a bound of ExpectColumnValuesToBeBetween 1.0.
        assert json.dumps(data_docs.configuration(rule), sort_keys=True) == json.dumps(ge, sort_keys=True), rule.id


def _result_as_great_expectations_makes_it(rules, measured, run_time, schema, table, suite):
    """What the gate kept through GE's own objects before (validation._GX._record), as GE's store serialises it."""
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    name, asset = f"{suite}:{schema}.{table}", f"{schema}.{table}"
    run_id = RunIdentifier(run_name=asset, run_time=run_time)
    passed = sum(1 for m in measured if m.success)
    result = ExpectationSuiteValidationResult(
        success=passed == len(measured),
        results=[
            ExpectationValidationResult(
                success=m.success, expectation_config=build_expectation(r).configuration, result=m.result
            )
            for r, m in zip(rules, measured, strict=True)
        ],
        suite_name=name,
        statistics={
            "evaluated_expectations": len(measured),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(measured) - passed,
            "success_percent": 100.0 * passed / len(measured),
        },
        meta={
            "active_batch_definition": {
                "batch_identifiers": {},
                "data_asset_name": asset,
                "data_connector_name": "fluent",
                "datasource_name": "warehouse",
            },
            "batch_spec": {"data_asset_name": asset, "schema_name": schema, "table_name": table},
            "great_expectations_version": gx.__version__,
            "run_id": run_id,
            "validation_time": run_id.run_time,
            "measured_by": data_docs.MEASURED_BY,
        },
    )
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=name),
        run_id=run_id,
        batch_identifier=f"warehouse-{asset}",
    )
    return key, result


def _counts(rule: Rule, n: int) -> Measured:
    if rule.expectation in ("ExpectTableRowCountToBeBetween", "UnexpectedRowsExpectation"):
        return Measured(True, {"observed_value": 0 if rule.query else 1234})
    return Measured(
        True,
        {
            "element_count": 1234,
            "unexpected_count": n,
            "unexpected_percent": 100.0 * n / 1200,
            "unexpected_percent_total": 100.0 * n / 1234,
            "partial_unexpected_list": [],
        },
    )


@pytest.mark.parametrize("suite", ["apc_load", "marts_publish"])
def test_a_kept_result_is_great_expectations_serialisation_and_its_store_reads_it_back(tmp_path, suite):
    from great_expectations.data_context.store import ValidationResultsStore

    rules = [r for r in _measured_rules() if suite == "marts_publish" or getattr(r, "feed", "") == "apc"]
    measured = [_counts(r, i % 3) for i, r in enumerate(rules)]
    with environment(POPHEALTH_HOME=str(tmp_path / "state")):
        key = data_docs.keep("load_batch", "load_17", suite, rules, measured, about="apc_RAJ_20250930.csv (load 17)")
        written = next(data_docs.results_dir().rglob("*.json"))
        kept = json.loads(written.read_text())
        run_time = datetime.fromisoformat(kept["meta"]["validation_time"])
        ge_key, ge_result = _result_as_great_expectations_makes_it(
            rules, measured, run_time, "load_batch", "load_17", suite
        )
        store = ValidationResultsStore(
            store_backend={"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs.results_dir())}
        )
        # Key for key, as GE's own serialisation of the same result; byte for byte as its store writes it.
        assert kept == ge_result.to_json_dict()
        assert written.read_text() == store.serialize(ge_result)
        assert key == ge_key.to_tuple()
        assert written == data_docs.results_dir().joinpath(*ge_key.to_tuple()[:-1], ge_key.to_tuple()[-1] + ".json")
        # GE's store lists it and reads it back as its own.
        assert ge_key in store.list_keys()
        read = store.get(ge_key)
        assert read.success and read.to_json_dict() == kept
        assert read.meta["measured_by"] == data_docs.MEASURED_BY


def test_the_page_and_the_index_escape_what_they_show(tmp_path):
    rule = next(r for r in load_rules() if r.expectation == "UnexpectedRowsExpectation")
    rule = rule.with_kwargs(unexpected_rows_query="SELECT source_row FROM {batch} WHERE note <> '<script>'")
    with environment(POPHEALTH_HOME=str(tmp_path / "state")):
        key = data_docs.keep(
            "load_batch", "load_3", "apc_load", [rule], [Measured(True, {"observed_value": 0})], about="<b>a&b.csv"
        )
        page = data_docs.page_of(key).read_text()
        index = data_docs.data_docs_index().read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>a&b.csv" not in page and "&lt;b&gt;a&amp;b.csv" in page
    assert "apc_load%3Aload_batch/load_3/load_batch.load_3/" in index and "the gate&#x27;s one SQL query" in index


def test_the_index_lists_every_validation_newest_first_once_per_block(tmp_path):
    rule = next(r for r in load_rules() if r.expectation == "ExpectColumnValuesToBeUnique")
    # The day the results were kept, read before and after: a run across midnight (UTC) writes either.
    days = {datetime.now(UTC).strftime("%Y-%m-%d")}
    with environment(POPHEALTH_HOME=str(tmp_path / "state")):
        with data_docs.data_docs_once():
            for n in (1, 2, 3):
                data_docs.keep("load_batch", f"load_{n}", "apc_load", [rule], [_counts(rule, 0)])
            assert not data_docs.data_docs_index().exists()  # built when the block ends, not after each
        index = data_docs.data_docs_index().read_text()
    found = [index.index(f"load_batch.load_{n}.html") for n in (3, 2, 1)]
    assert found == sorted(found), "newest first"
    assert "3 validations" in index
    days.add(datetime.now(UTC).strftime("%Y-%m-%d"))
    assert any(day in index for day in days)
