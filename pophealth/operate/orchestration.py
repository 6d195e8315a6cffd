"""What the DAG tasks call: one function per task, mapping the package's outcomes onto Airflow's.

A refusal that a retry cannot fix (a bad file, a failed gate, no key) raises AirflowFailException so the
task fails at once, visibly, with one screen of explanation; anything else may be retried. Nothing here
runs at DAG parse time except building the asset objects.
"""

from __future__ import annotations

import logging
import operator
import os
from datetime import UTC, date, timedelta
from functools import reduce
from pathlib import Path

from airflow.sdk import Asset, CronTriggerTimetable

from pophealth import config
from pophealth.contract.feeds import FEEDS_BY_NAME, LOAD_ORDER, Arrival
from pophealth.operate.notify import notify_failure

log = logging.getLogger("pophealth")

DEFAULT_ARGS = {
    "owner": "data-engineering",
    "retries": 1,
    "retry_delay": timedelta(seconds=10),
    "on_failure_callback": notify_failure,  # a webhook and/or an email, when configured (pophealth/operate/notify.py)
}


def timetable(arrival: Arrival) -> CronTriggerTimetable:
    """The Airflow timetable of a feed's arrival (its declaration, contract/feeds.py). A run you start yourself
    (`pophealth run`, `pophealth dag`, Trigger in the UI) never waits: it takes what is there."""
    return CronTriggerTimetable(arrival.cron, timezone="Europe/London")


#: While a scheduled run waits, how often it looks (the task is rescheduled in between, holding no worker).
#: POPHEALTH_POKE_INTERVAL_SECONDS shortens it where files are copied in by a script (the cluster's tests).
POKE_INTERVAL = timedelta(seconds=int(os.environ.get("POPHEALTH_POKE_INTERVAL_SECONDS") or 120))

#: A re-run of a past period (`pophealth rerun`) limits the ingest DAG to that period's files with these.
ENV_ONLY_PERIOD = "POPHEALTH_ONLY_PERIOD"
ENV_ONLY_PROVIDER = "POPHEALTH_ONLY_PROVIDER"


def raw_asset(feed: str) -> Asset:
    table = FEEDS_BY_NAME[feed].table
    return Asset(name=f"warehouse.{table}", uri=f"pophealth://warehouse/{table.replace('.', '/')}", group="raw")


RAW_ASSETS = [raw_asset(feed) for feed in LOAD_ORDER]
ANY_RAW_ASSET = reduce(operator.or_, RAW_ASSETS)
MART_ASSETS = [Asset(name="warehouse.marts.person", uri="pophealth://warehouse/marts/person", group="marts")]


def _fail(message: str):
    from airflow.sdk.exceptions import AirflowFailException

    log.error(message)
    return AirflowFailException(message)


def _landing():
    landing = config.landing_dir()
    if landing is None:
        raise _fail(f"{config.ENV_LANDING_DIR} is not set: there is no landing folder to read")
    return landing


def discover_files(feed: str) -> list[str]:
    """The feed's complete new or changed files (load.pending_extracts decides), within a re-run's period."""
    from pophealth.ingest.landing import identify
    from pophealth.ingest.load import pending_extracts, stale_optout_lists

    landing = _landing()
    if feed == "optouts":
        stale_optout_lists(landing)  # recorded once each, with why, and logged: never silently skipped
    files = pending_extracts(landing, feed)
    log_not_extracts(landing)
    period, provider = os.environ.get(ENV_ONLY_PERIOD), os.environ.get(ENV_ONLY_PROVIDER)
    if period or provider:
        wanted = date.fromisoformat(period) if period else None
        files = [
            f
            for f in files
            if (found := identify(Path(f))) is not None
            and (wanted is None or found.period_end == wanted)
            and (provider is None or found.provider == provider)
        ]
        log.info("re-run limited to period %s, provider %s", period or "any", provider or "any")
    log.info("%d new or changed %s file(s) in the landing folder", len(files), feed)
    return files


def log_not_extracts(landing: Path) -> None:
    """Every file of the landing folder that is not an extract of the contract, with why: never skipped in silence."""
    from pophealth.ingest.landing import FileRejected, scan

    try:
        not_extracts = scan(landing).not_extracts()
    except FileRejected:
        return
    if not_extracts:
        log.warning(
            "%d file(s) in the landing folder are not extracts of the contract and are NOT LOADED:\n%s",
            len(not_extracts),
            "\n".join(f"  {name}: {why}" for name, why in not_extracts),
        )


