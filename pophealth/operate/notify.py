"""Failures reach people: a webhook and/or an email when a task fails, a failed quality gate included.

Wired as every task's `on_failure_callback` (orchestration.DEFAULT_ARGS). Settings (environment):

    POPHEALTH_NOTIFY_WEBHOOK   a URL that gets a JSON POST ({"text": ..., "dag": ..., "task": ..., ...})
    POPHEALTH_NOTIFY_EMAIL     comma-separated addresses, sent through Airflow's SMTP settings
                               (AIRFLOW__SMTP__SMTP_HOST, _PORT, _MAIL_FROM, _STARTTLS, _SSL, _TIMEOUT)

The message says which DAG, task and run failed, what failed in one line and where to look. It is built from
the task's own failure message, which the platform already keeps free of identifiers, and any 10-digit run
(an NHS number's shape) or postcode shape is scrubbed anyway. A notification that cannot be sent is logged;
it never fails the task a second time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.request
from dataclasses import asdict, dataclass

log = logging.getLogger("pophealth")

ENV_WEBHOOK = "POPHEALTH_NOTIFY_WEBHOOK"
ENV_EMAIL = "POPHEALTH_NOTIFY_EMAIL"
SEND_TIMEOUT_SECONDS = 10
REMOVED = "[removed]"

# Ten digits, alone or grouped 3-3-4 with spaces or hyphens (how NHS numbers are written), not inside a longer run
_TEN_DIGITS = re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)")
# A full UK postcode (outward code, optional space, inward code)
_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b", re.IGNORECASE)


def scrub(text: str) -> str:
    """The text with anything shaped like an NHS number or a full postcode replaced."""
    return _POSTCODE.sub(REMOVED, _TEN_DIGITS.sub(REMOVED, text))


@dataclass(frozen=True)
class Failure:
    dag: str
    task: str
    run: str
    what: str
    where: str

    @property
    def text(self) -> str:
        return f"pophealth: {self.dag}.{self.task} failed in run {self.run}: {self.what} (see {self.where})"


def failure_from(context) -> Failure:
    """What failed, from an Airflow task context: the first line of the failure message, scrubbed."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    if map_index is not None and map_index >= 0:
        task_id = f"{task_id}[{map_index}]"
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", "?")
    exception = context.get("exception")
    lines = [line.strip() for line in str(exception or "").splitlines() if line.strip()]
    what = lines[0] if lines else (type(exception).__name__ if exception else "the task failed")
    where = f"the Airflow UI: DAG {dag_id}, run {run_id}, task {task_id}, its log; `pophealth status` for the loads"
    return Failure(
        dag=scrub(str(dag_id)),
        task=scrub(str(task_id)),
        run=scrub(str(run_id)),
        what=scrub(what[:500]),
        where=scrub(where),
    )


def send_webhook(url: str, failure: Failure) -> None:
    body = json.dumps({"text": failure.text, **asdict(failure)}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_SECONDS) as response:
        response.read()


def send_email(addresses: str, failure: Failure) -> None:
    from html import escape

    from airflow.utils.email import send_email_smtp

    # conn_id=None: Airflow's [smtp] settings only, no connection lookup from inside a task
    send_email_smtp(
        [a.strip() for a in addresses.split(",") if a.strip()],
        f"pophealth: {failure.dag}.{failure.task} failed",
        f"<p>{escape(failure.text)}</p>",
        conn_id=None,  # typed str in Airflow, but None is what Airflow documents
    )


def notify_failure(context) -> None:
    """on_failure_callback: send the configured notifications; never raise."""
    try:
        failure = failure_from(context)
    except Exception as exc:  # noqa: BLE001 - a callback must not fail the task again
        log.warning("could not describe the failure for a notification: %s", type(exc).__name__)
        return
    for env, send in ((ENV_WEBHOOK, send_webhook), (ENV_EMAIL, send_email)):
        target = os.environ.get(env)
        if not target:
            continue
        try:
            send(target, failure)
            log.info("failure notification sent (%s)", env)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "failure notification (%s) could not be sent: %s: %s", env, type(exc).__name__, scrub(str(exc))[:200]
            )
