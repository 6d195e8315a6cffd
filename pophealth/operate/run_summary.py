"""What a run tells its user at the end: where the results are, how many people, how many linked, the gates."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row, tuple_row

from pophealth.operate.pipeline import PipelineOutcome
from pophealth.reports.coverage import coverage_lines
from pophealth.warehouse import db


def _count(conn, query: str) -> int | None:
    try:
        return conn.cursor(row_factory=tuple_row).execute(query).fetchone()[0]
    except psycopg.errors.UndefinedTable:  # not built yet (the first run failed before it)
        conn.rollback()
        return None


def _fmt(n) -> str:
    return "-" if n is None else f"{n:,}"


def _not_extracts(landing) -> list[tuple[str, str]]:
    """The landing folder's files that are not extracts of the contract, with why (never loaded)."""
    from pathlib import Path

    from pophealth.ingest.landing import FileRejected, scan

    try:
        return scan(Path(landing)).not_extracts() if landing else []
    except FileRejected:
        return []


def summarise(outcome: PipelineOutcome) -> str:
    not_extracts = _not_extracts(outcome.landing)
    lines = [
        "",
        f"pophealth run {'finished' if outcome.succeeded else 'FAILED'} in {outcome.seconds:.0f} s"
        + (
            f", but {len(not_extracts)} file(s) in the landing folder were NOT LOADED: they are not extracts of the "
            "contract (listed below)"
            if not_extracts
            else ""
        ),
        f"  landing folder: {outcome.landing}",
        f"  Airflow logs:   {outcome.log_dir}",
        "",
        "DAG runs (Airflow):",
    ]
    for dag in outcome.dags:
        lines.append(f"  {dag.dag_id:<30} {dag.state:<10} {dag.seconds:6.1f} s")
        for task in dag.failed_tasks:
            index = f"[{task['map_index']}]" if task["map_index"] >= 0 else ""
            lines.append(f"      task {task['task_id']}{index}: {task['state']}")
    with db.connect() as conn:
        conn.row_factory = dict_row
        loads = conn.execute(
            """SELECT feed, file_name, status, rows_read, rows_loaded, rows_quarantined, rows_opted_out, message
               FROM audit.load WHERE started_at >= %s ORDER BY load_id""",
            (outcome.started_at,),
        ).fetchall()
        # One line per feed and verdict (a county's year is hundreds of files); refused files one by one.
        totals: dict[tuple[str, str], list[int]] = {}
        for load in loads:
            row = totals.setdefault((load["feed"], load["status"]), [0, 0, 0, 0, 0])
            for i, column in enumerate(("rows_read", "rows_loaded", "rows_quarantined", "rows_opted_out")):
                row[i + 1] += load[column]
            row[0] += 1
        lines += [
            "",
            "Loads this run (audit.load; every row is loaded or quarantined; 'opt-out': of the loaded rows, "
            "people with a national data opt-out, kept for their direct care only):",
            f"  {'feed':<22} {'status':<12} {'files':>5} {'read':>10} {'loaded':>10} {'quarant.':>9} {'opt-out':>8}",
        ]
        for (feed, status), (files, read, loaded, quarantined, opted_out) in totals.items():
            lines.append(
                f"  {feed:<22} {status:<12} {files:>5,} {read:>10,} {loaded:>10,} {quarantined:>9,} {opted_out:>8,}"
            )
        for load in loads:
            if load["status"] in ("rejected", "gate_failed", "failed", "stale") and load["message"]:
                lines.append(f"  {'FAILED' if load['status'] == 'failed' else 'REFUSED'} {load['file_name']}:")
                lines += ["      " + m for m in load["message"].splitlines()[:12]]
        if not loads:
            lines.append("  (no new or changed files: everything in the landing folder was already published)")
        if not_extracts:
            lines += ["", "NOT LOADED: files in the landing folder that are not extracts of the contract:"]
            lines += [f"  {name}: {why}" for name, why in not_extracts]
        gates = conn.execute(
            """SELECT status, severity, count(*) AS n FROM audit.gate_result WHERE checked_at >= %s
               GROUP BY 1, 2""",
            (outcome.started_at,),
        ).fetchall()
        tally = {"passed": 0, "failed (error)": 0, "failed (warn)": 0, "not applicable": 0}
        for g in gates:
            label = f"failed ({g['severity']})" if g["status"] == "failed" else g["status"].replace("_", " ")
            tally[label] = tally.get(label, 0) + g["n"]
        gate_text = (
            ", ".join(f"{n:,} {label}" for label, n in tally.items()) + " checks"
            if gates
            else "no gate ran (no new files)"
        )
        lines += ["", f"Quality gates (audit.gate_result): {gate_text}", ""]
        coverage, notices = coverage_lines(conn)
        lines += coverage + [f"  Note: {n}" for n in notices]
        people = _count(conn, "SELECT count(*) FROM marts.person")
        linked = _count(conn, "SELECT count(*) FROM marts.person WHERE is_linked")
        registered = _count(conn, "SELECT count(*) FROM marts.person WHERE is_registered")
        methods = []
        if people is not None:
            methods = conn.execute(
                "SELECT link_method, count(*) AS n FROM marts.person GROUP BY 1 ORDER BY 1"
            ).fetchall()
        lines += [
            "",
            f"Where the results are (warehouse {db.warehouse_shown()}):",
            f"  marts.person          {_fmt(people)} people, {_fmt(registered)} registered, "
            f"{_fmt(linked)} linked (in both hospital and social care data)",
        ]
        if methods:
            lines.append(
                "                        by link method: "
                + ", ".join(f"{m['link_method']} {m['n']:,}" for m in methods)
            )
        lines += _marts_lines(conn)
        lines += _geography_lines(conn)
        for table in ("raw.gp_register", "raw.apc_episode", "raw.cld_event", "raw.ref_population"):
            lines.append(f"  {table:<21} {_fmt(_count(conn, f'SELECT count(*) FROM {table}'))} rows")
        lines += [
            "  schemas: raw (pseudonymised loads), staging, intermediate, marts (analysts), reference (code lists),",
            "           reporting (aggregates with disclosure control, for wide circulation),",
            "           direct_care (case finding for the care teams, opt-outs included; care_team only),",
            "           audit (load, quarantine, optout_by_purpose, gate_result, dbt_result, reidentification,",
            "           key_rotation, column_lineage), restricted (the opt-out list, the purpose mapping; owner",
            "           only), vault (encrypted identities; no analyst access)",
            "  next: pophealth status (what loaded, what waits), pophealth ig-report (the IG audit), ./dev.sh ui",
        ]
    return "\n".join(lines)


