"""Benchmarks of the foundation, printed as medians and ratios against baselines measured in the same run.

    ./dev.sh bench [--population 2000] [--repeats 3]

These machines are shared and noisy, so every figure is the median of several repeats, and each is set
beside a baseline that ran on the same machine a moment before:
- the generator at N and 10 N people (the ratio shows whether it scales linearly);
- pseudonymising NHS numbers (check, type, HMAC; and with the vault's encryption) against the bare HMAC;
- staging the register extract (validate, pseudonymise, COPY into PostgreSQL) against only reading the
  same file with Python's csv module, the least any loader must do.
Nothing here is a test: nothing asserts a time.

    ./dev.sh bench --pyramid [--population 1438682]

builds the marts for a generated world of that register population (by default Essex County's 1,438,682)
without Airflow (every feed staged and published in order, then `dbt build`), prints each stage's time
and the risk pyramid's tier counts beside the contract's (7,193 / 64,741 / 215,802 / 1,150,946 at Essex
scale), and as a baseline the time of the bare ranking query the tiers come from. It takes about 7 minutes
on two cores; CI checks the pyramid's rule on small worlds instead (dbt test risk_tiers_follow_the_pyramid).
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
    os.environ.setdefault("POPHEALTH_VAULT_KEY", "cd" * 32)
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


def expected_pyramid(people: int) -> dict[str, int]:
    """The contract's cut: floor(0.005 N), floor(0.05 N), floor(0.20 N)."""
    very_high, high, moderate = people * 5 // 1000, people * 5 // 100, people * 20 // 100
    return {"very_high": very_high, "high": high - very_high, "moderate": moderate - high, "low": people - moderate}


