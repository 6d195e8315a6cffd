"""Long commands show progress: a step that runs longer than the interval prints a line each interval, and stops
printing when the step ends (the line's thread does not outlive it)."""

from __future__ import annotations

import time

from pophealth import cli


def test_a_long_step_prints_a_line_each_interval_and_nothing_after_it_ends(capsys):
    with cli._still_working("generating", every=0.05):
        time.sleep(0.28)
    during = capsys.readouterr().out.splitlines()
    assert 3 <= len(during) <= 6
    assert all(line.startswith("  ... generating (") and line.endswith(" s)") for line in during)
    time.sleep(0.2)
    assert capsys.readouterr().out == ""


def test_a_quick_step_prints_nothing(capsys):
    with cli._still_working("generating", every=5):
        pass
    assert capsys.readouterr().out == ""
