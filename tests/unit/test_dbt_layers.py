"""The marts DAG's layer tasks (POPHEALTH_DBT_TASKS=layer): each shows its layer's results of the one dbt build,
and fails when one of its seeds, models or tests did not build or pass; a result in no layer is never left unshown.

Small hand-made builds, as dbt writes them (manifest.json and run_results.json), whose answer is read off by hand.
"""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from pophealth.marts.build import LAYERS, DbtFailed, layer_of, results_by_layer
from pophealth.operate.orchestration import report_layer


def model(folder: str, name: str) -> dict:
    return {"resource_type": "model", "name": name, "fqn": ["pophealth", folder, name], "depends_on": {"nodes": []}}


def dbt_test(name: str, *reads: str, attached: str | None = None) -> dict:
    return {"resource_type": "test", "name": name, "attached_node": attached, "depends_on": {"nodes": list(reads)}}


NODES = {
    "seed.pophealth.bcf_metric": {"resource_type": "seed", "name": "bcf_metric", "fqn": ["pophealth", "bcf_metric"]},
    "model.pophealth.stg_apc_episode": model("staging", "stg_apc_episode"),
    "model.pophealth.int_person": model("intermediate", "int_person"),
    "model.pophealth.person": model("marts", "person"),
    "model.pophealth.reporting_risk_pyramid": model("reporting", "reporting_risk_pyramid"),
    # a generic test on a model: the model's layer
    "test.pophealth.unique_person_person_id": dbt_test(
        "unique_person_person_id", "model.pophealth.person", attached="model.pophealth.person"
    ),
    # a test reading two models of two layers: shown with the later layer (it runs once both are built)
    "test.pophealth.relationships_person": dbt_test(
        "relationships_person", "model.pophealth.int_person", "model.pophealth.reporting_risk_pyramid"
    ),
    # a test of a source only: staging's, which reads the sources
    "test.pophealth.source_not_null_raw_apc": dbt_test("source_not_null_raw_apc", "source.pophealth.raw.apc_episode"),
}
EXPOSURES = {
    "exposure.pophealth.board_report": {
        "resource_type": "exposure",
        "name": "board_report",
        "depends_on": {"nodes": ["model.pophealth.reporting_risk_pyramid"]},
    }
}


def build(tmp_path, statuses: dict[str, str], nodes: dict | None = None):
    (tmp_path / "manifest.json").write_text(json.dumps({"nodes": nodes or NODES, "exposures": EXPOSURES}))
    results = [
        {"unique_id": uid, "status": status, "execution_time": 0.5, "failures": 3 if status == "fail" else 0}
        for uid, status in statuses.items()
    ]
    (tmp_path / "run_results.json").write_text(json.dumps({"results": results}))
    return {k: [r._asdict() for r in v] for k, v in (results_by_layer(tmp_path) or {}).items()}


ALL_PASSED = {
    **{uid: "success" for uid, n in NODES.items() if n["resource_type"] in ("seed", "model")},
    **{uid: "pass" for uid, n in NODES.items() if n["resource_type"] == "test"},
    "exposure.pophealth.board_report": "no-op",
}


def test_each_node_is_shown_in_its_layer():
    layers = {uid: layer_of(uid, {**NODES, **EXPOSURES}) for uid in {**NODES, **EXPOSURES}}
    assert layers == {
        "seed.pophealth.bcf_metric": "seeds",
        "model.pophealth.stg_apc_episode": "staging",
        "model.pophealth.int_person": "intermediate",
        "model.pophealth.person": "marts",
        "model.pophealth.reporting_risk_pyramid": "reporting",
        "test.pophealth.unique_person_person_id": "marts",
        "test.pophealth.relationships_person": "reporting",
        "test.pophealth.source_not_null_raw_apc": "staging",
        "exposure.pophealth.board_report": "reporting",
    }


def test_a_build_that_passed_passes_every_layer_and_lists_its_nodes(tmp_path, caplog):
    results = build(tmp_path, ALL_PASSED)
    assert set(results) == set(LAYERS)
    assert [r["name"] for r in results["marts"]] == ["person", "unique_person_person_id"]
    assert results["direct_care"] == []  # a layer this build has nothing in passes, saying so
    caplog.set_level("INFO", logger="pophealth")
    for layer in LAYERS:
        report_layer(layer, results)
    assert "marts: 2 built or passed" in caplog.text
    assert "direct_care: 0 built or passed" in caplog.text


def test_a_failed_test_fails_its_layer_alone_naming_it(tmp_path):
    results = build(tmp_path, {**ALL_PASSED, "test.pophealth.unique_person_person_id": "fail"})
    with pytest.raises(
        AirflowFailException, match=r"marts: 1 of 2 did not build or pass:\n  test unique_person_person_id"
    ):
        report_layer("marts", results)
    for layer in set(LAYERS) - {"marts"}:
        report_layer(layer, results)


@pytest.mark.parametrize("status", ["error", "skipped", "runtime error", "a status dbt adds later"])
def test_a_model_that_did_not_build_fails_its_layer(tmp_path, status):
    results = build(tmp_path, {**ALL_PASSED, "model.pophealth.int_person": status})
    with pytest.raises(AirflowFailException, match=rf"model int_person: {status}"):
        report_layer("intermediate", results)


def test_a_warning_passes_its_layer_saying_so(tmp_path, caplog):
    results = build(tmp_path, {**ALL_PASSED, "test.pophealth.source_not_null_raw_apc": "warn"})
    caplog.set_level("INFO", logger="pophealth")
    report_layer("staging", results)
    assert "staging: 2 built or passed, 1 with warnings" in caplog.text


def test_without_results_every_layer_fails_pointing_at_the_build(tmp_path):
    assert results_by_layer(tmp_path) is None
    with pytest.raises(AirflowFailException, match="the build reported no results"):
        report_layer("seeds", None)


def test_a_model_in_a_folder_that_is_no_layer_fails_the_build_rather_than_go_unshown(tmp_path):
    nodes = {**NODES, "model.pophealth.extra": model("experiments", "extra")}
    with pytest.raises(DbtFailed, match=r"models/experiments/, which has no task in the marts DAG"):
        build(tmp_path, {**ALL_PASSED, "model.pophealth.extra": "success"}, nodes)
    with pytest.raises(DbtFailed, match="which its manifest does not hold"):
        build(tmp_path, {**ALL_PASSED, "model.pophealth.gone": "success"})