def _run_type(run_type) -> str:
    return str(getattr(run_type, "value", run_type))


def wait_for_files(feed: str, run_type) -> object:
    """The ingest DAG's first task, a sensor: done when there are complete new files; a scheduled run keeps
    looking (bounded by its arrival's wait, then skipped: nothing came), any other run takes what is there.

    A scheduled run also keeps the contract's load order when files of several feeds arrive together: it waits
    while a feed before its own still has files to load (the opt-out list in force before the personal feeds,
    the register before the activity), so a month's delivery loads in order whichever run looks first."""
    from airflow.sdk import PokeReturnValue

    files = discover_files(feed)
    if _run_type(run_type) != "scheduled":
        return PokeReturnValue(is_done=True, xcom_value=in_groups(files))
    if files:
        from pophealth.ingest.load import awaiting_extracts

        before = awaiting_extracts(_landing(), LOAD_ORDER[: LOAD_ORDER.index(feed)])
        if before:
            log.info(
                "%d file(s) of the feeds loaded before %s are still to be loaded: waiting for them "
                "(the contract's load order)",
                len(before),
                feed,
            )
            return PokeReturnValue(is_done=False)
    return PokeReturnValue(is_done=bool(files), xcom_value=in_groups(files))


#: How long a build started by the assets waits for files still arriving or loading before it builds anyway
#: (with what is published, naming what it did not wait for).
LOADS_WAIT = timedelta(hours=2)


def wait_for_loads(run_type, started) -> bool:
    """build_marts's first task, a sensor: a build the assets started waits until the landing folder has
    nothing left to load, so that a delivery of several feeds (or many files of one) is built once, with all of
    it, not once per feed. Bounded by LOADS_WAIT; a build started by hand builds at once."""
    from datetime import datetime

    from pophealth.ingest.load import awaiting_extracts

    landing = config.landing_dir()
    if _run_type(run_type) != "asset_triggered" or landing is None:
        return True
    awaiting = awaiting_extracts(landing, LOAD_ORDER)
    if not awaiting:
        return True
    waited = datetime.now(UTC) - started if started is not None else timedelta(0)
    if waited >= LOADS_WAIT:
        log.warning(
            "building the marts after waiting %s, without these %d file(s) still to be loaded:\n%s",
            LOADS_WAIT,
            len(awaiting),
            "\n".join(f"  {Path(a).name}" for a in awaiting),
        )
        return True
    log.info("%d file(s) in the landing folder are still to be loaded: the build waits for them", len(awaiting))
    return False


#: The files of one feed are loaded in groups, one mapped task per group, each file in turn (stage, gate,
#: publish). Each task of Airflow's costs a fraction of a second of its own (~0.2 s, and more on a busy machine),
#: as much as loading a small file: a file per task, and three tasks per file, made that most of an ingest.
#: The groups keep files apart enough that a big delivery still spreads over the workers, and a retry
#: repeats little: at most FILES_PER_TASK files, or BYTES_PER_TASK of them (a bigger file is a group alone).
FILES_PER_TASK = 12
BYTES_PER_TASK = 256 * 2**20


def in_groups(files: list[str]) -> list[list[str]]:
    """The files (in load order) in groups for the load tasks: consecutive, at most FILES_PER_TASK files or
    BYTES_PER_TASK bytes each."""
    groups: list[list[str]] = []
    size = 0
    for file in files:
        try:
            length = Path(file).stat().st_size
        except OSError:
            length = 0  # gone since it was found: its load says so
        if not groups or len(groups[-1]) >= FILES_PER_TASK or size + length > BYTES_PER_TASK:
            groups.append([])
            size = 0
        groups[-1].append(file)
        size += length
    return groups


def group_label(files: list[str]) -> str:
    """What the UI shows for a load task: its files."""
    names = [Path(f).name for f in files]
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} files)"


