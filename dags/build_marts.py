"""Build the marts with dbt when any published input changes (data-aware scheduling on the raw assets).

check_loads refuses to build while a load has failed its gate and not been replaced, so the marts keep
their last good state. Write-audit-publish: dbt builds marts and reporting as candidate schemas
(marts__candidate, reporting__candidate), gate_marts validates them (expectations/marts.yml), and only then
does publish_marts swap them in, in one transaction; a failed error rule or dbt test stops the run before
publish, and analysts keep the last good marts (pophealth/marts_gate.py).

The dbt project is rendered by Astronomer Cosmos as one task per seed and model, each followed by its
tests, so every model is visible and retryable here; each result is also kept in `audit.dbt_result`. The group is rendered from the dbt manifest (`pophealth setup` writes it), so
parsing this file never runs dbt.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from pophealth.orchestration import ANY_RAW_ASSET, DEFAULT_ARGS, MART_ASSETS, dbt_task_group


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
        from pophealth import orchestration

        orchestration.assert_loads_gated()
        orchestration.clear_candidates()  # what a refused build left; dbt builds the candidates afresh
        orchestration.assign_published_ids()  # the purpose-keyed ids dbt joins in; fails without the keys

    @task
    def gate_marts(**context) -> None:
        from pophealth import orchestration

        orchestration.gate_marts(context["run_id"])

    @task
    def publish_marts() -> None:
        from pophealth import orchestration

        orchestration.publish_marts()

    @task(outlets=MART_ASSETS)
    def marts_published() -> None:
        """Marks the marts as updated, for whatever is scheduled on them."""

    check_loads() >> dbt_task_group(build_candidates=True) >> gate_marts() >> publish_marts() >> marts_published()


build_marts()
