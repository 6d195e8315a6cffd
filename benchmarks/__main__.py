"""Benchmarks of the foundation, printed as medians and ratios against baselines measured in the same run.

    ./dev.sh bench [--population 2000] [--repeats 3]

These machines are shared and noisy, so every figure is the median of several repeats, and each is set
beside a baseline that ran on the same machine a moment before:
- the generator at N and 10 N people (the ratio shows whether it scales linearly);
- staging the register extract (validate, pseudonymise, COPY into PostgreSQL) against only reading the
  same file with Python's csv module, the least any loader must do.
Nothing here is a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path


def _median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_generator(population: int, repeats: int, work: Path) -> Path:
    from pophealth.synth import write_world

    small = _median_seconds(lambda: write_world(work / "small", population=population, seed=1), repeats)
    large = _median_seconds(lambda: write_world(work / "large", population=population * 10, seed=1), 1)
    print(f"generator  {population:>9,} people  {small:8.2f} s  ({population / small:10,.0f} people/s)")
    print(f"generator  {population * 10:>9,} people  {large:8.2f} s  ({population * 10 / large:10,.0f} people/s)"
          f"  ratio to {population:,}: {large / small:5.1f}x for 10x the people")
    return work / "large"


def bench_staging(landing: Path, repeats: int) -> None:
    os.environ.setdefault("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    from pophealth import db
    from pophealth.load import prepare_warehouse, publish_load, refuse_load, stage_extract

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
    print(f"baseline   csv read of {extract.name} ({rows:,} rows)  {baseline:8.3f} s  ({rows / baseline:10,.0f} rows/s)")
    print(f"staging    validate+pseudonymise+COPY          {staged:8.3f} s  ({rows / staged:10,.0f} rows/s)"
          f"  ratio to the csv read: {staged / baseline:5.1f}x")
    db.stop_embedded()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pophealth-bench-") as tmp:
        work = Path(tmp)
        os.environ["POPHEALTH_HOME"] = str(work / "state")
        print(f"pophealth benchmarks (medians of {args.repeats}; {os.cpu_count()} cores)")
        landing = bench_generator(args.population, args.repeats, work)
        bench_staging(landing, args.repeats)


if __name__ == "__main__":
    main()
