"""Lineage after a whole run through Airflow: OpenLineage events for every task and every dbt model, and the
column lineage of the published marts, down to the extract columns, in the audit schema."""

from __future__ import annotations

import json

import pytest

from .identifiable import identifiable_values

pytestmark = pytest.mark.integration


def events(world) -> list[dict]:
    path = world.home / "state" / "openlineage" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_airflow_task_of_every_dag_run_has_its_openlineage_events(world):
    # every task that ran (a skipped or upstream-failed task never starts, so it has nothing to report)
    task_instances = world.query(
        "SELECT DISTINCT dag_id, task_id FROM task_instance WHERE state IN ('success', 'failed')", database="airflow"
    )
    assert len(task_instances) > 20
    states: dict[str, set[str]] = {}
    for event in events(world):
        states.setdefault(event["job"]["name"], set()).add(event["eventType"])
    missing = [
        f"{dag}.{task}"
        for dag, task in task_instances
        if not ({"START"} <= states.get(f"{dag}.{task}", set()) and states[f"{dag}.{task}"] & {"COMPLETE", "FAIL"})
    ]
    assert missing == []
    assert all(event["job"]["namespace"] == "pophealth" for event in events(world))


def test_every_dbt_model_has_an_event_with_its_schema_and_rows(world):
    manifest = json.loads((world.home / "state" / "dbt_target" / "built_manifest.json").read_text())  # the build's
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    by_job = {e["job"]["name"]: e for e in events(world) if e["job"]["name"].startswith("dbt.model.")}
    assert {f"dbt.model.{m}" for m in models} <= set(by_job)
    bcf = by_job["dbt.model.bcf_metrics"]["outputs"][0]
    assert bcf["name"] == "pophealth.marts.bcf_metrics"
    assert "numerator" in [f["name"] for f in bcf["facets"]["schema"]["fields"]]
    assert bcf["outputFacets"]["outputStatistics"]["rowCount"] > 0
    assert by_job["dbt.model.bcf_metrics"]["eventType"] == "COMPLETE"


def test_a_published_mart_event_carries_its_dbt_tests_and_the_marts_gate_rules_on_its_table(world):
    rules = {
        r[0]
        for r in world.query(
            "SELECT DISTINCT check_id FROM audit.gate_result WHERE feed = 'marts' "
            "AND starts_with(check_id, 'marts.person.')"
        )
    }
    assert rules
    person = [e for e in events(world) if e["job"]["name"] == "dbt.model.person"][-1]["outputs"][0]
    assertions = person["facets"]["dataQualityAssertions"]["assertions"]
    assert {f"marts gate: {rule}" for rule in rules} <= {a["name"] for a in assertions}
    assert any(not a["name"].startswith("marts gate: ") for a in assertions)  # its dbt tests
    assert all(a["success"] for a in assertions if a["name"].startswith("marts gate: ") and a["severity"] == "error")


def test_every_published_load_has_an_event_with_rows_and_its_gate(world):
    published = world.query("SELECT file_name, rows_read, rows_loaded FROM audit.load WHERE status = 'published'")
    loads = {e["inputs"][0]["name"]: e for e in events(world) if e["job"]["name"].startswith("load.")}
    for file_name, rows_read, rows_loaded in published:
        event = loads[file_name]
        assert event["inputs"][0]["inputFacets"]["dataQualityMetrics"]["rowCount"] == rows_read
        assert event["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == rows_loaded
    apc = next(e for name, e in loads.items() if name.startswith("apc_"))
    assertions = apc["outputs"][0]["facets"]["dataQualityAssertions"]["assertions"]
    assert assertions and all(a["success"] for a in assertions if a["severity"] == "error")


def test_the_bcf_numerator_reaches_the_admission_method_and_date_of_the_hospital_extract(world):
    sources = world.query(
        """SELECT source_feed, source_column, kind FROM audit.column_lineage
           WHERE mart = 'marts.bcf_metrics' AND column_name = 'numerator'"""
    )
    reached = {(feed, column) for feed, column, _ in sources}
    assert {("apc", "admimeth"), ("apc", "admidate")} <= reached
    # and Marquez (or any OpenLineage consumer) gets the same from the model's event
    event = next(e for e in events(world) if e["job"]["name"] == "dbt.model.bcf_metrics")
    fields = event["outputs"][0]["facets"]["columnLineage"]["fields"]["numerator"]["inputFields"]
    assert {("apc", "admimeth"), ("apc", "admidate")} <= {(f["name"], f["field"]) for f in fields}


def test_every_published_column_has_its_lineage(world):
    published = world.query(
        """SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns
           WHERE table_schema IN ('marts', 'reporting')"""
    )
    traced = set(world.query("SELECT DISTINCT mart, column_name FROM audit.column_lineage"))
    assert set(published) - traced == set()


def test_no_event_holds_an_identifiable_value(world):
    identifiable = identifiable_values(world.landing)
    data = (world.home / "state" / "openlineage" / "events.jsonl").read_bytes()
    assert identifiable.found_in(data) == []
