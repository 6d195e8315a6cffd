"""Every DAG imports cleanly, is wired as designed, and does no heavy work when it is parsed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "ingest_ref_postcode_lookup",
    "ingest_ref_population",
    "ingest_optouts",
    "ingest_gp_register",
    "ingest_apc",
    "ingest_cld",
    "build_marts",
}

#: The one `dbt build` of the marts DAG; every layer's task shows its nodes' results from it.
BUILD = "dbt.build"
#: The same with POPHEALTH_DBT_TASKS=node (Cosmos's watcher producer); every node's task takes its result from it.
BUILD_PER_NODE = "dbt.dbt_producer_watcher"
LAYERS = ["seeds", "staging", "intermediate", "marts", "direct_care", "reporting"]

PARSE = textwrap.dedent(
    """
    import json, os, time
    from airflow.dag_processing.dagbag import DagBag
    started = time.monotonic()
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    seconds = time.monotonic() - started
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "tags": sorted(dag.tags),
            "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries,
                                  "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                                  "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks},
            "schedule": type(dag.timetable).__name__,
            "cron": getattr(dag.timetable, "expression", None),
            "discover": {k: str(getattr(dag.task_dict["discover"], k)) for k in ("mode", "timeout", "soft_fail")}
                        if "discover" in dag.task_dict else None,
            "failure_callbacks": sorted({getattr(c, "__qualname__", str(c)) for t in dag.tasks
                                         for c in (t.on_failure_callback if isinstance(t.on_failure_callback, list)
                                                   else [t.on_failure_callback]) if c}),
            "outlets": sorted(a.uri for t in dag.tasks for a in getattr(t, "outlets", []) or []),
            "outlet_tasks": sorted(t.task_id for t in dag.tasks if getattr(t, "outlets", None)),
        }
    print("RESULT " + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                                   "dags": dags, "seconds": seconds}))
    """
)


def _parse_dags(home: Path, grain: str) -> dict:
    """Every DAG file parsed as a scheduler would, with POPHEALTH_DBT_TASKS=`grain`, in a home of its own; for the
    `node` grain (Cosmos renders the marts DAG from the dbt manifest) after `dbt parse`, which needs no database."""
    import json

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "POPHEALTH_HOME": str(home / "pophealth"),
        "POPHEALTH_DBT_TASKS": grain,
        # Parsing must not touch the warehouse: point it at a server that does not exist.
        "POPHEALTH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    env.pop("POPHEALTH_LINKAGE_KEY", None)
    if grain == "node":
        subprocess.run(
            [sys.executable, "-c", "from pophealth.marts.build import parse_project; parse_project()"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    proc = subprocess.run([sys.executable, "-c", PARSE], env=env, capture_output=True, text=True, timeout=300)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[7:]), "home": home}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """The DAG folder as deployed by default: the marts DAG shows the one dbt build as a task per layer."""
    return _parse_dags(tmp_path_factory.mktemp("home"), "layer")


@pytest.fixture(scope="module")
def parsed_per_node(tmp_path_factory):
    """The DAG folder with POPHEALTH_DBT_TASKS=node: every dbt seed and model a task of its own (Cosmos)."""
    return _parse_dags(tmp_path_factory.mktemp("home"), "node")


def test_every_dag_imports_without_errors(parsed):
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == EXPECTED


def test_every_task_has_an_owner_and_retries_and_every_dag_tags(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["tags"], dag_id
        for task_id, task in dag["tasks"].items():
            assert task["owner"] == "data-engineering", (dag_id, task_id)
            if (dag_id, task_id) == ("build_marts", BUILD):
                # A failed model or test is the data's: a retry would build everything again to fail the same way.
                assert task["retries"] == 0
            else:
                assert task["retries"] >= 1, (dag_id, task_id)


def test_ingest_dags_load_their_files_in_groups_then_announce_one_asset_event(parsed):
    # Each file is staged, gated and published in a `load` task of a group of files; the run's one asset event
    # (the `published` task) comes after every load, so a delivery of many files starts one build of the marts.
    for dag_id in EXPECTED - {"build_marts"}:
        tasks = parsed["dags"][dag_id]["tasks"]
        assert set(tasks) == {"discover", "load", "published"}
        assert tasks["load"]["upstream"] == ["discover"]
        assert tasks["published"]["upstream"] == ["load"]
        assert parsed["dags"][dag_id]["outlets"] == [
            f"pophealth://warehouse/{table}"
            for table in {
                "ingest_ref_postcode_lookup": ["raw/ref_lsoa"],
                "ingest_ref_population": ["raw/ref_population"],
                "ingest_optouts": ["restricted/optout"],
                "ingest_gp_register": ["raw/gp_register"],
                "ingest_apc": ["raw/apc_episode"],
                "ingest_cld": ["raw/cld_event"],
            }[dag_id]
        ]
        assert parsed["dags"][dag_id]["outlet_tasks"] == ["published"]


def test_marts_are_built_only_after_the_loads_are_checked_and_on_asset_updates(parsed):
    marts = parsed["dags"]["build_marts"]
    tasks = marts["tasks"]
    dbt_tasks = {t for t in tasks if t.startswith("dbt.")}
    # One dbt build, started once the loads are checked, then a task per layer of the project showing its results ...
    assert dbt_tasks == {BUILD} | {f"dbt.{layer}" for layer in LAYERS}
    assert tasks[BUILD]["upstream"] == ["check_loads"]
    # ... each run whether the build passed or failed (it shows its own layer's results), and skipped with it
    # when it did not run (check_loads failed or found nothing new).
    assert {t: (tasks[t]["upstream"], tasks[t]["trigger_rule"]) for t in dbt_tasks - {BUILD}} == {
        f"dbt.{layer}": ([BUILD], "one_done") for layer in LAYERS
    }
    # ... and a build the assets start first waits for what is still to load (one build per delivery).
    assert tasks["check_loads"]["upstream"] == ["wait_for_loads"]
    assert tasks["wait_for_loads"]["upstream"] == []
    assert marts["schedule"] == "AssetTriggeredTimetable"
    # Rendering it needs no dbt manifest: nothing of dbt ran to parse it.
    assert not (parsed["home"] / "pophealth" / "dbt_target").exists()


def test_with_dbt_tasks_node_every_seed_and_model_is_a_task_given_its_result_by_the_one_build(parsed_per_node):
    import json

    parsed, build = parsed_per_node, BUILD_PER_NODE
    assert parsed["errors"] == {}
    marts = parsed["dags"]["build_marts"]
    tasks = marts["tasks"]
    dbt_tasks = {t for t in tasks if t.startswith("dbt.")}
    # Every dbt model and seed is its own task, with its tests after it (Cosmos), in the project's order ...
    manifest = json.loads((parsed["home"] / "pophealth" / "dbt_target" / "manifest.json").read_text())
    nodes = [n for n in manifest["nodes"].values() if n["package_name"] == "pophealth"]
    models = {n["name"] for n in nodes if n["resource_type"] == "model"}
    seeds = {n["name"] for n in nodes if n["resource_type"] == "seed"}
    tested = {
        m
        for n in nodes
        if n["resource_type"] == "test"
        for m in (manifest["nodes"][p]["name"] for p in n["depends_on"]["nodes"] if p in manifest["nodes"])
    }
    assert {"person", "stg_apc_episode", "int_apc_spell"} <= models
    assert {f"dbt.{m}.run" for m in models} | {f"dbt.{s}.seed" for s in seeds} <= dbt_tasks
    assert {f"dbt.{m}.test" for m in tested} <= dbt_tasks
    assert tasks["dbt.person.test"]["upstream"] == ["dbt.person.run"]
    assert "dbt.int_person.test" in tasks["dbt.person.run"]["upstream"]
    # ... and all of them are given their results by one dbt build, which runs first: the only dbt task without
    # another dbt task before it, started once the loads are checked.
    roots = [t for t in dbt_tasks if not any(u.startswith("dbt.") for u in tasks[t]["upstream"])]
    assert roots == [build] and tasks[build]["upstream"] == ["check_loads"]
    descendants, todo = set(), [build]
    while todo:
        task = todo.pop()
        for t, spec in tasks.items():
            if task in spec["upstream"] and t not in descendants:
                descendants.add(t)
                todo.append(t)
    assert dbt_tasks - {build} <= descendants
    # Those right after the build run whether it passed or failed (each shows its node's own result), and are
    # skipped with it when it did not run (check_loads failed or found nothing new): none runs dbt then.
    assert {tasks[t]["trigger_rule"] for t in dbt_tasks if build in tasks[t]["upstream"]} == {"one_done", "none_failed"}
    assert {t for t in dbt_tasks if tasks[t]["trigger_rule"] == "none_failed"} == {build + "_done"}
    assert tasks[build]["retries"] == 0  # Cosmos skips a second attempt; each node's task retries it for that node
    # marts_published comes after every dbt task: the marts are announced only once all are built and tested.
    ancestors, todo = set(), list(tasks["marts_published"]["upstream"])
    while todo:
        task = todo.pop()
        if task not in ancestors:
            ancestors.add(task)
            todo += tasks[task]["upstream"]
    assert dbt_tasks <= ancestors
    assert marts["schedule"] == "AssetTriggeredTimetable"


@pytest.mark.parametrize("grain", ["parsed", "parsed_per_node"])
def test_parsing_does_no_heavy_work(grain, request):
    # No embedded server was started, no key was needed, and parsing every DAG file took little time.
    parsed = request.getfixturevalue(grain)
    assert not (parsed["home"] / "pophealth" / "pgdata").exists()
    assert parsed["seconds"] < 20


@pytest.mark.parametrize("grain", ["parsed", "parsed_per_node"])
def test_the_marts_are_gated_then_published_after_every_dbt_task(grain, request):
    # Write-audit-publish: dbt builds candidates, gate_marts validates them after every dbt task, and only
    # publish_marts (after the gate) swaps them in, before the marts are announced.
    tasks = request.getfixturevalue(grain)["dags"]["build_marts"]["tasks"]
    dbt_tasks = {t for t in tasks if t.startswith("dbt.")}
    ancestors, todo = set(), list(tasks["gate_marts"]["upstream"])
    while todo:
        task = todo.pop()
        if task not in ancestors:
            ancestors.add(task)
            todo += tasks[task]["upstream"]
    assert dbt_tasks <= ancestors
    assert tasks["publish_marts"]["upstream"] == ["check_loads", "gate_marts"]  # check_loads: the newest load
    assert tasks["marts_published"]["upstream"] == ["publish_marts"]


def test_each_feed_is_scheduled_as_its_files_arrive(parsed):
    # Hospital extracts monthly, social care quarterly, the register, the opt-out list and the reference data
    # when they arrive (an hourly look); the marts whenever a raw table they read changes.
    dags = parsed["dags"]
    assert {d: dags[d]["cron"] for d in EXPECTED - {"build_marts"}} == {
        "ingest_apc": "0 6 10 * *",
        "ingest_cld": "0 6 1 2,5,8,11 *",
        "ingest_gp_register": "0 * * * *",
        "ingest_optouts": "0 * * * *",
        "ingest_ref_postcode_lookup": "0 * * * *",
        "ingest_ref_population": "0 * * * *",
    }
    assert all(dags[d]["schedule"] == "CronTriggerTimetable" for d in EXPECTED - {"build_marts"})
    assert dags["build_marts"]["schedule"] == "AssetTriggeredTimetable"


def test_a_scheduled_ingest_waits_for_files_bounded_without_holding_a_worker(parsed):
    # discover is a sensor: rescheduled between looks, given up (skipped, not failed) when nothing came in time.
    waits = {d: parsed["dags"][d]["discover"] for d in EXPECTED - {"build_marts"}}
    assert all(w["mode"] == "reschedule" and w["soft_fail"] == "True" for w in waits.values())
    assert waits["ingest_apc"]["timeout"] == "432000.0"  # 5 days
    assert waits["ingest_cld"]["timeout"] == "1209600.0"  # 14 days
    assert waits["ingest_optouts"]["timeout"] == "3300.0"  # 55 minutes, inside the hour


def test_every_task_notifies_on_failure(parsed):
    for dag_id, dag in parsed["dags"].items():
        # (the one dbt build adds Cosmos's own, which keeps its per-node results for the per-node tasks' retries)
        assert set(dag["failure_callbacks"]) - {"_backup_xcom_to_variable"} == {"notify_failure"}, dag_id


def test_new_files_are_loaded_in_groups_of_at_most_a_dozen_in_their_order(tmp_path):
    from pophealth.operate.orchestration import BYTES_PER_TASK, group_label, in_groups

    files = []
    for n in range(26):
        path = tmp_path / f"apc_RAJ_{n:02d}.csv"
        path.write_text("x")
        files.append(str(path))
    assert [len(g) for g in in_groups(files)] == [12, 12, 2]
    assert [f for g in in_groups(files) for f in g] == files  # the load order kept
    assert in_groups([]) == []
    big = tmp_path / "apc_RDE_big.csv"
    with big.open("wb") as handle:
        handle.truncate(BYTES_PER_TASK)  # a file as big as a group's bytes is a group alone
    assert [len(g) for g in in_groups(files[:3] + [str(big)] + files[3:5])] == [3, 1, 2]
    assert group_label(files[:1]) == "apc_RAJ_00.csv"
    assert group_label(files[:3]) == "apc_RAJ_00.csv .. apc_RAJ_02.csv (3 files)"


def test_every_node_of_the_dbt_project_is_shown_in_a_layer_and_every_layer_has_nodes(parsed_per_node):
    import json

    from pophealth.marts.build import LAYERS as BUILD_LAYERS
    from pophealth.marts.build import layer_of

    manifest = json.loads((parsed_per_node["home"] / "pophealth" / "dbt_target" / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest["exposures"]}
    layers = {uid: layer_of(uid, nodes) for uid, node in nodes.items() if node["package_name"] == "pophealth"}
    assert list(BUILD_LAYERS) == LAYERS
    assert {uid: layer for uid, layer in layers.items() if layer not in LAYERS} == {}
    assert set(layers.values()) == set(LAYERS)
