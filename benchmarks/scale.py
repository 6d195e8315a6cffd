"""Scale and speed: the whole pipeline at 1%, 10% and 100% of Essex County, measured against its limits.

    ./dev.sh bench --scale [--sizes 14387,143868,1438682] [--repeats 3] [--out docs/benchmarks]

For each register population a world is generated and run through the pipeline without Airflow
(benchmarks.pipeline.run_pipeline: every extract staged, gated and published in load order, dbt building the
candidate marts, the marts gate, the publish swap), in a process of its own with its own embedded PostgreSQL,
so that one size's memory or caches never reach the next. Each run measures:
- the time of each stage (generation beside it, outside the pipeline's total), and the peak memory of the
  benchmark process with its children (dbt) and, separately, of the PostgreSQL server (the sum of its
  processes' proportional set sizes), sampled in a background thread per stage;
- the risk tiers beside the contract's cut;
- for apc, cld and gp_register: the staging rate (validate, pseudonymise, COPY into the unindexed batch
  table) beside a bare `COPY FROM` of the very rows the loader wrote (exported with COPY TO) into a fresh
  unindexed table of the same columns, in the same run;
- a hand-written loader (pandas read_csv, hmac per row, DataFrame.to_sql) on the same three feeds' files;
- at the sizes under 50,000, pseudonymisation beside the bare HMAC (benchmarks.pseudonymisation).
Sizes under 50,000 run --repeats times and their medians are quoted; larger sizes run once. The figures go to
scale.json (every run, the medians and the machine) and the plot to scale.svg, drawn here as SVG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from benchmarks.pipeline import (
    DBT_BUILD,
    LOAD_GATES,
    MARTS_GATE,
    PREPARE,
    PUBLISH_SWAP,
    Clock,
    PipelineRun,
    expected_pyramid,
    stage_name,
    use_bench_keys,
)

ESSEX = 1_438_682
SIZES = (14_387, 143_868, ESSEX)  # 1%, 10% and 100% of Essex County's register population
SMALL = 50_000                    # sizes under this are repeated and their medians quoted
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks"
GENERATE = "generate the world"
FEEDS = ("ref_postcode_lookup", "ref_population", "optouts", "gp_register", "apc", "cld")
PIPELINE_STAGES = (PREPARE, *(stage_name(f) for f in FEEDS), LOAD_GATES, DBT_BUILD, MARTS_GATE, PUBLISH_SWAP)
COPY_FEEDS = ("apc", "cld", "gp_register")  # the personal feeds: nearly every row of a world
COPY_AIM = 1.5
PANDAS_LIMIT_S = 600.0
TIERS = ("very_high", "high", "moderate", "low")
MIB = 2 ** 20


# --- wording -------------------------------------------------------------------------------------------------

def growth(people_from: int, people_to: int, seconds_from: float, seconds_to: float) -> dict:
    """How time grows between two sizes: the ratios, the exponent b of time ~ people^b, and in words."""
    people_ratio = people_to / people_from
    time_ratio = seconds_to / seconds_from
    exponent = math.log(time_ratio) / math.log(people_ratio)
    if exponent < 0.9:
        kind = "less than linear (fixed costs still weigh)"
    elif exponent <= 1.1:
        kind = "close to linear"
    else:
        kind = "more than linear"
    return {"from": people_from, "to": people_to, "people_ratio": people_ratio, "time_ratio": time_ratio,
            "exponent": exponent,
            "words": f"{time_ratio:.1f}x the time for {people_ratio:.1f}x the people: {kind}"}


def ratio_words(ours_per_s: float, baseline_per_s: float, baseline: str, aim: float | None = None) -> str:
    """A rate beside a baseline's: how many times slower (or faster) than it, and against an aim if any."""
    ratio = baseline_per_s / ours_per_s
    words = (f"{ratio:.2f}x slower than {baseline}" if ratio >= 1 else f"{1 / ratio:.2f}x faster than {baseline}")
    if aim is not None:
        words += f" ({'within' if ratio <= aim else 'outside'} the {aim:g}x aim)"
    return words


