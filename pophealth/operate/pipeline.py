"""The main job: every ingest DAG in load order, then the marts DAG, all through Airflow."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pophealth import config
from pophealth.contract.feeds import LOAD_ORDER
from pophealth.operate.airflow_runner import DagOutcome, prepare_airflow, run_dags
from pophealth.warehouse.schema import prepare_warehouse

INGEST_DAGS = tuple(f"ingest_{feed}" for feed in LOAD_ORDER)
MARTS_DAG = "build_marts"
OUTCOME_FILE = "outcome.json"  # in the run's log folder (POPHEALTH_HOME/runs/<started>/)


@dataclass
class PipelineOutcome:
    landing: Path
    log_dir: Path
    started_at: datetime
    seconds: float = 0.0
    dags: list[DagOutcome] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return all(d.succeeded for d in self.dags)

    def as_json(self) -> dict:
        """What the run did, for a program reading it afterwards (the scale benchmark's time per DAG): each DAG's
        state and seconds. Names, states and times only: nothing of the data."""
        return {
            "landing": str(self.landing),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "succeeded": self.succeeded,
            "dags": [
                {"dag_id": d.dag_id, "state": d.state, "run_id": d.run_id, "seconds": round(d.seconds, 3)}
                for d in self.dags
            ],
        }

    def write(self) -> Path:
        """outcome.json in the run's log folder, whole or absent (`pophealth run` and `pophealth dag` write it)."""
        path = self.log_dir / OUTCOME_FILE
        config.write_whole(path, json.dumps(self.as_json(), indent=1) + "\n")
        return path


def run_pipeline(
    landing: Path, dag_ids: tuple[str, ...] = INGEST_DAGS + (MARTS_DAG,), progress=print
) -> PipelineOutcome:
    started = time.monotonic()
    now = datetime.now(UTC)
    log_dir = config.paths().home / "runs" / now.strftime("%Y%m%dT%H%M%SZ")
    outcome = PipelineOutcome(landing=landing.resolve(), log_dir=log_dir, started_at=now)
    prepare_warehouse()
    env = {config.ENV_LANDING_DIR: str(outcome.landing)}
    outcome.dags = run_dags(
        dag_ids,
        log_dir,
        env,
        on_start=lambda dag_id: progress(f"  running DAG {dag_id} ..."),
        on_finish=lambda result: progress(f"  {result.dag_id:<30} {result.state:<8} {result.seconds:6.1f} s"),
        prepare=prepare_airflow,  # while the runner's child starts
    )
    outcome.seconds = time.monotonic() - started
    return outcome
