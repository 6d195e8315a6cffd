"""The pipeline without Airflow, once, for every benchmark that needs it (--gates, --pyramid, --scale).

It does what the DAGs do, in the same order: every extract of the landing folder staged (validate,
pseudonymise, COPY into its batch table), gated (pophealth.quality.gates.run_load_gate) and published, feed by feed
in load order; then dbt builds the marts (into the candidate schemas, as the marts DAG does), the marts
gate validates them (pophealth.quality.marts_gate) and the publish swap makes them the published marts. The
product work the DAGs do besides is done here too, in the stage whose task does it in the DAGs: each published
load's OpenLineage event (with its stage), dbt's results in audit.dbt_result and the built manifest (with dbt build),
the marts' column lineage and their models' OpenLineage events (with the publish swap). Each stage's time is kept
under its name, and a `Clock` tells a memory sampler which stage is running.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PREPARE = "prepare the warehouse"
LOAD_GATES = "load gates"
DBT_BUILD = "dbt build"
MARTS_GATE = "marts gate"
PUBLISH_SWAP = "publish swap"


def stage_name(feed: str) -> str:
    return f"stage and publish {feed}"


def use_bench_keys() -> None:
    """The benchmarks' fixed keys (never a real one): set unless the environment already has them."""
    os.environ.setdefault("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    from pophealth.identity.keys import VaultPrivateKey

    os.environ.setdefault("POPHEALTH_VAULT_PUBLIC_KEY", VaultPrivateKey(bytes.fromhex("cd" * 32)).public_hex())
    os.environ.setdefault("POPHEALTH_SECONDARY_USE_KEY", "e7" * 32)
    os.environ.setdefault("POPHEALTH_DIRECT_CARE_KEY", "d4" * 32)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def expected_pyramid(people: int) -> dict[str, int]:
    """The contract's cut: floor(0.005 N), floor(0.05 N), floor(0.20 N)."""
    very_high, high, moderate = people * 5 // 1000, people * 5 // 100, people * 20 // 100
    return {"very_high": very_high, "high": high - very_high, "moderate": moderate - high, "low": people - moderate}


class Clock:
    """Seconds per stage name (a stage entered several times adds up), and the stage running now."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        previous = self.current
        self.current = name
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            self.current = previous


@dataclass
class FeedFigures:
    files: int = 0
    rows_read: int = 0
    rows_loaded: int = 0
    stage_seconds: float = 0.0  # stage_extract alone: validate, pseudonymise, COPY into the batch table
    publish_seconds: float = 0.0  # publish_load: INSERT ... SELECT from the batch table into the raw table
    gate_seconds: float = 0.0
    load_ids: list[int] = field(default_factory=list)


@dataclass
class PipelineRun:
    clock: Clock
    feeds: dict[str, FeedFigures]
    gated: int = 0
    refused: int = 0
    refusals: list[str] = field(default_factory=list)  # "file: the gate's summary" of each refused load
    marts_gate_passed: bool | None = None
    marts_rules: int = 0
    marts_warnings: int = 0

    @property
    def stages(self) -> dict[str, float]:
        return dict(self.clock.seconds)

    @property
    def total(self) -> float:
        return sum(self.clock.seconds.values())


def extracts_by_feed(landing: Path) -> dict[str, list[Path]]:
    """The landing folder's extracts by the feed their names give, each feed's in name order (others left out)."""
    from pophealth.ingest.landing import identify

    by_feed: dict[str, list[Path]] = {}
    for path in sorted(p for p in Path(landing).iterdir() if p.suffix == ".csv"):
        found = identify(path)
        if found is not None:
            by_feed.setdefault(found.feed, []).append(path)
    return by_feed


def run_pipeline(
    landing: Path, *, gates: bool = True, candidates: bool = True, clock: Clock | None = None, run_id: str = "bench"
) -> PipelineRun:
    """Stage, gate and publish every extract of `landing` in load order, then build, gate and publish the
    marts. With gates=False no gate runs and dbt builds the published marts directly (candidates=False)."""
    from pophealth.contract.feeds import LOAD_ORDER
    from pophealth.governance.lineage import after_marts_published, emit_load_event
    from pophealth.ingest.load import batch_table, publish_load, refuse_load, stage_extract
    from pophealth.marts.build import dbt_build, keep_build_results, manifest_path
    from pophealth.quality import gates as load_gates
    from pophealth.quality import marts_gate
    from pophealth.quality.data_docs import data_docs_once
    from pophealth.warehouse.schema import prepare_warehouse

    use_bench_keys()
    clock = clock or Clock()
    run = PipelineRun(clock, {})
    by_feed = extracts_by_feed(landing)
    with clock.stage(PREPARE):
        prepare_warehouse()
    for feed in LOAD_ORDER:
        figures = run.feeds.setdefault(feed, FeedFigures())
        # As a load task does (pophealth.operate.orchestration.load_files): the Data Docs index is built once
        # when its files are gated, here once per feed, and timed with the load gates.
        with ExitStack() as docs_index:
            docs_index.enter_context(data_docs_once())
            for extract in by_feed.get(feed, []):
                started = time.perf_counter()
                with clock.stage(stage_name(feed)):
                    outcome = stage_extract(extract, run_id=run_id)
                figures.stage_seconds += time.perf_counter() - started
                if outcome.status != "validated":
                    raise SystemExit(f"{extract.name} was not accepted: {outcome.status}")
                figures.files += 1
                figures.rows_read += outcome.rows_read
                figures.rows_loaded += outcome.rows_loaded
                if gates and load_gates.has_suite(feed):
                    started = time.perf_counter()
                    with clock.stage(LOAD_GATES):
                        result = load_gates.run_load_gate(
                            outcome.load_id, feed, batch_table(outcome.load_id), run_id=run_id
                        )
                    figures.gate_seconds += time.perf_counter() - started
                    run.gated += 1
                    if not result.passed:
                        run.refused += 1
                        run.refusals.append(f"{extract.name}: {result.summary()}")
                        refuse_load(outcome.load_id, result.summary())
                        continue
                started = time.perf_counter()
                with clock.stage(stage_name(feed)):
                    publish_load(outcome.load_id)
                    emit_load_event(outcome.load_id)  # as the load task does after publishing
                figures.publish_seconds += time.perf_counter() - started
                figures.load_ids.append(outcome.load_id)
            started = time.perf_counter()
            with clock.stage(LOAD_GATES):
                docs_index.close()
            figures.gate_seconds += time.perf_counter() - started

    with clock.stage(DBT_BUILD):
        proc = dbt_build(["--vars", "{build_candidates: true}"] if candidates else [])
        if proc.returncode == 0:  # as Cosmos's callback does after the DAG's build
            keep_build_results(manifest_path().parent, run_id)
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit("dbt build failed")
    if gates:
        with clock.stage(MARTS_GATE):
            outcome = marts_gate.run_marts_gate(candidates=candidates, run_id=run_id)
        run.marts_gate_passed = outcome.passed
        run.marts_rules = len(outcome.results)
        run.marts_warnings = len(outcome.failures("warn"))
        if candidates:
            with clock.stage(PUBLISH_SWAP):
                if outcome.passed:
                    marts_gate.publish_candidates()
                    after_marts_published(run_id)  # as publish_marts does
    elif candidates:
        with clock.stage(PUBLISH_SWAP):
            marts_gate.publish_candidates()
            after_marts_published(run_id)
    return run


def risk_tiers() -> dict[str, int]:
    """The published risk pyramid: people per tier."""
    from pophealth.warehouse import db

    with db.connect() as conn:
        return dict(conn.execute("SELECT risk_tier, count(*) FROM marts.risk_stratification GROUP BY 1").fetchall())
