"""Build the marts with dbt when any published input changes (data-aware scheduling on the raw assets).

A build the assets start first waits (wait_for_loads) until the landing folder has nothing left to load, so a
delivery of several feeds is built once with all of it; a build they start when the marts already hold every
published load is skipped (check_loads: audit.marts_publication), so the marts are published once per delivery.
check_loads refuses to build while a load has failed its gate and not been replaced, so the marts keep
their last good state. Write-audit-publish: dbt builds marts and reporting as candidate schemas
(marts__candidate, reporting__candidate), gate_marts validates them (expectations/marts.yml), and only then
does publish_marts swap them in, in one transaction; a failed error rule or dbt test stops the run before
publish, and analysts keep the last good marts (pophealth/quality/marts_gate.py).

One `dbt build` of the whole project runs in `dbt.build` (dbt in a process of its own, started once), and each
layer of the project (seeds, staging, intermediate, marts, direct_care, reporting) has its task, `dbt.<layer>`,
showing each of its seeds, models and tests with its result from the build, failed when one of them did not
build or pass. Each result is also kept in `audit.dbt_result`. POPHEALTH_DBT_TASKS=node shows every seed and
model as a task of its own instead, with its tests' task after it (Astronomer Cosmos, watcher mode, rendered
from the dbt manifest), at about 0.1-0.2 s of Airflow's time per task (docs/operating.md). Neither runs dbt at
parse time.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from pophealth.operate.orchestration import (
    ANY_RAW_ASSET,
    DEFAULT_ARGS,
    LOADS_WAIT,
    MART_ASSETS,
    POKE_INTERVAL,
    dbt_task_group,
)


@dag(
    dag_id="build_marts",
    description="dbt build of staging, intermediate and marts, gated on the loads",
    schedule=ANY_RAW_ASSET,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["marts", "dbt"],
)
def build_marts():
    @task.sensor(poke_interval=POKE_INTERVAL, timeout=LOADS_WAIT + POKE_INTERVAL * 2, mode="reschedule")
    def wait_for_loads(**context) -> bool:
        from pophealth.operate.orchestration import wait_for_loads

        return wait_for_loads(context["dag_run"].run_type, context["dag_run"].start_date)

    @task
    def check_loads(**context) -> int:
        from pophealth.operate import orchestration

        return orchestration.check_loads(context["dag_run"].run_type)

    @task
    def gate_marts(**context) -> None:
        from pophealth.operate import orchestration

        orchestration.gate_marts(context["run_id"])

    @task
    def publish_marts(newest_load_id: int, **context) -> None:
        from pophealth.operate import orchestration

        orchestration.publish_marts(newest_load_id, context["run_id"])

    @task(outlets=MART_ASSETS)
    def marts_published() -> None:
        """Marks the marts as updated, for whatever is scheduled on them."""

    checked = check_loads()
    gated = wait_for_loads() >> checked >> dbt_task_group(build_candidates=True) >> gate_marts()
    gated >> publish_marts(checked) >> marts_published()


build_marts()
