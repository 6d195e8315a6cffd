"""Failure notifications: what they say, that they never carry an identifier, that a failed send never raises."""

import socket
from types import SimpleNamespace

import pytest

from pophealth.operate import notify
from tests.integration.listeners import listening


@pytest.mark.parametrize(
    "text, expected",
    [
        ("row 12: nhs number 9434765919 failed", "row 12: nhs number [removed] failed"),
        ("943 476 5919 and 943-476-5919", "[removed] and [removed]"),
        ("postcode CM1 1AA and cm11aa", "postcode [removed] and [removed]"),
        ("load 12345 of 12345678901 digits", "load 12345 of 12345678901 digits"),  # not ten digits alone: kept
        (
            "QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)",
            "QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)",
        ),
    ],
)
def test_scrub_removes_nhs_number_and_postcode_shapes_only(text, expected):
    assert notify.scrub(text) == expected


def _context(message: str, map_index: int = 0):
    ti = SimpleNamespace(
        dag_id="ingest_apc", task_id="load", map_index=map_index, run_id="manual__2026-11-23T19:00:00+00:00"
    )
    return {"task_instance": ti, "exception": Exception(message)}


def test_the_message_names_dag_task_run_and_the_first_line_of_what_failed():
    failure = notify.failure_from(
        _context(
            "QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)\n"
            "rule nhs_number_valid: 3 rows (e.g. row 4 with 9434765919)"
        )
    )
    assert (failure.dag, failure.task, failure.run) == ("ingest_apc", "load[0]", "manual__2026-11-23T19:00:00+00:00")
    assert failure.what == "QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)"
    assert "9434765919" not in failure.text and "Airflow UI" in failure.where


def test_a_ten_digit_value_in_the_first_line_is_scrubbed():
    failure = notify.failure_from(_context("bad value 9434765919 at postcode CM1 1AA", map_index=-1))
    assert failure.task == "load"
    assert failure.what == "bad value [removed] at postcode [removed]"


def test_the_webhook_gets_one_json_post(monkeypatch):
    with listening() as inbox:
        monkeypatch.setenv(notify.ENV_WEBHOOK, f"http://127.0.0.1:{inbox.webhook_port}/hook")
        monkeypatch.delenv(notify.ENV_EMAIL, raising=False)
        notify.notify_failure(_context("QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)"))
    assert len(inbox.posts) == 1
    body = inbox.posts[0]
    assert body["dag"] == "ingest_apc" and body["what"].startswith("QUALITY GATE FAILED")
    assert body["text"].startswith("pophealth: ingest_apc.load[0] failed in run manual__")


def test_a_notification_that_cannot_be_sent_is_logged_and_does_not_raise(monkeypatch, caplog):
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(notify.ENV_WEBHOOK, f"http://127.0.0.1:{port}/hook")
    monkeypatch.delenv(notify.ENV_EMAIL, raising=False)
    with caplog.at_level("WARNING", logger="pophealth"):
        notify.notify_failure(_context("QUALITY GATE FAILED"))
    assert "could not be sent" in caplog.text


def test_the_email_goes_through_airflows_smtp_settings(monkeypatch):
    with listening() as inbox:
        monkeypatch.delenv(notify.ENV_WEBHOOK, raising=False)
        for name, value in inbox.env().items():
            if name != notify.ENV_WEBHOOK:
                monkeypatch.setenv(name, value)
        notify.notify_failure(_context("QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)"))
    assert len(inbox.emails) == 1 and inbox.posts == []
    assert "Subject: pophealth: ingest_apc.load[0] failed" in inbox.emails[0]
    assert "QUALITY GATE FAILED for apc_RAJ_20250331.csv (load 7)" in inbox.emails[0]
