"""Benchmarks of the foundation, printed as medians and ratios against baselines measured in the same run.

    ./dev.sh bench [--population 2000] [--repeats 3]

These machines are shared and noisy, so every figure is the median of several repeats, and each is set
beside a baseline that ran on the same machine a moment before:
- the generator at N and 10 N people (the ratio shows whether it scales linearly);
- pseudonymising NHS numbers (check, type, HMAC; and with the vault's encryption) against the bare HMAC;
- staging the register extract (validate, pseudonymise, COPY into PostgreSQL) against only reading the
  same file with Python's csv module, the least any loader must do.
Nothing here is a test: nothing asserts a time.

    ./dev.sh bench --scale [--sizes 14387,143868,1438682] [--repeats 3] [--out docs/benchmarks] [--plot FILE]
                           [--work-mem 256MB]

for generated worlds of 1%, 10% and 100% of Essex County's register population (one world per size, seed 1),
the same files run two ways, interleaved so that both see the same load, each in a fresh POPHEALTH_HOME: the
pipeline without Airflow (benchmarks/pipeline.py: every extract staged, gated and published in load order, dbt
building the candidate marts, the marts gate, the publish swap) and `pophealth run --landing` (the real DAGs
through Airflow, keyed as the demo is). It prints bare and DAG seconds, the orchestration overhead (DAGs / bare
- 1), each DAG's time (from the run's own outcome.json), the peak memory of each run's process tree (RSS) and
PostgreSQL (PSS), the load average, and time and memory fitted to a * people^k on log-log (k > 1.1 called
superlinear); for the bare run also each stage's time, the staging rate, staging with publishing, and the
database's own work of both replayed with no Python, beside a bare PostgreSQL COPY of the same pseudonymised rows,
pseudonymisation beside the bare HMAC, the gates' share, and a
hand-written pandas loader (read_csv, per-row HMAC, to_sql) on the same files. Sizes under 50,000 are repeated
--repeats times (medians), larger ones run once. It writes scale.json and scale.svg (time against population, per
stage) to --out, and with --plot FILE time and memory against population, bare and DAGs, log-log (altair: .svg,
.png, .html or .json). Method and figures: docs/benchmarks.md.
--work-mem sets PostgreSQL's work_mem for every connection of the runs (the published figures used 256MB:
they were measured while the marts gate's person_in_spine rules were NOT IN subqueries, quadratic at Essex
scale with the default 4MB; since f048af8 the default is enough).

    ./dev.sh bench --gates [--population 20000]

the same pipeline at one size, printing the quality gates' share (load gates and marts gate) of it.

    ./dev.sh bench --pyramid [--population 1438682]

builds the marts for a generated world of that register population (by default Essex County's 1,438,682)
without gates (every feed staged and published in order, then `dbt build`), prints each stage's time
and the risk pyramid's tier counts beside the contract's (7,193 / 64,741 / 215,802 / 1,150,946 at Essex
scale), and as a baseline the time of the bare ranking query the tiers come from. It takes about 7 minutes
on two cores; CI checks the pyramid's rule on small worlds instead (dbt test risk_tiers_follow_the_pyramid).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import (
    DBT_BUILD,
    LOAD_GATES,
    MARTS_GATE,
    expected_pyramid,
    risk_tiers,
    run_pipeline,
    use_bench_keys,
)
from benchmarks.pipeline import median_seconds as _median_seconds
from benchmarks.pseudonymisation import bench_pseudonymisation

__all__ = ["bench_gates", "bench_pyramid", "bench_pseudonymisation", "expected_pyramid", "main"]


def bench_generator(population: int, repeats: int, work: Path) -> Path:
    from pophealth.synth import write_world

    small = _median_seconds(lambda: write_world(work / "small", population=population, seed=1), repeats)
    large = _median_seconds(lambda: write_world(work / "large", population=population * 10, seed=1), 1)
    print(f"generator  {population:>9,} people  {small:8.2f} s  ({population / small:10,.0f} people/s)")
    print(
        f"generator  {population * 10:>9,} people  {large:8.2f} s  ({population * 10 / large:10,.0f} people/s)"
        f"  ratio to {population:,}: {large / small:5.1f}x for 10x the people"
    )
    return work / "large"


def bench_staging(landing: Path, repeats: int) -> None:
    use_bench_keys()
    from pophealth.ingest.load import publish_load, refuse_load, stage_extract
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    prepare_warehouse()
    for name in ("ref_postcode_lookup.csv", *sorted(p.name for p in landing.glob("optouts_*.csv"))):
        outcome = stage_extract(landing / name)
        if outcome.status == "validated":
            publish_load(outcome.load_id)
    extract = next(landing.glob("gp_register_*.csv"))  # the largest personal extract of a world
    rows = sum(1 for _ in extract.open()) - 1

    def read_only():
        with extract.open(newline="") as handle:
            for _ in csv.DictReader(handle):
                pass

    def stage():
        outcome = stage_extract(extract, run_id="bench")
        refuse_load(outcome.load_id, "benchmark: staged only")  # drop it so the next repeat stages again

    baseline = _median_seconds(read_only, repeats)
    staged = _median_seconds(stage, repeats)
    print(
        f"baseline   csv read of {extract.name} ({rows:,} rows)  {baseline:8.3f} s  ({rows / baseline:10,.0f} rows/s)"
    )
    print(
        f"staging    validate+pseudonymise+COPY          {staged:8.3f} s  ({rows / staged:10,.0f} rows/s)"
        f"  ratio to the csv read: {staged / baseline:5.1f}x"
    )
    db.stop_embedded()


def bench_pyramid(population: int, work: Path) -> int:
    from pophealth.synth import write_world
    from pophealth.warehouse import db

    started = time.perf_counter()
    write_world(work / "landing", population=population, seed=1)
    generate = time.perf_counter() - started
    run = run_pipeline(work / "landing", gates=False, candidates=False)
    stages = {"generate the world and its extracts": generate, **run.stages}

    with db.connect() as conn:
        started = time.perf_counter()
        conn.execute("""CREATE TEMP TABLE ranked AS SELECT person_id,
                        row_number() OVER (ORDER BY risk_score DESC, person_id) AS r FROM marts.risk_stratification""")
        baseline = time.perf_counter() - started
    tiers = risk_tiers()
    people = sum(tiers.values())
    expected = expected_pyramid(population)
    total = sum(stages.values())
    print(f"pyramid    register population {population:,}; {os.cpu_count()} cores")
    for name, seconds in stages.items():
        print(f"  {name:<40} {seconds:9.1f} s  {seconds / total:6.1%}")
    print(f"  {'total':<40} {total:9.1f} s")
    print(
        f"  baseline: the bare ranking query on the scored people {baseline:7.2f} s; dbt build is "
        f"{stages[DBT_BUILD] / baseline:,.0f}x that"
    )
    print(f"  people stratified: {people:,} (register population {population:,})")
    ok = True
    for tier in ("very_high", "high", "moderate", "low"):
        same = tiers.get(tier, 0) == expected[tier]
        ok &= same
        print(
            f"  {tier:<10} {tiers.get(tier, 0):>10,}  contract {expected[tier]:>10,}  "
            f"{'equal' if same else 'DIFFERENT'}"
        )
    db.stop_embedded()
    return 0 if ok and people == population else 1


def bench_gates(population: int, work: Path) -> None:
    """The quality gates' share of the pipeline at a register population (benchmarks.pipeline.run_pipeline:
    every extract staged, gated and published in load order, dbt building the candidate marts, the marts
    gate and the publish swap). World generation is not part of the pipeline and is left out of the total."""
    from pophealth.synth import write_world
    from pophealth.warehouse import db

    write_world(work / "landing", population=population, seed=1)
    run = run_pipeline(work / "landing")
    stages = run.stages
    total = run.total
    print(
        f"gates      register population {population:,}; {os.cpu_count()} cores; {run.gated} loads gated "
        f"({run.refused} refused); marts gate {'passed' if run.marts_gate_passed else 'FAILED'} "
        f"({run.marts_rules} rules, {run.marts_warnings} warnings)"
    )
    for refusal in run.refusals:
        print(f"  refused: {refusal[:300]}")
    for name, seconds in stages.items():
        print(f"  {name:<40} {seconds:9.1f} s  {seconds / total:6.1%}")
    print(f"  {'total pipeline':<40} {total:9.1f} s")
    share = stages.get(LOAD_GATES, 0.0) + stages.get(MARTS_GATE, 0.0)
    print(f"  gates (load + marts) {share:9.1f} s  {share / total:6.1%} of the pipeline")
    db.stop_embedded()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, help="people (default 2,000; with --pyramid 1,438,682)")
    parser.add_argument("--repeats", "--repeat", type=int, default=3)
    parser.add_argument(
        "--pyramid",
        action="store_true",
        help="the risk pyramid at a register population (default 1,438,682, Essex County)",
    )
    parser.add_argument("--gates", action="store_true", help="the load and marts gates' share of the pipeline")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the whole pipeline at 1%%, 10%% and 100%% of Essex, "
        "bare and through the DAGs (pophealth run), with its baselines; writes scale.json and "
        "scale.svg",
    )
    parser.add_argument(
        "--sizes", help="with --scale: register populations, comma-separated (default 14387,143868,1438682)"
    )
    parser.add_argument("--out", help="with --scale: where scale.json and scale.svg go (default docs/benchmarks)")
    parser.add_argument(
        "--plot",
        help="with --scale: also draw time and peak memory against population, bare and "
        "DAGs, log-log, to this file (.svg, .png, .html or .json; altair)",
    )
    parser.add_argument(
        "--work-mem", help="with --scale: PostgreSQL work_mem for every connection, e.g. 256MB (default: the server's)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pophealth-bench-") as tmp:
        work = Path(tmp)
        os.environ["POPHEALTH_HOME"] = str(work / "state")
        if args.scale:  # each size runs in a process of its own, with a POPHEALTH_HOME of its own
            from benchmarks import scale

            sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(scale.SIZES)
            raise SystemExit(
                scale.run_scale(
                    sizes,
                    args.repeats,
                    Path(args.out or scale.DEFAULT_OUT),
                    work_mem=args.work_mem,
                    plot_file=Path(args.plot).resolve() if args.plot else None,
                )
            )
        if args.gates:
            raise SystemExit(bench_gates(args.population or 20_000, work))
        if args.pyramid:
            raise SystemExit(bench_pyramid(args.population or 1_438_682, work))
        args.population = args.population or 2000
        print(f"pophealth benchmarks (medians of {args.repeats}; {os.cpu_count()} cores)")
        landing = bench_generator(args.population, args.repeats, work)
        bench_pseudonymisation(landing, args.repeats)
        bench_staging(landing, args.repeats)


if __name__ == "__main__":
    main()