def pandas_words(ratio: float) -> str:
    """The hand-written loader's time over the platform's stage and publish time of the same files, in words."""
    if ratio >= 1:
        return f"the hand-written pandas loader took {ratio:.1f}x the platform's stage and publish time"
    return (f"the platform's stage and publish took {1 / ratio:.1f}x the hand-written pandas loader's time (which "
            "validates nothing and keeps no quarantine, vault or audit)")


# --- memory ----------------------------------------------------------------------------------------------------

class MemorySampler(threading.Thread):
    """Samples, every `interval` seconds, the RSS of this process and its children (dbt), and the PSS of the
    PostgreSQL server's processes; keeps the peak of each per stage (the clock's current stage), and the
    load average, to say how busy the machine was."""

    def __init__(self, clock: Clock, interval: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.clock = clock
        self.interval = interval
        self.me = psutil.Process()
        self.process_peak: dict[str, int] = {}
        self.postgres_peak: dict[str, int] = {}
        self.load: dict[str, list[float]] = {}
        self._postmaster = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a process ending between listing and reading: the next sample has it
                continue

    def _postgres(self) -> list:
        from pophealth import config

        if self._postmaster is None or not self._postmaster.is_running():
            try:
                pid = int((config.paths().pgdata / "postmaster.pid").read_text().split()[0])
                self._postmaster = self.psutil.Process(pid)
            except (OSError, ValueError, IndexError, self.psutil.Error):
                self._postmaster = None
                return []
        return [self._postmaster, *self._postmaster.children(recursive=True)]

    def sample(self) -> None:
        stage = self.clock.current or "(between stages)"
        postgres = self._postgres()
        server = {p.pid for p in postgres}
        mine = 0
        for process in [self.me, *self.me.children(recursive=True)]:
            if process.pid in server:
                continue
            try:
                mine += process.memory_info().rss
            except self.psutil.Error:
                pass
        theirs = 0
        for process in postgres:
            try:
                theirs += process.memory_full_info().pss
            except self.psutil.Error:
                pass
        self.process_peak[stage] = max(self.process_peak.get(stage, 0), mine)
        if postgres:
            self.postgres_peak[stage] = max(self.postgres_peak.get(stage, 0), theirs)
        self.load.setdefault(stage, []).append(os.getloadavg()[0])


# --- the baselines -------------------------------------------------------------------------------------------

def copy_baseline(run: PipelineRun, work: Path) -> dict:
    """For each personal feed, the rows the loader wrote (COPY TO a file), then a timed bare COPY FROM that file
    into a fresh unindexed table of the same columns, created in the same transaction as the loader's batch
    table is."""
    from psycopg import sql

    from pophealth import db
    from pophealth.feeds import FEED_SPECS

    figures = {}
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        conn.execute("CREATE SCHEMA bench_copy")
        for feed in COPY_FEEDS:
            spec = FEED_SPECS[feed]
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in ("load_id", "source_row", "key_version")
                                        + spec.table_columns)
            path = work / f"{feed}.copy"
            with path.open("wb") as out, conn.cursor() as cur, cur.copy(
                    sql.SQL("COPY (SELECT {} FROM {} WHERE load_id = ANY({})) TO STDOUT").format(
                        columns, sql.SQL(spec.table), sql.Literal(run.feeds[feed].load_ids))) as copy:
                for data in copy:
                    out.write(data)
            size = path.stat().st_size
            with path.open("rb") as handle:
                rows = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            target = sql.Identifier("bench_copy", feed)
            with path.open("rb") as handle:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                        target, sql.SQL(spec.table)))
                    started = time.perf_counter()
                    with conn.cursor() as cur, cur.copy(
                            sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns)) as copy:
                        for chunk in iter(lambda: handle.read(1 << 20), b""):
                            copy.write(chunk)
                seconds = time.perf_counter() - started  # the COPY and its commit
            path.unlink()
            staged = run.feeds[feed]
            figures[feed] = {
                "rows": rows, "bytes": size, "copy_s": seconds, "copy_rows_per_s": rows / seconds,
                "staging_rows_read": staged.rows_read, "staging_rows_loaded": staged.rows_loaded,
                "staging_s": staged.stage_seconds, "staging_rows_per_s": staged.rows_read / staged.stage_seconds,
                "publish_s": staged.publish_seconds, "files": staged.files,
                "ratio": (rows / seconds) / (staged.rows_read / staged.stage_seconds),
            }
        conn.execute("DROP SCHEMA bench_copy CASCADE")
    rows = sum(f["rows"] for f in figures.values())
    read = sum(f["staging_rows_read"] for f in figures.values())
    copy_s = sum(f["copy_s"] for f in figures.values())
    staging_s = sum(f["staging_s"] for f in figures.values())
    figures["all"] = {"rows": rows, "copy_s": copy_s, "copy_rows_per_s": rows / copy_s,
                      "staging_rows_read": read, "staging_s": staging_s, "staging_rows_per_s": read / staging_s,
                      "ratio": (rows / copy_s) / (read / staging_s)}
    return figures