def load_files(files: list[str], run_id: str, retried: bool = False) -> list[dict]:
    """A load task: each file in turn is staged (validated, pseudonymised), gated and published.

    A file refused (a rule of the contract, its quality gate, no key) does not stop the others: they are loaded,
    and then the task fails, naming each refused file and why, so the run announces nothing new (`published`
    does not run) and the marts are not rebuilt. Anything else (the database gone, the worker lost) fails the
    task at once, to be retried; a retry (`retried`) takes up each file where the earlier try left it."""
    from airflow.sdk.exceptions import AirflowFailException

    from pophealth.quality.data_docs import data_docs_once

    loaded, refused = [], []
    with data_docs_once():
        for file in files:
            try:
                loaded.append(_load_file(file, run_id, retried))
            except AirflowFailException as exc:
                refused.append(str(exc))
    if len(refused) == 1:  # its own message first: the one line a notification carries
        raise _fail(
            refused[0] + (f"\n\n(The other {len(loaded)} file(s) of this task were published.)" if loaded else "")
        )
    if refused:
        raise _fail(
            f"{len(refused)} of the {len(files)} files of this task were not published"
            + (f" (the other {len(loaded)} were)" if loaded else "")
            + ":\n\n"
            + "\n\n".join(refused)
        )
    return loaded


def _load_file(file: str, run_id: str, retried: bool) -> dict:
    from pophealth.ingest.load import earlier_attempt

    earlier = earlier_attempt(file, run_id) if retried else None
    if earlier is not None and earlier.status in ("published", "duplicate"):
        log.info("%s: %s by an earlier try of this task (load %d)", Path(file).name, earlier.status, earlier.load_id)
        return {"file": Path(file).name, "load_id": earlier.load_id, "status": earlier.status}
    if earlier is not None and earlier.status in ("rejected", "failed", "gate_failed", "stale"):
        raise _fail(
            f"{earlier.status.upper().replace('_', ' ')} {Path(file).name} (load {earlier.load_id}, by an "
            f"earlier try of this task): {earlier.message}"
        )
    load_id = earlier.load_id if earlier is not None and earlier.status == "validated" else stage_file(file, run_id)
    gate_load(load_id, run_id)
    return {"file": Path(file).name, "load_id": load_id, **publish_staged(load_id)}


def stage_file(path: str, run_id: str) -> int:
    from pophealth.identity.keys import KeyError_
    from pophealth.ingest.load import LoadFailed, LoadRefused, stage_extract

    try:
        outcome = stage_extract(path, run_id)
    except (LoadRefused, KeyError_) as exc:
        raise _fail(f"{'LOAD FAILED' if isinstance(exc, LoadFailed) else 'LOAD REFUSED'} {exc}") from None
    log.info(
        "%s: %s; read %d, loaded %d, quarantined %d, removed by opt-out %d (load %d)",
        outcome.file_name,
        outcome.status,
        outcome.rows_read,
        outcome.rows_loaded,
        outcome.rows_quarantined,
        outcome.rows_opted_out,
        outcome.load_id,
    )
    return outcome.load_id


def gate_load(load_id: int, run_id: str) -> int:
    from pophealth.ingest.load import batch_table, refuse_load
    from pophealth.quality import gates
    from pophealth.warehouse.audit import load_record

    record = load_record(load_id)
    if record["status"] == "duplicate" or not gates.has_suite(record["feed"]):
        return load_id
    outcome = gates.run_load_gate(load_id, record["feed"], batch_table(load_id), run_id=run_id)
    if not outcome.passed:
        message = f"QUALITY GATE FAILED for {record['file_name']} (load {load_id})\n{outcome.summary()}"
        refuse_load(load_id, message)
        raise _fail(message)
    log.info("quality gate passed for %s (load %d)\n%s", record["file_name"], load_id, outcome.summary())
    return load_id


def publish_staged(load_id: int) -> dict:
    from pophealth.ingest.load import publish_load

    changes = publish_load(load_id)
    log.info("load %d published: %s", load_id, changes)
    from pophealth.governance.lineage import emit_load_event

    emit_load_event(load_id)  # the file in, the raw table out, with rows and the gate's rules (OpenLineage)
    return changes


