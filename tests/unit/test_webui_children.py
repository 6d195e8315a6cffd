"""`pophealth ui`: its children (Airflow's api-server, scheduler and dag-processor) end when it ends, even when it
is killed by SIGKILL, which it cannot handle: none is left running, holding the UI's port. On a real warehouse it
needs Airflow's metadata in PostgreSQL, and says so before it starts anything."""

import os
import signal
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import subprocess, sys
    from pophealth.operate.airflow_runner import dies_with_parent
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
                             preexec_fn=dies_with_parent)
    print(child.pid, flush=True)
    child.wait()
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has ended: only its exit status is left
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_a_child_started_by_the_ui_ends_when_the_ui_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_ui_on_a_real_warehouse_asks_for_a_postgresql_metadata_database_before_touching_anything(tmp_path):
    from pophealth import config
    from pophealth.operate import webui
    from pophealth.warehouse import db

    said: list[str] = []
    with config.environment(
        POPHEALTH_HOME=str(tmp_path),
        POPHEALTH_AIRFLOW_DATABASE_URL=None,
        POPHEALTH_DATABASE_URL="postgresql://owner:s3cret@127.0.0.1:9/pophealth",
    ):
        assert db.airflow_metadata_url().startswith("sqlite")
        assert webui.serve(port=0, say=said.append) == 2
        assert said and "POPHEALTH_AIRFLOW_DATABASE_URL" in said[0] and "s3cret" not in said[0]
        assert list(tmp_path.iterdir()) == []  # nothing was started or written
    with config.environment(POPHEALTH_AIRFLOW_DATABASE_URL="postgresql://owner:s3cret@db.example:5432/airflow"):
        assert db.airflow_metadata_url() == "postgresql+psycopg2://owner:s3cret@db.example:5432/airflow"