def pandas_baseline(landing: Path, platform_seconds: float, limit_s: float = PANDAS_LIMIT_S) -> dict:
    """What a team would write by hand: pandas read_csv of each file, an HMAC of the NHS number per row,
    the number dropped, DataFrame.to_sql into a scratch schema (dropped afterwards). It validates nothing,
    quarantines nothing, keeps no vault and no audit. Stops between files once `limit_s` has passed."""
    import hashlib
    import hmac

    import pandas as pd
    import sqlalchemy

    from pophealth import db

    secret = bytes.fromhex(os.environ["POPHEALTH_LINKAGE_KEY"])

    def pseudonym(value):
        if not isinstance(value, str):
            return None
        return hmac.new(secret, value.replace(" ", "").replace("-", "").encode(), hashlib.sha256).hexdigest()

    engine = sqlalchemy.create_engine(db.warehouse().url("postgresql+psycopg"))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS bench_pandas CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA bench_pandas")
    figures: dict = {"feeds": {}, "limit_s": limit_s, "completed": True}
    started_all = time.perf_counter()
    for feed in COPY_FEEDS:
        files = sorted(landing.glob(f"{feed}_*.csv"))
        done = rows = 0
        started = time.perf_counter()
        for path in files:
            if time.perf_counter() - started_all > limit_s:
                figures["completed"] = False
                break
            frame = pd.read_csv(path, dtype=str)
            column = next(c for c in frame.columns if c.lower() == "nhs_number")
            frame["person_id"] = frame[column].apply(pseudonym)
            frame = frame.drop(columns=[column])
            frame.to_sql(feed, engine, schema="bench_pandas", if_exists="append", index=False)
            rows += len(frame)
            done += 1
        seconds = time.perf_counter() - started
        figures["feeds"][feed] = {"files": done, "of_files": len(files), "rows": rows, "seconds": seconds,
                                  "rows_per_s": rows / seconds if seconds else None}
        if not figures["completed"]:
            break
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA bench_pandas CASCADE")
    engine.dispose()
    figures["seconds"] = time.perf_counter() - started_all
    figures["rows"] = sum(f["rows"] for f in figures["feeds"].values())
    figures["platform_s"] = platform_seconds
    if figures["completed"]:
        figures["ratio"] = figures["seconds"] / platform_seconds
    return figures


# --- one size, in a process of its own ------------------------------------------------------------------------