def check_loads(run_type) -> int:
    """build_marts after its wait: refuse while a load is refused and not replaced; in a build the assets
    started, skip when no load was published since the marts were last published (a second asset event of a
    delivery the last build already took in: the marts are published once). Returns the newest published load,
    which the publication records (audit.marts_publication)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from pophealth.warehouse.audit import last_marts_publication, newest_published_load

    assert_loads_gated()
    newest = newest_published_load()
    last = last_marts_publication()
    if _run_type(run_type) == "asset_triggered" and last is not None and newest == last["newest_load_id"]:
        message = (
            f"nothing new to build: the marts published at {last['published_at']:%Y-%m-%d %H:%M} (run "
            f"{last['run_id']}) already hold every published load (the newest, {newest})"
        )
        log.info(message)
        raise AirflowSkipException(message)
    clear_candidates()  # what a refused build left; dbt builds the candidates afresh
    assign_published_ids()  # the purpose-keyed ids dbt joins in; fails without the keys
    return newest or 0


def assert_loads_gated() -> None:
    from pophealth.warehouse.audit import blocking_loads

    blocking = blocking_loads()
    if blocking:
        lines = "\n".join(f"  {b['file_name']}: {b['status']} (load {b['load_id']})" for b in blocking)
        raise _fail(
            "the marts are not rebuilt while these loads are refused and not yet replaced by a good file; "
            f"the marts keep their last good state:\n{lines}"
        )


def assign_published_ids() -> None:
    """Before dbt: every transit pseudonym in raw gets its secondary-use and direct-care ids (identity/purposes.py);
    without both purpose keys nothing is built (fail closed)."""
    from pophealth.identity.purposes import PublishedIdsRefused, assign_purpose_pseudonyms

    try:
        assigned = assign_purpose_pseudonyms()
    except PublishedIdsRefused as exc:
        raise _fail(f"PUBLISHED IDS REFUSED: {exc}") from None
    log.info(
        "%d new transit pseudonyms given their published ids (keys %s)",
        assigned.new_transit_pseudonyms,
        ", ".join(f"{p} {v}" for p, v in assigned.key_versions.items()),
    )


def clear_candidates() -> None:
    """Before dbt builds the candidate marts: drop what an earlier, refused build left (quality/marts_gate.py)."""
    from pophealth.quality.marts_gate import drop_candidates

    drop_candidates()


def gate_marts(run_id: str | None = None) -> None:
    """Validate the candidate marts and reporting schemas; a failed error rule stops the DAG before publish."""
    from pophealth.quality.data_docs import data_docs_once
    from pophealth.quality.marts_gate import PublishRefused, run_marts_gate

    try:
        # The Data Docs site's index built once for the gate's ~13 validations, not after each (it reads every
        # validation kept: 0.7 s each under load, issue 19), as a load task does for its files.
        with data_docs_once():
            outcome = run_marts_gate(candidates=True, run_id=run_id)
    except PublishRefused as exc:
        raise _fail(f"MARTS GATE REFUSED: {exc}") from None
    if not outcome.passed:
        raise _fail(
            "MARTS GATE FAILED: the candidate marts are not published; analysts keep the last good marts "
            f"(the candidates stay in marts__candidate and reporting__candidate to look at)\n{outcome.summary()}"
        )
    log.info("marts gate passed\n%s", outcome.summary())


def publish_marts(newest_load_id: int | None = None, run_id: str | None = None) -> None:
    """Swap the gated candidates in as marts and reporting, in one transaction, recording the publication with
    the newest load it was built on."""
    from pophealth.identity.purposes import record_optouts_by_purpose
    from pophealth.quality.marts_gate import PublishRefused, publish_candidates

    try:
        publish_candidates(newest_load_id=newest_load_id, run_id=run_id)
    except PublishRefused as exc:
        raise _fail(f"PUBLISH REFUSED: {exc}") from None
    log.info("people left out under the opt-out list in force, per purpose: %s", record_optouts_by_purpose())
    record_lineage()


def record_lineage() -> None:
    """After the marts are published: their column lineage in audit (pophealth/governance/lineage.py)."""
    from pophealth.governance.lineage import after_marts_published
    from pophealth.marts.build import DbtFailed

    try:
        after_marts_published()
    except DbtFailed as exc:
        raise _fail(f"the marts are published, but their column lineage was not recorded: {exc}") from None


DBT_PROFILE = "pophealth"
DBT_TARGET = "warehouse"


#: The XCom in which the build hands each node's result, by layer, to the layers' tasks.
LAYER_RESULTS = "results_by_layer"


def dbt_task_group(group_id: str = "dbt", build_candidates: bool = False):
    """The dbt project as Airflow tasks: one `dbt build`, shown as a task per layer (POPHEALTH_DBT_TASKS=layer, the
    default) or per node (`node`, Cosmos). With `build_candidates`, marts and reporting are built as
    marts__candidate and reporting__candidate (the dbt var read by the project's generate_schema_name), for the
    marts gate to validate before they are published."""
    if config.dbt_task_grain() == "node":
        return _cosmos_task_group(group_id, build_candidates)
    return _layer_task_group(group_id, build_candidates)


def _layer_task_group(group_id: str, build_candidates: bool):
    """`<group>.build` runs the one `dbt build` (dbt in a process of its own, its lines in the task log) and keeps
    each node's result in audit.dbt_result; then `<group>.<layer>` for each layer (seeds, staging, intermediate,
    marts, direct_care, reporting) lists that layer's seeds, models and tests with their status and time, and
    fails when one of them did not build or pass, so the UI shows which layer broke.

    The grain is coarser than Cosmos's task per node (`node`): 7 tasks instead of 118. Each task costs Airflow
    about 0.1-0.2 s on 2 quiet cores, so the per-node tasks cost the demo about 19 s of its 47 s `build_marts`
    (issue 19). A node cannot be retried alone: clearing `build` runs the whole build again.

    The layers' tasks run once the build is done, whatever its outcome (`one_done`), so a failed build still shows
    which layers failed; they are skipped with it when it did not run (check_loads failed or found nothing new)."""
    from airflow.sdk import TaskGroup, task

    from pophealth.marts.build import LAYERS

    with TaskGroup(group_id) as group:
        # A failed model or test is the data's, not the moment's: a retry would build everything again to fail
        # the same way. Clearing the task in the UI builds again.
        @task(task_id="build", retries=0)
        def build(**context) -> None:
            build_marts_candidates(context["run_id"], context["ti"], candidates=build_candidates)

        @task(trigger_rule="one_done")
        def show_layer(layer: str, **context) -> None:
            results = context["ti"].xcom_pull(task_ids=f"{group_id}.build", key=LAYER_RESULTS)
            report_layer(layer, results)

        built = build()
        for layer in LAYERS:
            built >> show_layer.override(task_id=layer)(layer)
    return group


def build_marts_candidates(run_id: str, ti, candidates: bool = True) -> None:
    """The marts DAG's `dbt build` (layer grain): each node's result kept (audit.dbt_result, the task log, the
    built manifest for the column lineage) and handed to the layers' tasks; fails when dbt did."""
    from pophealth.marts.build import build_target, dbt_command, keep_build_results, results_by_layer

    target = build_target()
    (target / "run_results.json").unlink(missing_ok=True)  # so an earlier build's results are never shown as this one's
    args = ["build", *(["--vars", "{build_candidates: true}"] if candidates else [])]
    proc = dbt_command(args, target=target, echo=True)
    keep_build_results(target, run_id)
    by_layer = results_by_layer(target)
    if by_layer is not None:
        ti.xcom_push(key=LAYER_RESULTS, value={k: [r._asdict() for r in v] for k, v in by_layer.items()})
    if proc.returncode != 0:
        failed = [
            f"  {layer}: {r.resource_type} {r.name}: {r.status}"
            for layer, results in (by_layer or {}).items()
            for r in results
            if r.status in ("error", "fail")
        ]
        said = "\n".join(failed) if failed else "dbt stopped before running a node; its last lines are above"
        raise _fail(f"dbt build failed (exit {proc.returncode}); the marts are not published:\n{said}")


