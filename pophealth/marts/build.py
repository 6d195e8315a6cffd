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
from typing import NamedTuple

from pophealth import config
from pophealth.warehouse import db

log = logging.getLogger("pophealth")


class DbtFailed(RuntimeError):
    pass


#: dbt's own log file keeps what a data engineer reads (each node's start, result and error) and leaves out the debug
#: events (every query's text, every connection's open and close): writing those cost a tenth of a `dbt build`'s CPU
#: (1.0-1.4 s of 11-13 s on 300 people, issue 19). The compiled SQL of every node stays in the target folder.
FILE_LOG = ("--log-level-file", "info")


def dbt_executable() -> str:
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_command(args: list[str], target: Path | None = None, echo: bool = False) -> subprocess.CompletedProcess:
    """dbt in a process of its own, writing to `target` (by default the folder of the parsed manifest). With
    `echo`, each line dbt prints is logged as it comes (a build's progress in its task log), and still returned."""
    paths = config.paths()
    env = {**os.environ, **db.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}
    target = target or manifest_path().parent
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
        *FILE_LOG,
    ]
    if not echo:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("dbt: %s", line.rstrip())
            lines.append(line)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def dbt_build(args: list[str] | tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`dbt build` outside Airflow, after every transit pseudonym has its published ids (identity/purposes.py),
    as the marts DAG's check_loads does first. Raises PublishedIdsRefused without the purpose keys."""
    from pophealth.identity.purposes import assign_purpose_pseudonyms, record_optouts_by_purpose

    assign_purpose_pseudonyms()
    proc = dbt_command(["build", *args])
    if proc.returncode == 0:
        record_optouts_by_purpose()
    return proc


#: The dbt project's layers in build order, by the folder a model is in (seeds apart): the marts DAG shows each as
#: one task (POPHEALTH_DBT_TASKS=layer), with every seed, model and test of it and its result from the one build.
LAYERS = ("seeds", "staging", "intermediate", "marts", "direct_care", "reporting")

#: What dbt reports of a node that built or passed (an exposure has nothing to build: no-op); anything else (error,
#: fail, skipped, a status dbt adds later) fails the node's layer.
PASSED = frozenset({"success", "pass", "warn", "no-op"})


def build_target() -> Path:
    """Where the marts DAG's `dbt build` writes (its manifest, results, partial parse): its own folder, so that
    the parsed manifest and `pophealth status`'s record of a build outside Airflow stay as they are."""
    return config.paths().home / "dbt_build"


def layer_of(unique_id: str, nodes: dict[str, dict]) -> str:
    """The layer a node's result is shown in: a seed's is `seeds`; a model's, its folder under models/; a test's,
    that of the model it is attached to, or of the last layer among the models it reads (a test of sources only is
    staging's, which reads them). A model in another folder gives that folder's name, which is no layer: the build
    then fails (results_by_layer) rather than leave it unshown. An exposure is shown with the models it reads."""
    node = nodes[unique_id]
    kind = node["resource_type"]
    if kind == "seed":
        return "seeds"
    if kind == "model":
        return node["fqn"][1] if len(node["fqn"]) > 2 else "models"
    parents = [node.get("attached_node")] if node.get("attached_node") in nodes else node["depends_on"]["nodes"]
    layers = [layer_of(p, nodes) for p in parents if p in nodes and nodes[p]["resource_type"] != "test"]
    return max(layers, key=lambda n: LAYERS.index(n) if n in LAYERS else len(LAYERS)) if layers else "staging"


class NodeResult(NamedTuple):
    """One node's outcome in a build, as the layer's task shows it: no message (a database error may quote a
    value; the message is kept in audit.dbt_result, which analysts cannot read)."""

    name: str
    resource_type: str
    status: str
    seconds: float
    failures: int | None


def results_by_layer(target: Path) -> dict[str, list[NodeResult]] | None:
    """Each node's result of the build that wrote `target`, by layer (None when dbt wrote no results: it stopped
    before running a node). Raises DbtFailed for a node in no layer, so that none goes unshown."""
    run_results = target / "run_results.json"
    if not run_results.exists():
        return None
    results = json.loads(run_results.read_text())["results"]
    manifest = json.loads((target / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest.get("exposures", {})}  # an exposure is a build's node too (a no-op)
    by_layer: dict[str, list[NodeResult]] = {layer: [] for layer in LAYERS}
    for result in results:
        if result["unique_id"] not in nodes:
            raise DbtFailed(f"dbt reported a result for {result['unique_id']}, which its manifest does not hold")
        layer = layer_of(result["unique_id"], nodes)
        if layer not in by_layer:
            raise DbtFailed(
                f"dbt node {result['unique_id']} is in models/{layer}/, which has no task in the marts DAG: "
                "add the folder to pophealth.marts.build.LAYERS"
            )
        by_layer[layer].append(
            NodeResult(
                nodes[result["unique_id"]]["name"],
                nodes[result["unique_id"]]["resource_type"],
                result["status"],
                round(result.get("execution_time") or 0.0, 2),
                result.get("failures"),
            )
        )
    return by_layer


def manifest_path() -> Path:
    return config.paths().home / "dbt_target" / "manifest.json"


def parse_project() -> Path:
    """`dbt parse`: the manifest the marts DAG is rendered from, so parsing the DAG never runs dbt.

    Skipped when the manifest is the one the last parse wrote from the same project files and settings
    (`pophealth run` parses before every run: starting dbt to find nothing changed cost 3-5 s, issue 19)."""
    manifest = manifest_path()
    stamp = manifest.with_name("manifest.parsed")
    inputs = _parse_inputs()
    if manifest.exists() and stamp.exists() and stamp.read_text() == f"{inputs} {_file_state(manifest)}\n":
        return manifest
    stamp.unlink(missing_ok=True)
    proc = dbt_command(["parse"])
    if proc.returncode != 0 or not manifest.exists():
        raise DbtFailed("dbt parse failed:\n" + _tail(proc.stdout + proc.stderr))
    config.write_whole(stamp, f"{inputs} {_file_state(manifest)}\n")
    return manifest


#: What dbt writes inside the project folder, not read by a parse.
_NOT_PARSED = frozenset({"target", "logs", "dbt_packages", "__pycache__"})


def _parse_inputs() -> str:
    """A digest of what a parse reads: every file of the project, dbt's version, and the settings the project
    reads (profiles.yml's warehouse, the as-of date; the password left out: no parse depends on it)."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256()
    project = config.paths().dbt_project_dir
    for path in sorted(project.rglob("*")):
        if path.is_file() and not _NOT_PARSED & set(path.relative_to(project).parts):
            digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes() + b"\0")
    settings = {k: v for k, v in db.dbt_env().items() if k != "POPHEALTH_DB_PASSWORD"}
    settings["POPHEALTH_AS_OF_DATE"] = os.environ.get("POPHEALTH_AS_OF_DATE", "")
    settings["dbt"] = version("dbt-core") + " " + dbt_executable()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _file_state(path: Path) -> str:
    """The manifest as the parse left it: another dbt command writing to the same folder (a build, the docs)
    rewrites it, and then the next run parses again."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


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
    keep_build_results(Path(project_dir) / "target", (context or {}).get("run_id"))


def keep_build_results(target: Path, run_id: str | None) -> None:
    """After a dbt command, from its target folder: each node's result in audit.dbt_result and the log, and the
    build's manifest for the column lineage (`built_manifest_path`). The benchmarks' bare pipeline calls it too,
    so that it does the product work the marts DAG does."""
    run_results = target / "run_results.json"
    if not run_results.exists():
        return
    results = json.loads(run_results.read_text())["results"]
    for result in results:
        log.info("dbt %-7s %-70s %6.2fs", result["status"], result["unique_id"], result.get("execution_time") or 0)
    _record(results, run_id)
    _keep_built_manifest(target / "manifest.json")


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