def _geography_lines(conn) -> list[str]:
    """Councils or localities whose metrics cannot be computed, said rather than left out (issue 18)."""
    from pophealth.reports.geographies import geography_problems

    problems = geography_problems(conn)
    return (
        (
            ["", "GEOGRAPHIES THAT CANNOT BE COMPUTED (pophealth status lists them too):"]
            + [f"  - {p}" for p in problems]
        )
        if problems
        else []
    )


def _marts_lines(conn) -> list[str]:
    """The risk pyramid and the latest financial year's BCF metrics for the area, when the marts exist."""
    if _count(conn, "SELECT count(*) FROM marts.risk_stratification") is None:
        return []
    tiers = {
        r["risk_tier"]: r["people"]
        for r in conn.execute(
            "SELECT risk_tier, count(*) AS people FROM marts.risk_stratification GROUP BY 1"
        ).fetchall()
    }
    evaluation = conn.execute(
        "SELECT model_version, c_statistic FROM marts.risk_model_evaluation WHERE risk_tier = 'all'"
    ).fetchone()
    lines = [
        f"  marts.risk_stratification  {_fmt(sum(tiers.values()))} people: "
        + " / ".join(f"{tier} {_fmt(tiers.get(tier, 0))}" for tier in ("very_high", "high", "moderate", "low"))
    ]
    if evaluation:
        lines.append(
            f"                        risk model version {evaluation['model_version']}, c-statistic "
            f"{evaluation['c_statistic']} on a later year (marts.risk_model_evaluation)"
        )
    metrics = conn.execute(
        """SELECT metric_code, geography_level, geography_code, value, period_start, period_end, is_final
           FROM marts.bcf_metrics
           WHERE geography_level IN ('area', 'local_authority') AND period_start = (
               SELECT max(period_start) FROM marts.bcf_metrics WHERE period_end - period_start > 300)
             AND period_end - period_start > 300 ORDER BY metric_code, geography_level, geography_code"""
    ).fetchall()
    if metrics:
        places = list(dict.fromkeys(m["geography_code"] for m in metrics))
        values = {(m["metric_code"], m["geography_code"]): m for m in metrics}
        lines.append(
            f"  marts.bcf_metrics     financial year {metrics[0]['period_start']} to "
            f"{metrics[0]['period_end']}, the whole area and each council (* provisional):"
        )
        lines.append(f"                        {'':<28} " + " ".join(f"{p:>12}" for p in places))
        for code in dict.fromkeys(m["metric_code"] for m in metrics):
            shown = []
            for place in places:
                m = values.get((code, place))
                text = "-" if m is None or m["value"] is None else f"{m['value']:.1f}" + ("" if m["is_final"] else "*")
                shown.append(f"{text:>12}")
            lines.append(f"                        {code:<28} " + " ".join(shown))
    return lines