def report_layer(layer: str, results: dict | None) -> None:
    """One layer's task: its nodes' results from the build, listed; fails when one did not build or pass."""
    from pophealth.marts.build import PASSED

    if results is None:
        raise _fail(f"{layer}: the build reported no results (dbt stopped before running a node): see the build task")
    nodes = results.get(layer, [])
    for r in nodes:
        failures = f"  ({r['failures']} failing rows)" if r["status"] not in PASSED and r["failures"] else ""
        log.info("%-7s %-5s %-70s %6.2fs%s", r["status"], r["resource_type"], r["name"], r["seconds"], failures)
    bad = [r for r in nodes if r["status"] not in PASSED]
    warned = sum(r["status"] == "warn" for r in nodes)
    if bad:
        listed = "\n".join(f"  {r['resource_type']} {r['name']}: {r['status']}" for r in bad)
        raise _fail(f"{layer}: {len(bad)} of {len(nodes)} did not build or pass:\n{listed}")
    log.info("%s: %d built or passed%s", layer, len(nodes), f", {warned} with warnings" if warned else "")


def _cosmos_task_group(group_id: str, build_candidates: bool):
    """The dbt project as Airflow tasks (Cosmos), rendered from the manifest that `pophealth setup` writes.

    One `dbt build` of the whole project runs in one task (Cosmos's watcher mode: `dbt.dbt_producer_watcher`),
    and every seed and model still has its own task, and its tests theirs (`dbt.<model>.run`, `dbt.<model>.test`),
    which take their result from that build: every model is visible in the UI with its status, while dbt is
    started once, not once per node (one invocation per node was most of the marts DAG's time). Each of those
    tasks runs once the build has finished, so none waits on a sensor or a triggerer; a model's task, retried or
    cleared in the UI, runs dbt for that model alone (Cosmos's fallback)."""
    from airflow.sdk import task

    from pophealth.marts.build import FILE_LOG, dbt_executable, manifest_path, warehouse_for_dbt

    manifest = manifest_path()
    if not manifest.exists():

        @task(task_id="dbt_manifest_missing")
        def dbt_manifest_missing() -> None:
            raise _fail(f"the dbt manifest {manifest} is missing: run `pophealth setup` first")

        return dbt_manifest_missing()

    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID, ExecutionMode, InvocationMode, LoadMode

    paths = config.paths()
    group = DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(paths.dbt_project_dir, manifest_path=manifest),
        profile_config=ProfileConfig(
            profile_name=DBT_PROFILE,
            target_name=DBT_TARGET,
            profiles_yml_filepath=paths.dbt_project_dir / "profiles.yml",
        ),
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.WATCHER,
            dbt_executable_path=dbt_executable(),
            # dbt in a process of its own: in this one (DBT_RUNNER) Cosmos turned
            # each of dbt's ~6,800 events into JSON and pushed ~1,800 XComs from
            # dbt's threads, one at a time (18 ms each): the build took 4x as long
            # as dbt alone. From dbt's output it pushes one result per node.
            invocation_mode=InvocationMode.SUBPROCESS,
            # A retry of the build would be skipped by Cosmos (it never runs a
            # second whole build); the per-model tasks retry on their own instead.
            setup_operator_args={"retries": 0},
        ),
        # Cosmos's own asset URIs cannot name a warehouse reached over a unix socket; the DAG publishes
        # its own mart assets instead.
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            emit_datasets=False,
            # a test over two models is one of each model's tests (the build runs it
            # once both are built), not a task of its own that would find no result
            should_detach_multiple_parents_tests=False,
        ),
        operator_args={
            "install_deps": False,
            "dbt_cmd_flags": list(FILE_LOG),
            "callback": "pophealth.marts.build.record_run_results",
            "on_execute_callback": warehouse_for_dbt,
            **({"vars": {"build_candidates": True}} if build_candidates else {}),
        },
        default_args=DEFAULT_ARGS,
    )
    _after_the_build(group, group.children[f"{group_id}.{PRODUCER_WATCHER_TASK_ID}"])
    return group