def measure(size: int, work: Path, pseudo_repeats: int, pandas_limit: float) -> dict:
    """One run at one size (POPHEALTH_HOME must already point at a fresh folder)."""
    from benchmarks.pipeline import risk_tiers, run_pipeline
    from pophealth import db
    from pophealth.synth import write_world

    use_bench_keys()
    clock = Clock()
    sampler = MemorySampler(clock)
    sampler.start()
    result: dict = {"people": size, "started": datetime.now(UTC).isoformat(timespec="seconds")}

    def say(text: str) -> None:
        print(f"[{size:,}] {text}", flush=True)

    try:
        landing = work / "landing"
        with clock.stage(GENERATE):
            write_world(landing, population=size, seed=1)
        say(f"generated in {clock.seconds[GENERATE]:.1f} s")
        run = run_pipeline(landing, clock=clock)
        stages = {name: clock.seconds.get(name, 0.0) for name in PIPELINE_STAGES}
        total = sum(stages.values())
        say(f"pipeline {total:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        tiers = risk_tiers()
        with db.connect() as conn:
            result["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
            result["work_mem"] = conn.execute("SHOW work_mem").fetchone()[0]
        expected = expected_pyramid(size)
        result.update({
            "generate_s": clock.seconds[GENERATE], "stages": stages, "pipeline_s": total,
            "gates_s": stages[LOAD_GATES] + stages[MARTS_GATE],
            "gates_share": (stages[LOAD_GATES] + stages[MARTS_GATE]) / total,
            "loads_gated": run.gated, "loads_refused": run.refused, "refusals": run.refusals, "marts_gate_passed": run.marts_gate_passed,
            "marts_gate_rules": run.marts_rules, "marts_gate_warnings": run.marts_warnings,
            "feeds": {f: {"files": v.files, "rows_read": v.rows_read, "rows_loaded": v.rows_loaded,
                          "stage_s": v.stage_seconds, "publish_s": v.publish_seconds, "gate_s": v.gate_seconds}
                      for f, v in run.feeds.items()},
            "rows_read": sum(v.rows_read for v in run.feeds.values()),
            "tiers": {t: tiers.get(t, 0) for t in TIERS}, "tiers_expected": expected,
            "tiers_equal_contract": all(tiers.get(t, 0) == expected[t] for t in TIERS)
                                    and sum(tiers.values()) == size,
        })
        say(f"tiers {result['tiers']} ({'equal to' if result['tiers_equal_contract'] else 'DIFFERENT from'} "
            "the contract)")
        with clock.stage("baseline: bare COPY"):
            result["copy"] = copy_baseline(run, work)
        say(f"ingest vs COPY: {result['copy']['all']['ratio']:.2f}x")
        platform_s = sum(run.feeds[f].stage_seconds + run.feeds[f].publish_seconds for f in COPY_FEEDS)
        with clock.stage("baseline: pandas read_csv + hmac + to_sql"):
            result["pandas"] = pandas_baseline(landing, platform_s, pandas_limit)
        result["pandas"]["platform_with_gates_s"] = platform_s + sum(run.feeds[f].gate_seconds for f in COPY_FEEDS)
        say(f"pandas {result['pandas']['seconds']:.1f} s (platform {platform_s:.1f} s), "
            f"completed: {result['pandas']['completed']}")
        if pseudo_repeats:
            from benchmarks.pseudonymisation import bench_pseudonymisation

            with clock.stage("baseline: pseudonymisation and bare HMAC"):
                result["pseudonymisation"] = bench_pseudonymisation(landing, pseudo_repeats, quiet=True)
    finally:
        sampler.stop()
        db.stop_embedded()
    result["memory"] = {
        "process_peak_mib": max((v for k, v in sampler.process_peak.items() if k in PIPELINE_STAGES), default=0)
                            / MIB,
        "postgres_peak_mib": max((v for k, v in sampler.postgres_peak.items() if k in PIPELINE_STAGES), default=0)
                             / MIB,
        "process_by_stage_mib": {k: v / MIB for k, v in sampler.process_peak.items()},
        "postgres_by_stage_mib": {k: v / MIB for k, v in sampler.postgres_peak.items()},
    }
    result["load_average"] = {k: statistics.mean(v) for k, v in sampler.load.items() if v}
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return result


# --- the machine, the summary, the table ----------------------------------------------------------------------

def machine() -> dict:
    import psutil

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mine = {psutil.Process().pid}
    others = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.pid not in mine:
                process.cpu_percent(None)
                others.append(process)
        except psutil.Error:
            pass
    time.sleep(2)
    busy = []
    for process in others:
        try:
            share = process.cpu_percent(None)
            if share >= 20:
                words = process.info["cmdline"] or [process.info["name"]]
                busy.append(f"{' '.join(Path(w).name if i == 0 else w for i, w in enumerate(words[:4]))[:80]} "
                            f"({share:.0f}% CPU)")
        except psutil.Error:
            pass
    return {"cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "cpu_model": model, "python": platform.python_version(), "system": platform.platform(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "load_average_at_start": os.getloadavg(), "busy_processes_at_start": busy}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], info: dict) -> dict:
    """The medians per size (over its repeats), how time grows between sizes, and the headline ratios."""
    sizes = []
    for people in sorted({r["people"] for r in runs}):
        mine = [r for r in runs if r["people"] == people]
        entry = {
            "people": people, "runs": len(mine),
            "generate_s": _median([r["generate_s"] for r in mine]),
            "stages": {s: _median([r["stages"][s] for r in mine]) for s in PIPELINE_STAGES},
            "pipeline_s": _median([r["pipeline_s"] for r in mine]),
            "pipeline_s_each_run": [r["pipeline_s"] for r in mine],
            "gates_share": _median([r["gates_share"] for r in mine]),
            "rows_read": mine[0]["rows_read"],
            "process_peak_mib": _median([r["memory"]["process_peak_mib"] for r in mine]),
            "postgres_peak_mib": _median([r["memory"]["postgres_peak_mib"] for r in mine]),
            "pandas_process_peak_mib": _median([r["memory"]["process_by_stage_mib"].get(
                "baseline: pandas read_csv + hmac + to_sql") for r in mine]),
            "load_average": _median([statistics.mean(r["load_average"].values()) for r in mine
                                     if r["load_average"]]),
            "tiers": mine[0]["tiers"], "tiers_expected": mine[0]["tiers_expected"],
            "tiers_equal_contract": all(r["tiers_equal_contract"] for r in mine),
            "ingest_vs_copy": {f: {k: _median([r["copy"][f][k] for r in mine])
                                   for k in ("staging_rows_per_s", "copy_rows_per_s", "ratio")}
                               for f in (*COPY_FEEDS, "all")},
        }
        # the median of the runs' ratios (not the ratio of the median rates), as the table shows it
        entry["ingest_vs_copy"]["words"] = ratio_words(1.0, entry["ingest_vs_copy"]["all"]["ratio"], "a bare COPY",
                                                       COPY_AIM)
        completed = [r["pandas"] for r in mine if r["pandas"]["completed"]]
        entry["pandas"] = {"completed_runs": len(completed), "of_runs": len(mine),
                           "seconds": _median([p["seconds"] for p in completed]),
                           "platform_s": _median([p["platform_s"] for p in completed]),
                           "platform_with_gates_s": _median([p["platform_with_gates_s"] for p in completed]),
                           "ratio": _median([p["ratio"] for p in completed])}
        if completed:
            entry["pandas"]["words"] = pandas_words(entry["pandas"]["ratio"])
        else:
            entry["pandas"]["words"] = (f"the hand-written loader did not finish within {PANDAS_LIMIT_S:.0f} s "
                                        "(stopped; nothing extrapolated)")
        sizes.append(entry)
    growths = [growth(a["people"], b["people"], a["pipeline_s"], b["pipeline_s"]) for a, b in zip(sizes, sizes[1:], strict=False)]
    stage_growths = [{s: growth(a["people"], b["people"], a["stages"][s], b["stages"][s])["time_ratio"]
                      for s in PIPELINE_STAGES if a["stages"][s] and b["stages"][s]}
                     for a, b in zip(sizes, sizes[1:], strict=False)]
    pseudo = [r["pseudonymisation"] for r in runs if "pseudonymisation" in r]
    pseudonymisation = {k: _median([p[k] for p in pseudo]) for k in pseudo[0]} if pseudo else None
    return {"machine": info, "sizes": sizes, "growth": growths, "stage_growth": stage_growths,
            "pseudonymisation": pseudonymisation, "runs": runs}


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:,.1f} s" if seconds < 600 else f"{seconds / 60:,.1f} min"


def table(summary: dict) -> str:
    """The printed table: one row per stage, one column per size (medians where repeated)."""
    sizes = summary["sizes"]
    head = ["stage"] + [f"{s['people']:,} ({s['runs']} run{'s' if s['runs'] > 1 else ''})" for s in sizes]
    rows = [[GENERATE + " (outside the total)"] + [_s(s["generate_s"]) for s in sizes]]
    rows += [[name] + [_s(s["stages"][name]) for s in sizes] for name in PIPELINE_STAGES]
    rows.append(["pipeline total"] + [_s(s["pipeline_s"]) for s in sizes])
    rows.append(["rows read"] + [f"{s['rows_read']:,}" for s in sizes])
    rows.append(["gates' share"] + [f"{s['gates_share']:.1%}" for s in sizes])
    rows.append(["peak memory, process + dbt"] + [f"{s['process_peak_mib']:,.0f} MiB" for s in sizes])
    rows.append(["peak memory, PostgreSQL (PSS)"] + [f"{s['postgres_peak_mib']:,.0f} MiB" for s in sizes])
    rows.append(["staging rows/s (apc, cld, gp_register)"]
                + [f"{s['ingest_vs_copy']['all']['staging_rows_per_s']:,.0f}" for s in sizes])
    rows.append(["bare COPY rows/s (same rows)"]
                + [f"{s['ingest_vs_copy']['all']['copy_rows_per_s']:,.0f}" for s in sizes])
    rows.append(["COPY rate / staging rate"] + [f"{s['ingest_vs_copy']['all']['ratio']:.2f}x" for s in sizes])
    rows.append(["pandas loader (same 3 feeds)"] + [_s(s["pandas"]["seconds"]) if s["pandas"]["completed_runs"]
                                                    else "stopped" for s in sizes])
    rows.append(["platform stage + publish (3 feeds)"] + [_s(s["pandas"]["platform_s"]) for s in sizes])
    rows.append(["pandas time / platform time"] + [f"{s['pandas']['ratio']:.1f}x" if s["pandas"]["ratio"] else "-"
                                         for s in sizes])
    rows.append(["tiers equal to the contract"] + ["yes" if s["tiers_equal_contract"] else "NO" for s in sizes])
    rows.append(["mean load average (2 = both cores busy)" if (summary["machine"].get("cores") == 2)
                 else "mean load average"] + [f"{s['load_average']:.1f}" if s["load_average"] else "-"
                                              for s in sizes])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
             for r in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    for g in summary["growth"]:
        lines.append(f"{g['from']:,} -> {g['to']:,} people: {g['words']} (time ~ people^{g['exponent']:.2f})")
    for s in summary["sizes"]:
        lines.append(f"{s['people']:,}: staging {s['ingest_vs_copy']['words']}; {s['pandas']['words']}")
    p = summary["pseudonymisation"]
    if p:
        lines.append(f"pseudonymisation: {p['pseudonymise_per_s']:,.0f} numbers/s, bare HMAC "
                     f"{p['bare_hmac_per_s']:,.0f}/s ({p['pseudonymise_ratio_to_hmac']:.1f}x its time); with the "
                     f"vault {p['pseudonymise_and_vault_per_s']:,.0f}/s ({p['pseudonymise_and_vault_ratio_to_hmac']:.1f}x)")
    return "\n".join(lines)


# --- the plot ------------------------------------------------------------------------------------------------

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#ad494a", "#637939")


def svg_plot(series: dict[str, list[tuple[float, float]]], total: list[tuple[float, float]] | None = None,
             title: str = "") -> str:
    """Time against population on log-log axes: one labelled polyline per stage (class "stage"), and the
    pipeline's total dashed (class "total"). Points with no time (or zero) are left out."""
    width, height = 1080, 560
    left, right, top, bottom = 80, 620, 50, 490
    points = [p for line in [*series.values(), total or []] for p in line if p[0] > 0 and p[1] > 0]
    xs = [p[0] for p in points] or [1, 10]
    ys = [p[1] for p in points] or [1, 10]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def x(value: float) -> float:
        return left + (math.log10(value) - x0) / (x1 - x0) * (right - left)

    def y(value: float) -> float:
        return bottom - (math.log10(value) - y0) / (y1 - y0) * (bottom - top)

    def seconds(power: int) -> str:
        value = 10.0 ** power
        return f"{value:g} s" if value < 1000 else f"{value:,.0f} s"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="28" font-size="15" font-weight="bold">{escape(title)}</text>']
    for power in range(x0, x1 + 1):
        px = x(10 ** power)
        out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{px:.1f}" y="{bottom + 18}" text-anchor="middle">{10 ** power:,}</text>')
    for power in range(y0, y1 + 1):
        py = y(10.0 ** power)
        out.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{seconds(power)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" '
               'stroke="#333"/>')
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 40}" text-anchor="middle">register population '
               '(people, log scale)</text>')
    out.append(f'<text x="18" y="{(top + bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(top + bottom) / 2})">time (seconds, log scale)</text>')
    lines = [(name, [p for p in pts if p[0] > 0 and p[1] > 0]) for name, pts in series.items()]
    lines.sort(key=lambda item: -(item[1][-1][1] if item[1] else 0))  # the legend in the order of the last size
    if total:
        lines.insert(0, ("pipeline total", [p for p in total if p[0] > 0 and p[1] > 0]))
    for index, (name, pts) in enumerate(lines):
        is_total = total is not None and index == 0
        colour = "#000" if is_total else COLOURS[index % len(COLOURS)]
        kind = "total" if is_total else "stage"
        dash = (' stroke-dasharray="6 4"' if is_total
                else ' stroke-dasharray="2 3"' if name.endswith("(outside the total)") else "")
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        last = f"{pts[-1][1]:,.1f} s at {pts[-1][0]:,.0f}" if pts else "no time"
        out.append(f'<polyline class="{kind}" data-stage="{escape(name)}" points="{coords}" fill="none" '
                   f'stroke="{colour}" stroke-width="{2.5 if is_total else 1.8}"{dash}>'
                   f'<title>{escape(name)}: {escape(last)}</title></polyline>')
        for a, b in pts:
            out.append(f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3" fill="{colour}"/>')
        ly = top + 8 + index * 20
        out.append(f'<line x1="{right + 20}" y1="{ly}" x2="{right + 44}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{right + 50}" y="{ly + 4}">{escape(name)} ({escape(last)})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def plot(summary: dict) -> str:
    sizes = summary["sizes"]
    series = {GENERATE + " (outside the total)": [(s["people"], s["generate_s"]) for s in sizes]}
    series.update({name: [(s["people"], s["stages"][name]) for s in sizes] for name in PIPELINE_STAGES})
    info = summary["machine"]
    title = (f"pophealth pipeline, time against population, per stage ({info['date']}, {info['cores']} cores, "
             f"{info['ram_gib']:g} GiB)")
    return svg_plot(series, [(s["people"], s["pipeline_s"]) for s in sizes], title)


# --- the command -----------------------------------------------------------------------------------------------

def rounded(value):
    """Every float to 3 decimals, all the way down: more is noise, and a long run of a float's digits can pass
    the NHS number check digit in a committed file."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def write_outputs(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(rounded(summary), indent=1, sort_keys=False) + "\n")
    (out / "scale.svg").write_text(plot(summary))


def run_scale(sizes: list[int], repeats: int, out: Path, note: str = "", work_mem: str | None = None) -> int:
    """Every size (the small ones `repeats` times), each in a process of its own; then the table, JSON, plot.

    `work_mem` (e.g. "256MB") sets PostgreSQL's work_mem for every connection of the runs (libpq's PGOPTIONS:
    the loader, dbt and Great Expectations alike). Before f048af8, with the default 4 MB, the marts gate's
    person_in_spine rules (then NOT IN a subquery of 1.5 million people) fell back from a hashed subplan to a
    scan of the subquery per row at Essex scale: quadratic, hours."""
    info = machine()
    info["note"] = note or os.environ.get("POPHEALTH_BENCH_NOTE", "")
    info["work_mem"] = work_mem or "PostgreSQL's default (4MB)"
    info["repeats"] = {str(s): (repeats if s < SMALL else 1) for s in sizes}
    print(f"pophealth scale benchmark: {', '.join(f'{s:,}' for s in sizes)} people; {info['cores']} cores, "
          f"{info['ram_gib']:g} GiB, {info['cpu_model']}; load average {info['load_average_at_start'][0]:.1f}",
          flush=True)
    for busy in info["busy_processes_at_start"]:
        print(f"  beside it: {busy}", flush=True)
    runs: list[dict] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="pophealth-scale-") as tmp:
        for size in sizes:
            for repeat in range(repeats if size < SMALL else 1):
                work = Path(tmp) / f"{size}-{repeat}"
                work.mkdir()
                result_file = work / "result.json"
                env = {**os.environ, "POPHEALTH_HOME": str(work / "state")}
                if work_mem:
                    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c work_mem={work_mem}".strip()
                cmd = [sys.executable, "-m", "benchmarks.scale", "--size", str(size), "--work", str(work),
                       "--result", str(result_file), "--pseudo-repeats", "3" if size < SMALL else "0"]
                proc = subprocess.run(cmd, env=env, cwd=REPO, check=False)
                if proc.returncode != 0 or not result_file.exists():
                    failed.append(size)
                    print(f"[{size:,}] run {repeat + 1} FAILED (exit {proc.returncode})", flush=True)
                else:
                    result = json.loads(result_file.read_text())
                    result["repeat"] = repeat + 1
                    runs.append(result)
                shutil.rmtree(work, ignore_errors=True)
                if runs:  # what is measured so far, in case a later size does not finish
                    write_outputs(summarise(runs, info), out)
    if not runs:
        return 1
    summary = summarise(runs, info)
    summary["machine"]["load_average_at_end"] = os.getloadavg()
    write_outputs(summary, out)
    print(table(summary))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.svg'}")
    return 0 if not failed and all(s["tiers_equal_contract"] for s in summary["sizes"]) else 1


def _worker() -> None:
    parser = argparse.ArgumentParser(description="one size of the scale benchmark (run by --scale)")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--pseudo-repeats", type=int, default=0)
    parser.add_argument("--pandas-limit", type=float, default=PANDAS_LIMIT_S)
    args = parser.parse_args()
    if not os.environ.get("POPHEALTH_HOME"):
        raise SystemExit("POPHEALTH_HOME must point at a fresh folder")
    import signal

    # Stopped from outside (a timeout, a closed terminal): still stop this size's embedded PostgreSQL (measure's
    # finally), rather than leave it running without its folder.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda number, frame: sys.exit(128 + number))
    result = measure(args.size, args.work, args.pseudo_repeats, args.pandas_limit)
    args.result.write_text(json.dumps(result))


def resummarise(path: Path) -> None:
    """Summarise the runs kept in a scale.json again (after a change to the summary, the table or the plot:
    the measurements are the same), rewriting it and its plot beside it, and print the table."""
    kept = json.loads(path.read_text())
    summary = summarise(kept["runs"], kept["machine"])
    write_outputs(summary, path.parent)
    print(table(summary))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarise"]:
        resummarise(Path(sys.argv[2]))
    else:
        _worker()
