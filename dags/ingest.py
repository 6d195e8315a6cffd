"""Ingest DAGs, one per feed of the extract contract: each file staged (validated, pseudonymised), gated, published.

Thin wiring only: every task calls one function of the `pophealth` package. The new files of the landing folder
are loaded in groups, one mapped `load` task each (orchestration.in_groups: a task per file cost as much as the
file); a bad file is refused on its own, the others of its group still publish, and then its task fails, naming it.
Each feed (declared in pophealth/contract/feeds.py) is scheduled as its files arrive; the first task, `discover`, waits
(bounded) for complete new files in a scheduled run, and for the feeds before it in the load order to finish
theirs, and looks once in a run started by hand. The last task, `published`, is the run's one asset event.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from pophealth.contract.feeds import FEEDS, Feed
from pophealth.operate.orchestration import DEFAULT_ARGS, POKE_INTERVAL, raw_asset, timetable


def make_ingest_dag(declared: Feed):
    feed = declared.name

    @dag(
        dag_id=f"ingest_{feed}",
        description=declared.described,
        doc_md=f"### Ingest `{feed}`\n{declared.described}\n\nEach file: stage (validate, pseudonymise, remove "
        "opt-outs) -> quality gate -> publish, in `load` tasks of up to a dozen files. A failed gate leaves the "
        "published data as it was.\n\n"
        f"Schedule: {declared.arrival.described}.",
        schedule=timetable(declared.arrival),
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["ingest", feed],
    )
    def ingest():
        @task.sensor(poke_interval=POKE_INTERVAL, timeout=declared.arrival.wait, mode="reschedule", soft_fail=True)
        def discover(**context):
            from pophealth.operate.orchestration import wait_for_files

            return wait_for_files(feed, context["dag_run"].run_type)

        @task(retries=2, retry_delay=timedelta(seconds=5), map_index_template="{{ files_loaded | default('') }}")
        def load(files: list[str]) -> list[dict]:
            from airflow.sdk import get_current_context

            from pophealth.operate.orchestration import group_label, load_files

            context = get_current_context()
            context["files_loaded"] = group_label(files)  # the UI names each load task by its files
            return load_files(files, context["run_id"], retried=context["ti"].try_number > 1)

        # One asset event per run, once every file of it is published (so one delivery starts one build of the
        # marts, not one per file); a run with a refused file announces nothing: the marts are not rebuilt
        # while a load is refused and not replaced (build_marts's check_loads).
        @task(outlets=[raw_asset(feed)])
        def published() -> None:
            """Marks the feed's raw table as updated, for build_marts."""

        load.expand(files=discover()) >> published()

    return ingest()


for _feed in FEEDS:
    globals()[f"ingest_{_feed.name}"] = make_ingest_dag(_feed)