def bench_pyramid(population: int, work: Path) -> int:
    from pophealth import db
    from pophealth.landing import LOAD_ORDER, identify
    from pophealth.load import prepare_warehouse, publish_load, stage_extract
    from pophealth.marts import dbt_command
    from pophealth.synth import write_world

    os.environ.setdefault("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    os.environ.setdefault("POPHEALTH_VAULT_KEY", "cd" * 32)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    write_world(work / "landing", population=population, seed=1)
    stages["generate the world and its extracts"] = time.perf_counter() - started

    prepare_warehouse()
    extracts = sorted(p for p in (work / "landing").iterdir() if p.suffix == ".csv")
    for feed in LOAD_ORDER:
        started = time.perf_counter()
        for extract in extracts:
            found = identify(extract)
            if found is not None and found.feed == feed:
                outcome = stage_extract(extract)
                if outcome.status != "validated":
                    raise SystemExit(f"{extract.name} was not accepted: {outcome.status}")
                publish_load(outcome.load_id)
        stages[f"stage and publish {feed}"] = time.perf_counter() - started

    started = time.perf_counter()
    proc = dbt_command(["build"])
    stages["dbt build (all models and tests)"] = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit("dbt build failed")

    with db.connect() as conn:
        started = time.perf_counter()
        conn.execute("""CREATE TEMP TABLE ranked AS SELECT person_id,
                        row_number() OVER (ORDER BY risk_score DESC, person_id) AS r FROM marts.risk_stratification""")
        baseline = time.perf_counter() - started
        tiers = dict(conn.execute("SELECT risk_tier, count(*) FROM marts.risk_stratification GROUP BY 1").fetchall())
    people = sum(tiers.values())
    expected = expected_pyramid(population)
    total = sum(stages.values())
    print(f"pyramid    register population {population:,}; {os.cpu_count()} cores")
    for name, seconds in stages.items():
        print(f"  {name:<40} {seconds:9.1f} s  {seconds / total:6.1%}")
    print(f"  {'total':<40} {total:9.1f} s")
    print(f"  baseline: the bare ranking query on the scored people {baseline:7.2f} s; dbt build is "
          f"{stages['dbt build (all models and tests)'] / baseline:,.0f}x that")
    print(f"  people stratified: {people:,} (register population {population:,})")
    ok = True
    for tier in ("very_high", "high", "moderate", "low"):
        same = tiers.get(tier, 0) == expected[tier]
        ok &= same
        print(f"  {tier:<10} {tiers.get(tier, 0):>10,}  contract {expected[tier]:>10,}  {'equal' if same else 'DIFFERENT'}")
    db.stop_embedded()
    return 0 if ok and people == population else 1


def bench_pseudonymisation(landing: Path, repeats: int) -> None:
    """The platform's pseudonymisation of NHS numbers beside the bare HMAC of the same digits."""
    import hashlib
    import hmac

    from pophealth.identifiers import NhsNumber, check_nhs_number, normalise_nhs_number
    from pophealth.keys import LinkageKey, VaultKey
    from pophealth.pseudonymise import Pseudonymiser
    from pophealth.vault import VaultCipher

    extract = next(landing.glob("gp_register_*.csv"))
    with extract.open(newline="") as handle:
        raw = [row["nhs_number"] for row in csv.DictReader(handle)]
    numbers = [n for n in raw if check_nhs_number(n).linkable] * 5
    digits = [normalise_nhs_number(n).encode() for n in numbers]
    secret = bytes.fromhex("ab" * 32)
    pseudonymiser = Pseudonymiser(LinkageKey(secret))
    cipher = VaultCipher(VaultKey(bytes.fromhex("cd" * 32)))

    def bare_hmac():
        for d in digits:
            hmac.new(secret, d, hashlib.sha256).hexdigest()

    def platform():
        for n in numbers:
            pseudonymiser.person_id(NhsNumber(n))

    def platform_with_vault():
        for n in numbers:
            number = NhsNumber(n)
            person = pseudonymiser.person_id(number)
            cipher.encrypt("nhs", person.value, number.digits_for_hashing())

    count = len(numbers)
    baseline = _median_seconds(bare_hmac, repeats)
    print(f"{'baseline   bare HMAC-SHA256 of ' + format(count, ',') + ' NHS numbers':<52}{baseline:8.3f} s  "
          f"({count / baseline:10,.0f} /s)")
    for label, action in (("pseudonymise   check, type, HMAC", platform),
                          ("pseudonymise   + vault AES-256-GCM encryption", platform_with_vault)):
        seconds = _median_seconds(action, repeats)
        print(f"{label:<52}{seconds:8.3f} s  ({count / seconds:10,.0f} /s)  ratio to bare HMAC: "
              f"{seconds / baseline:5.1f}x")


def bench_gates(population: int, work: Path) -> None:
    """The quality gates' share of the pipeline at a register population, without Airflow: every extract staged,
    gated (pophealth.gates.run_load_gate) and published in load order, then dbt building the candidate marts
    (as the marts DAG does), the marts gate (pophealth.marts_gate) and the publish swap. World generation is
    not part of the pipeline and is left out of the total."""
    from pophealth import db, gates, marts_gate
    from pophealth.landing import LOAD_ORDER, identify
    from pophealth.load import batch_table, prepare_warehouse, publish_load, refuse_load, stage_extract
    from pophealth.marts import dbt_command
    from pophealth.synth import write_world

    os.environ.setdefault("POPHEALTH_LINKAGE_KEY", "ab" * 32)
    os.environ.setdefault("POPHEALTH_VAULT_KEY", "cd" * 32)
    write_world(work / "landing", population=population, seed=1)
    prepare_warehouse()
    stages = {"stage and publish (without gates)": 0.0, "load gates": 0.0}
    gated = refused = 0
    extracts = sorted(p for p in (work / "landing").iterdir() if p.suffix == ".csv")
    for feed in LOAD_ORDER:
        for extract in extracts:
            found = identify(extract)
            if found is None or found.feed != feed:
                continue
            started = time.perf_counter()
            outcome = stage_extract(extract)
            stages["stage and publish (without gates)"] += time.perf_counter() - started
            if outcome.status != "validated":
                continue
            if gates.has_suite(feed):
                started = time.perf_counter()
                result = gates.run_load_gate(outcome.load_id, feed, batch_table(outcome.load_id), run_id="bench")
                stages["load gates"] += time.perf_counter() - started
                gated += 1
                if not result.passed:
                    refused += 1
                    refuse_load(outcome.load_id, result.summary())
                    continue
            started = time.perf_counter()
            publish_load(outcome.load_id)
            stages["stage and publish (without gates)"] += time.perf_counter() - started
    started = time.perf_counter()
    proc = dbt_command(["build", "--vars", "{build_candidates: true}"])
    stages["dbt build into the candidates"] = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit("dbt build failed")
    started = time.perf_counter()
    outcome = marts_gate.run_marts_gate(candidates=True, run_id="bench")
    stages["marts gate"] = time.perf_counter() - started
    started = time.perf_counter()
    if outcome.passed:
        marts_gate.publish_candidates()
    stages["publish swap"] = time.perf_counter() - started
    total = sum(stages.values())
    print(f"gates      register population {population:,}; {os.cpu_count()} cores; {gated} loads gated "
          f"({refused} refused); marts gate {'passed' if outcome.passed else 'FAILED'} "
          f"({len(outcome.results)} rules, {len(outcome.failures('warn'))} warnings)")
    for name, seconds in stages.items():
        print(f"  {name:<40} {seconds:9.1f} s  {seconds / total:6.1%}")
    print(f"  {'total pipeline':<40} {total:9.1f} s")
    share = stages["load gates"] + stages["marts gate"]
    print(f"  gates (load + marts) {share:9.1f} s  {share / total:6.1%} of the pipeline")
    db.stop_embedded()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, help="people (default 2,000; with --pyramid 1,438,682)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pyramid", action="store_true", help="the risk pyramid at a register population "
                        "(default 1,438,682, Essex County)")
    parser.add_argument("--gates", action="store_true", help="the load and marts gates' share of the pipeline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pophealth-bench-") as tmp:
        work = Path(tmp)
        os.environ["POPHEALTH_HOME"] = str(work / "state")
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
