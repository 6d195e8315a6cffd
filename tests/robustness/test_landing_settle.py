"""The landing folder's rule for files still being written (the contract is silent; pophealth/ingest/landing.py):
temporary names are never picked up, and a just-changed file must stay unchanged for the settle interval."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pophealth.ingest.landing import FileRejected, scan, settle_seconds, settled


def test_hidden_and_temporary_names_are_neither_extracts_nor_unrecognised(tmp_path):
    for name in (
        ".apc_RAJ_20250131.csv",
        "apc_RAJ_20250131.csv.part",
        "apc_RAJ_20250131.csv.tmp",
        "apc_RAJ_20250131.csv",
    ):
        (tmp_path / name).write_text("x\n")
    found = scan(tmp_path)
    assert [e.name for e in found.extracts] == ["apc_RAJ_20250131.csv"]
    assert found.unrecognised == []


def test_a_folder_of_older_files_is_picked_up_without_waiting(tmp_path):
    path = tmp_path / "apc_RAJ_20250131.csv"
    path.write_text("x\n")
    old = time.time() - 60
    os.utime(path, (old, old))
    started = time.monotonic()
    assert [e.name for e in settled(scan(tmp_path).extracts, seconds=5)] == [path.name]
    assert time.monotonic() - started < 1


def test_a_file_that_grows_during_the_settle_interval_is_left_for_the_next_run(tmp_path):
    growing, done = tmp_path / "apc_RAJ_20250131.csv", tmp_path / "apc_RAJ_20250228.csv"
    growing.write_text("epikey\n")
    done.write_text("epikey\n")
    os.utime(done, (time.time() - 60,) * 2)
    timer = threading.Timer(0.2, lambda: growing.open("a").write("1\n"))
    timer.start()
    try:
        kept = settled(scan(tmp_path).extracts, seconds=0.6)
    finally:
        timer.join(5)
    assert [e.name for e in kept] == [done.name]


def test_a_just_written_file_that_stays_unchanged_is_picked_up_after_one_interval(tmp_path):
    (tmp_path / "apc_RAJ_20250131.csv").write_text("epikey\n1\n")
    started = time.monotonic()
    assert len(settled(scan(tmp_path).extracts, seconds=0.3)) == 1
    assert 0.3 <= time.monotonic() - started < 2


@pytest.mark.parametrize("value, seconds", [("", 2.0), ("0", 0.0), ("0.5", 0.5), ("3600", 60.0), ("-4", 0.0)])
def test_the_settle_interval_is_configurable_and_bounded(monkeypatch, value, seconds):
    monkeypatch.setenv("POPHEALTH_LANDING_SETTLE_SECONDS", value)
    assert settle_seconds() == seconds


def test_a_settle_interval_that_is_not_a_number_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("POPHEALTH_LANDING_SETTLE_SECONDS", "two")
    with pytest.raises(FileRejected, match="must be a number of seconds"):
        settle_seconds()
