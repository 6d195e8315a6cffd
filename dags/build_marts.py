"""Build the marts with dbt when any published input changes (data-aware scheduling on the raw assets).

check_loads refuses to build while a load has failed its gate and not been replaced, so the marts keep
their last good state; dbt_build runs `dbt build` (seeds, models and their tests) and publishes each
model's result to `audit.dbt_result` and to this task's log.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from pophealth.orchestration import ANY_RAW_ASSET, DEFAULT_ARGS, MART_ASSETS


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
    @task
    def check_loads() -> None:
        from pophealth.orchestration import assert_loads_gated

        assert_loads_gated()

    @task(outlets=MART_ASSETS)
    def dbt_build(**context) -> dict:
        from pophealth.orchestration import build_marts_with_dbt

        return build_marts_with_dbt(context["run_id"])

    check_loads() >> dbt_build()


build_marts()
