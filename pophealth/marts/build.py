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

from pophealth import config
from pophealth.warehouse import db

log = logging.getLogger("pophealth")


class DbtFailed(RuntimeError):
    pass


def dbt_executable() -> str:
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_command(args: list[str]) -> subprocess.CompletedProcess:
    paths = config.paths()
    env = {**os.environ, **db.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}
    target = manifest_path().parent
    cmd = [
        dbt_executable(),
        *args,
        "--project-dir",
        str(paths.dbt_project_dir),
        "--profiles-dir",
        str(paths.dbt_project_dir),
        "--target-path",
        str(target),
        "--log-path",
        str(paths.home / "dbt_logs"),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def dbt_build(args: list[str] | tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`dbt build` outside Airflow, after every transit pseudonym has its published ids (identity/purposes.py),
    as the marts DAG's check_loads does first. Raises PublishedIdsRefused without the purpose keys."""
    from pophealth.identity.purposes import assign_purpose_pseudonyms, record_optouts_by_purpose

    assign_purpose_pseudonyms()
    proc = dbt_command(["build", *args])
    if proc.returncode == 0:
        record_optouts_by_purpose()
    return proc


def manifest_path() -> Path:
    return config.paths().home / "dbt_target" / "manifest.json"


def parse_project() -> Path:
    """`dbt parse`: the manifest the marts DAG is rendered from, so parsing the DAG never runs dbt."""
    proc = dbt_command(["parse"])
    if proc.returncode != 0 or not manifest_path().exists():
        raise DbtFailed("dbt parse failed:\n" + _tail(proc.stdout + proc.stderr))
    return manifest_path()


def warehouse_for_dbt(context: object = None) -> None:
    """Before each dbt task (Cosmos runs dbt in the task's own process): the variables dbt_project/profiles.yml
    reads, from the warehouse this process is given (POPHEALTH_DATABASE_URL, its password file, or the embedded
    server), set in the task's process alone, the password masked in its log. A deployment then needs to give its
    workers only what the rest of the platform reads (docker-compose.yml's POPHEALTH_DATABASE_PASSWORD_FILE)."""
    found = db.dbt_env()
    if found.get("POPHEALTH_DB_PASSWORD"):
        from airflow.sdk.log import mask_secret

        mask_secret(found["POPHEALTH_DB_PASSWORD"])
    os.environ.update(found)


def record_run_results(project_dir: str, context: dict | None = None, **_: object) -> None:
    """Cosmos callback after each dbt task: keep each node's result in audit.dbt_result and the task log."""
    run_results = Path(project_dir) / "target" / "run_results.json"
    if not run_results.exists():
        return
    results = json.loads(run_results.read_text())["results"]
    run_id = (context or {}).get("run_id")
    for result in results:
        log.info("dbt %-7s %-70s %6.2fs", result["status"], result["unique_id"], result.get("execution_time") or 0)
    _record(results, run_id)
    _keep_built_manifest(Path(project_dir) / "target" / "manifest.json")


def built_manifest_path() -> Path:
    """The manifest of the last build, with every model's compiled SQL, named as published (column lineage reads it)."""
    return config.paths().home / "dbt_target" / "built_manifest.json"


def _keep_built_manifest(built: Path) -> None:
    """Keep the build's manifest (Cosmos builds in a folder of its own, gone after the task): the column lineage
    after the publish reads it rather than running `dbt compile` again (~15 s). The build made the candidate
    schemas, which the publish renames: so are they here."""
    from pophealth.quality.marts_gate import CANDIDATE, PUBLISHED

    if not built.exists():
        return
    text = built.read_text()
    for schema in PUBLISHED:
        text = text.replace(f'"{schema}{CANDIDATE}"', f'"{schema}"').replace(f"{schema}{CANDIDATE}", schema)
    config.write_whole(built_manifest_path(), text)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _record(results: list[dict], run_id: str | None) -> None:
    with db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.dbt_result (run_id, unique_id, resource_type, status, execution_time,
                                                 rows_affected, failures, message)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (
                        run_id,
                        r["unique_id"],
                        r["unique_id"].split(".")[0],
                        r["status"],
                        r.get("execution_time"),
                        (r.get("adapter_response") or {}).get("rows_affected"),
                        r.get("failures"),
                        (r.get("message") or "")[:500],
                    )
                    for r in results
                ],
            )