def _after_the_build(group, producer) -> None:
    """Every per-node task of the group starts once the one `dbt build` has finished, whatever its outcome.

    Cosmos starts them beside the build, each waiting for its node's result (deferred to a triggerer); that
    deadlocks `dag.test()` (`pophealth run`), which runs one task at a time and may pick a node's task before the
    build, and it holds a triggerer slot per node in a deployment. After the build, each finds its node's result
    at once: a model dbt built succeeds, a failed test fails its task (and so everything after it, the gate and the
    publish). `one_done`: they run after a failed build too, so that the UI shows which nodes failed rather than
    every node as upstream_failed; and they are skipped when the build did not run (check_loads failed or found
    nothing new), so that no node's task then runs dbt on its own (Cosmos's fallback when it finds no result)."""
    from airflow.sdk import TaskGroup
    from cosmos.constants import PRODUCER_WATCHER_DONE_TASK_ID

    def tasks(node):
        return list(node.children.values()) if isinstance(node, TaskGroup) else [node]

    inside = [t for child in group.children.values() for t in tasks(child)]
    ids = {t.task_id for t in inside}
    done = f"{group.group_id}.{PRODUCER_WATCHER_DONE_TASK_ID}"
    for t in inside:
        if t is producer or t.task_id == done:
            continue
        if not (set(t.upstream_task_ids) & ids):
            producer >> t
            t.trigger_rule = "one_done"
