"""The data engineer's day in a browser: `pophealth ui` on the end-to-end world, driven by headless Chromium.

Logs in, sees every DAG, opens a completed run's task graph, and sees a failed quality gate as a failed task with
its message. The failed gate is a real run by the UI's own scheduler (Trigger, through Airflow's REST API) on a
copy of the landing folder with a broken hospital resubmission: runs by `pophealth dag` (dag.test) keep their
log in POPHEALTH_HOME/runs, not where the UI reads task logs. The same failure reaches a webhook and an SMTP
server on 127.0.0.1. At the end the good file is delivered again, so later tests see a good world.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.chromium import ARGS, CHROMIUM, require_chromium
from tests.integration.conftest import break_one_hospital_file
from tests.integration.listeners import RECIPIENT, listening

EVERY_DAG = [
    "build_marts",
    "ingest_apc",
    "ingest_cld",
    "ingest_gp_register",
    "ingest_optouts",
    "ingest_ref_population",
    "ingest_ref_postcode_lookup",
]
UI_START_SECONDS = 300
RUN_SECONDS = 300
STEP_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(base: str, method: str, path: str, body=None, token: str | None = None) -> dict:
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def _wait_for_line(log: Path, proc: subprocess.Popen, pattern: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if match := re.search(pattern, text):
            return match.group(0)
        assert proc.poll() is None, f"pophealth ui exited:\n{text[-3000:]}"
        time.sleep(1)
    raise AssertionError(f"pophealth ui not ready in {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def inbox():
    with listening() as box:
        yield box


def test_the_airflow_ui_shows_every_dag_a_run_graph_and_a_failed_gate_with_its_message(world, tmp_path, inbox):
    require_chromium("the Airflow UI")
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    landing = tmp_path / "landing"
    shutil.copytree(world.landing, landing, ignore=shutil.ignore_patterns("answer_key"))
    apc = break_one_hospital_file(landing)
    port = _free_port()
    env = {**world.env, **inbox.env()}
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "pophealth.cli", "ui", "--port", str(port), "--landing", str(landing)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    page = None
    try:
        ready = _wait_for_line(log, ui, r"Airflow UI ready in \d+ s", UI_START_SECONDS)
        ui_ready_seconds = time.monotonic() - started
        password_file = Path(re.search(r"the password is in (\S+)", log.read_text()).group(1))
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        password = json.loads(password_file.read_text())["admin"]
        assert password not in log.read_text()  # the login is in the file, never on the screen

        token = _api(base, "POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
        completed = _api(
            base, "GET", "/api/v2/dags/build_marts/dagRuns?state=success&order_by=-start_date&limit=1", token=token
        )["dag_runs"][0]["dag_run_id"]
        # The failing run, by the UI's own scheduler: a manual run takes the broken resubmission at once.
        _api(base, "PATCH", "/api/v2/dags/ingest_apc", {"is_paused": False}, token)
        failing = _api(base, "POST", "/api/v2/dags/ingest_apc/dagRuns", {"logical_date": None}, token)["dag_run_id"]
        deadline = time.monotonic() + RUN_SECONDS
        while (state := _api(base, "GET", f"/api/v2/dags/ingest_apc/dagRuns/{failing}", token=token)["state"]) not in (
            "success",
            "failed",
        ):
            assert time.monotonic() < deadline, f"the ingest_apc run is still {state} after {RUN_SECONDS} s"
            time.sleep(2)
        assert state == "failed"
        _api(base, "PATCH", "/api/v2/dags/ingest_apc", {"is_paused": True}, token)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(STEP_MS)
                page.goto(base + "/")
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", password)
                page.click("button:has-text('Sign in')")
                page.wait_for_url(re.compile(rf"^{re.escape(base)}/(?!auth)"))

                page.goto(base + "/dags")
                page.wait_for_selector("text=build_marts")
                listed = page.inner_text("body")
                assert [d for d in EVERY_DAG if d not in listed] == []

                page.goto(f"{base}/dags/build_marts/runs/{completed}/")
                page.click("[aria-label='Show Graph (Press g)']")
                page.wait_for_selector(".react-flow__node")
                nodes = " ".join(n.inner_text() for n in page.query_selector_all(".react-flow__node"))
                for task in ("check_loads", "gate_marts", "publish_marts", "marts_published"):
                    assert task in nodes

                page.goto(f"{base}/dags/ingest_apc/runs/{failing}/tasks/load/mapped/0")
                page.wait_for_selector("text=QUALITY GATE FAILED")
                assert page.locator("text=Failed").first.is_visible()
                assert apc.name in page.inner_text("body")
            except Exception:
                if page is not None:
                    page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()

        # The failed gate reached people: one webhook POST and one email, naming the file and nothing identifiable.
        inbox.wait(30)
        # (Unpausing also lets the schedule run the latest due run once, which fails the same way: one per run.)
        gate_posts = [p for p in inbox.posts if p["run"] == failing]
        assert len(gate_posts) == 1
        assert gate_posts[0]["dag"] == "ingest_apc" and gate_posts[0]["task"] == "load[0]"
        assert gate_posts[0]["what"].startswith(f"QUALITY GATE FAILED for {apc.name}")
        assert any(
            "ingest_apc.load[0] failed" in m and "QUALITY GATE FAILED" in m and RECIPIENT in m for m in inbox.emails
        )
        assert not re.search(r"(?<!\d)\d{10}(?!\d)", json.dumps(inbox.posts) + "".join(inbox.emails))
        print(f"\nUI {ready}; ready after {ui_ready_seconds:.0f} s; whole test {time.monotonic() - started:.0f} s")
    finally:
        if ui.poll() is None:
            ui.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                ui.wait(timeout=60)
            except subprocess.TimeoutExpired:
                ui.kill()
                ui.wait(timeout=30)
        # Deliver the good file again, as the failed-gate test does: later tests see a good world.
        shutil.copy(world.landing / apc.name, apc)
        assert world.pophealth("dag", "ingest_apc", "--landing", str(landing)).returncode == 0
    assert ui.returncode == 0, log.read_text(errors="replace")[-2000:]
    assert "Stopping Airflow" in log.read_text()
    with socket.socket() as sock:  # nothing listens on the UI's port any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0
