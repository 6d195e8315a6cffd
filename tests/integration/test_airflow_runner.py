"""The runner behind `pophealth run`: every DAG of a run in one Airflow process, one after another, each with its
own outcome and log; a DAG that takes its process down is reported crashed, and the DAGs after it still run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.conftest import isolated_env

DAGS = {
    "dies.py": """
        import os
        from datetime import datetime
        from airflow.sdk import dag, task

        @dag(dag_id="dies", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
        def dies():
            @task
            def exit_the_process():
                os._exit(3)  # what a segfault or the out-of-memory killer does: no exception, no result
            exit_the_process()

        dies()
    """,
    "lives.py": """
        from datetime import datetime
        from airflow.sdk import dag, task

        @dag(dag_id="lives", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
        def lives():
            @task
            def say_so():
                print("lives ran")
            say_so()

        lives()
    """,
}

RUN = """
    import json, sys
    from pathlib import Path
    from pophealth.operate.airflow_runner import ensure_metadata_db, run_dags
    ensure_metadata_db()
    started, finished = [], []
    outcomes = run_dags(sys.argv[3:], Path(sys.argv[1]), {"AIRFLOW__CORE__DAGS_FOLDER": sys.argv[2]},
                        on_start=started.append, on_finish=lambda o: finished.append(o.dag_id))
    print(json.dumps({"outcomes": [[o.dag_id, o.state, o.log_file.name] for o in outcomes],
                      "started": started, "finished": finished}))
"""


def _run_dags(tmp_path, script: str, logs, dags, *names: str, extra_env: dict[str, str] | None = None) -> dict:
    """Run the runner's script on the DAG folder in a process of its own, its home under `tmp_path`; what it said
    (its last line, JSON). The embedded server the script started is stopped after it: left running, it outlived
    the test run."""
    env = {**isolated_env(tmp_path), **(extra_env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(logs), str(dags), *names],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop = "from pophealth.warehouse import db; db.stop_embedded()"
        subprocess.run([sys.executable, "-c", stop], env=env, check=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_each_dag_has_its_outcome_and_log_and_a_crash_does_not_stop_the_next(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    for name, text in DAGS.items():
        (dags / name).write_text(textwrap.dedent(text))
    logs = tmp_path / "logs"
    said = _run_dags(tmp_path, textwrap.dedent(RUN), logs, dags, "lives", "dies", "no_such_dag", "lives")
    assert said["outcomes"] == [
        ["lives", "success", "lives.log"],
        ["dies", "crashed (exit 3)", "dies.log"],  # its process went; a new one ran the rest
        ["no_such_dag", "not run (no such DAG)", "no_such_dag.log"],
        ["lives", "success", "lives.log"],
    ]
    assert said["started"] == said["finished"] == ["lives", "dies", "no_such_dag", "lives"]
    assert "lives ran" in (logs / "lives.log").read_text()
    # The DAGs' tasks were served by the in-process execution API made for the newest versions of its protocol
    # only (_latest_execution_api_versions), not by the fallback to every version: both children said so.
    said_by_children = (logs / "runner.log").read_text()
    assert said_by_children.count("in-process execution API: made for the newest 2 versions") == 2, said_by_children
    # Nothing of the run is left running: a worker forked inside the child that died used to wait for ever.
    assert _processes_naming(logs) == []


def _processes_naming(path) -> list[str]:
    left = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile, or not a process
            continue
        if str(path) in argv:
            left.append(argv)
    return left


COUNTED = """
    import os
    from datetime import datetime
    from airflow.sdk import dag, task

    with open(os.environ["PARSES_FILE"], "a") as parses:
        parses.write("parsed\\n")

    for name in ("first", "second"):
        @dag(dag_id=name, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
        def counted():
            @task
            def say_so():
                print("ran")
            say_so()

        counted()
"""


def test_the_dag_folder_is_parsed_once_for_every_dag_of_the_run(tmp_path):
    """dag.test() parses the whole folder for each DAG it runs (Cosmos rendering build_marts each time); the
    runner's process parses it once, and every DAG still runs from the metadata database it is written to."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "counted.py").write_text(textwrap.dedent(COUNTED))
    parses = tmp_path / "parses.txt"
    run = textwrap.dedent(RUN).replace(
        '{"AIRFLOW__CORE__DAGS_FOLDER": sys.argv[2]}',
        f'{{"AIRFLOW__CORE__DAGS_FOLDER": sys.argv[2], "PARSES_FILE": "{parses}"}}',
    )
    said = _run_dags(tmp_path, run, tmp_path / "logs", dags, "first", "second", "first")
    assert [o[1] for o in said["outcomes"]] == ["success"] * 3
    assert parses.read_text().splitlines() == ["parsed"]  # once, not once more for each of the three runs


PREPARED = """
    import os, time
    from datetime import datetime
    from airflow.sdk import dag, task

    with open(os.environ["PARSES_FILE"], "a") as parses:
        parses.write(f"parsed {time.time()}\\n")

    @dag(dag_id="needs_prepare", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
    def needs_prepare():
        @task
        def check():
            with open(os.environ["PARSES_FILE"]) as parses:
                assert any(line.startswith("prepared") for line in parses), "the DAG ran before prepare ended"
        check()

    needs_prepare()
"""

RUN_WITH_PREPARE = """
    import json, os, sys, time
    from pathlib import Path
    from pophealth.operate.airflow_runner import ensure_metadata_db, run_dags

    def prepare():
        ensure_metadata_db()
        # Until the child has parsed the folder (at most 2 minutes): whatever the machine's load, the parse then
        # happened while this still ran; without the warm-up it never comes, and the test fails after the wait.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(os.environ["PARSES_FILE"]) and "parsed" in open(os.environ["PARSES_FILE"]).read():
                break
            time.sleep(0.1)
        if os.environ.get("PREPARE_FAILS"):
            raise RuntimeError("the metadata database could not be migrated")
        with open(os.environ["PARSES_FILE"], "a") as parses:
            parses.write(f"prepared {time.time()}\\n")

    started = []
    try:
        outcomes = run_dags(sys.argv[3:], Path(sys.argv[1]), {"AIRFLOW__CORE__DAGS_FOLDER": sys.argv[2]},
                            on_start=started.append, prepare=prepare)
        said = {"outcomes": [[o.dag_id, o.state] for o in outcomes], "started": started}
    except RuntimeError as exc:
        said = {"raised": str(exc), "started": started}
    print(json.dumps(said))
"""


def test_the_child_parses_the_dags_while_the_database_is_prepared_and_runs_them_after(tmp_path):
    """`pophealth run` migrates Airflow's metadata database while the runner's child imports Airflow and parses
    the DAG folder (they overlap on two cores); no DAG starts before the migration has ended."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "prepared.py").write_text(textwrap.dedent(PREPARED))
    parses = tmp_path / "parses.txt"
    run = f"import os; os.environ['PARSES_FILE'] = '{parses}'\n" + textwrap.dedent(RUN_WITH_PREPARE)
    said = _run_dags(tmp_path, run, tmp_path / "logs", dags, "needs_prepare")
    assert said == {"outcomes": [["needs_prepare", "success"]], "started": ["needs_prepare"]}
    (parsed, parsed_at), (prepared, prepared_at) = (line.split() for line in parses.read_text().splitlines())
    assert (parsed, prepared) == ("parsed", "prepared")
    assert float(parsed_at) < float(prepared_at)  # parsed once, while prepare still ran


def test_when_preparing_fails_no_dag_runs_and_nothing_is_left_running(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "prepared.py").write_text(textwrap.dedent(PREPARED))
    parses = tmp_path / "parses.txt"
    logs = tmp_path / "logs"
    run = f"import os; os.environ.update(PARSES_FILE='{parses}', PREPARE_FAILS='1')\n" + textwrap.dedent(
        RUN_WITH_PREPARE
    )
    said = _run_dags(tmp_path, run, logs, dags, "needs_prepare")
    assert said == {"raised": "the metadata database could not be migrated", "started": []}
    assert not (logs / "needs_prepare.log").exists()
    assert _processes_naming(logs) == []


MIGRATED = """
    import json, sys
    from pathlib import Path
    from pophealth.operate import airflow_runner
    from pophealth.warehouse import db

    copy = airflow_runner._migrated_copy(airflow_runner.airflow_env())
    kept_before = copy.exists()
    airflow_runner.ensure_metadata_db()
    outcomes = airflow_runner.run_dags(["lives"], Path(sys.argv[1]), {"AIRFLOW__CORE__DAGS_FOLDER": sys.argv[2]})
    import psycopg
    with psycopg.connect(db.warehouse().with_db(db.AIRFLOW_DB).url()) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        # when the migration wrote its rows: a home that migrated for itself has its own time here
        migrated_at = str(conn.execute("SELECT min(created_at) FROM log_template").fetchone()[0])
    print(json.dumps({"copy": copy.name, "kept_before": kept_before, "kept_after": copy.exists(),
                      "states": [o.state for o in outcomes], "tables": tables, "version": version,
                      "migrated_at": migrated_at}))
"""


def test_a_new_home_takes_a_kept_copy_of_the_migrated_metadata_database_and_airflow_runs_on_it(tmp_path):
    """The first new home on a machine migrates Airflow's metadata database and keeps a copy of it (the user's
    cache); the next new home loads that copy instead of migrating, and has the same tables at the same version,
    on which a DAG runs."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "lives.py").write_text(textwrap.dedent(DAGS["lives.py"]))
    cache = tmp_path / "cache"
    first, second = (
        _run_dags(
            tmp_path / home,
            textwrap.dedent(MIGRATED),
            tmp_path / home / "logs",
            dags,
            extra_env={"XDG_CACHE_HOME": str(cache)},
        )
        for home in ("first", "second")
    )
    assert (first["kept_before"], first["kept_after"], second["kept_before"]) == (False, True, True)
    assert first["copy"] == second["copy"]  # the same name in both homes: nothing of a home is in it
    assert [p.name for p in (cache / "pophealth").iterdir()] == [first["copy"]]
    assert second["tables"] == first["tables"] and len(first["tables"]) > 30
    assert second["version"] == first["version"]
    assert second["migrated_at"] == first["migrated_at"]  # the copy's rows: the second home did not migrate
    assert first["states"] == second["states"] == ["success"]
