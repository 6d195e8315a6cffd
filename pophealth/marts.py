"""Building the marts: `dbt build` on the project in `dbt_project/`, and its results kept in `audit.dbt_result`.

dbt runs as a subprocess of the task so that its own logging and global state stay out of Airflow's; its
`run_results.json` is then read back so each model and test shows, with its status and time, in the task
log and in the audit schema.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pophealth import config, db

log = logging.getLogger("pophealth")

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS audit.dbt_result (
    run_id          text,
    unique_id       text NOT NULL,
    resource_type   text NOT NULL,
    status          text NOT NULL,
    execution_time  double precision,
    rows_affected   bigint,
    failures        bigint,
    message         text,
    recorded_at     timestamptz NOT NULL DEFAULT now()
)
"""


class DbtFailed(RuntimeError):
    pass


def dbt_executable() -> str:
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_command(args: list[str], target_path: Path | None = None) -> subprocess.CompletedProcess:
    paths = config.paths()
    env = {**os.environ, **db.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}
    target = target_path or paths.home / "dbt_target"
    cmd = [dbt_executable(), *args, "--project-dir", str(paths.dbt_project_dir),
           "--profiles-dir", str(paths.dbt_project_dir), "--target-path", str(target),
           "--log-path", str(paths.home / "dbt_logs")]
    as_of = os.environ.get("POPHEALTH_AS_OF_DATE")
    if as_of and args and args[0] in ("build", "run", "test", "seed"):
        cmd += ["--vars", json.dumps({"as_of_date": as_of})]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def dbt_build(run_id: str | None = None) -> dict:
    target = config.paths().home / "dbt_target"
    run_results = target / "run_results.json"
    run_results.unlink(missing_ok=True)
    proc = dbt_command(["build"], target)
    results = json.loads(run_results.read_text())["results"] if run_results.exists() else []
    _record(results, run_id)
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        log.info("dbt %-7s %-70s %6.2fs", result["status"], result["unique_id"], result.get("execution_time") or 0)
    failed = [r for r in results if r["status"] in ("error", "fail")]
    if proc.returncode != 0 or failed:
        detail = "\n".join(f"  {r['status']}: {r['unique_id']}: {(r.get('message') or '').splitlines()[0] if r.get('message') else ''}"
                           for r in failed) or _tail(proc.stdout + proc.stderr)
        raise DbtFailed(f"dbt build failed; the marts keep their last good state where a model failed:\n{detail}")
    return counts


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _record(results: list[dict], run_id: str | None) -> None:
    with db.connect() as conn:
        conn.execute(AUDIT_DDL)
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.dbt_result (run_id, unique_id, resource_type, status, execution_time,
                                                 rows_affected, failures, message)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (run_id, r["unique_id"], r["unique_id"].split(".")[0], r["status"], r.get("execution_time"),
                     (r.get("adapter_response") or {}).get("rows_affected"), r.get("failures"),
                     (r.get("message") or "")[:500])
                    for r in results
                ],
            )
