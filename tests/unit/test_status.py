"""What `pophealth status` prints about the warehouse and ages, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pophealth.operate.status import age
from pophealth.warehouse.db import parse_url


def test_the_warehouse_is_named_without_its_password():
    assert (
        parse_url("postgresql://pophealth_owner:s3cret%40x@db.example:5433/pophealth").shown()
        == "pophealth_owner@db.example:5433/pophealth"
    )
    assert (
        parse_url("postgresql://postgres:@/pophealth?host=/srv/state/pgdata&port=5432").shown()
        == "postgres@/srv/state/pgdata:5432/pophealth"
    )


def test_ages_are_in_the_unit_a_person_reads_at_a_glance():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert age(now - timedelta(minutes=7), now) == "7 min"
    assert age(now - timedelta(hours=5), now) == "5.0 h"
    assert age(now - timedelta(days=40), now) == "40 d"
    assert age(None, now) == "-"


# The next delivery due of each feed, from the arrival schedule (each feed's declared arrival, Europe/London)


def _source(feed: str, provider: str | None, period_end: str, status: str = "published") -> dict:
    from datetime import date

    return {"feed": feed, "provider": provider, "period_end": date.fromisoformat(period_end), "status": status}


def test_the_next_delivery_of_each_feed_is_its_next_scheduled_look_and_the_period_after_the_latest():
    from datetime import date

    from pophealth.operate.status import next_deliveries

    now = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)  # after this month's hospital look (the 10th, 06:00)
    latest = [
        _source("apc", "RAJ", "2025-11-30"),
        _source("apc", "RDE", "2025-10-31", "gate_failed"),
        _source("cld", "E10000012", "2025-09-30"),
        _source("gp_register", None, "2025-12-31"),
    ]
    due = {d["feed"]: d for d in next_deliveries(latest, now)}
    apc = due["apc"]
    assert apc["next_look"].isoformat() == "2026-02-10T06:00:00+00:00"  # GMT in February
    assert apc["waits_until"].isoformat() == "2026-02-15T06:00:00+00:00"  # 5 days
    # RAJ sent November: December is due; RDE's October was refused: October is due again.
    assert apc["expected"] == [
        {"provider": "RAJ", "period_end": date(2025, 12, 31)},
        {"provider": "RDE", "period_end": date(2025, 10, 31)},
    ]
    cld = due["cld"]
    assert cld["next_look"].isoformat() == "2026-02-01T06:00:00+00:00"  # quarterly: Feb, May, Aug, Nov
    assert cld["expected"] == [{"provider": "E10000012", "period_end": date(2025, 12, 31)}]  # the quarter after
    register = due["gp_register"]
    assert register["next_look"].isoformat() == "2026-01-12T10:00:00+00:00"  # hourly, on arrival
    assert register["expected"] == [] and register["schedule"] == "on arrival (checked hourly)"


def test_a_look_in_summer_is_at_six_in_london_which_is_five_utc():
    from pophealth.operate.status import next_deliveries

    due = {d["feed"]: d for d in next_deliveries([], datetime(2026, 6, 1, tzinfo=UTC))}
    assert due["apc"]["next_look"].astimezone(UTC).isoformat() == "2026-06-10T05:00:00+00:00"


def test_the_period_after_a_month_end_is_the_next_month_end():
    from datetime import date

    from pophealth.operate.status import _month_end_after

    assert _month_end_after(date(2025, 1, 31), 1) == date(2025, 2, 28)
    assert _month_end_after(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert _month_end_after(date(2025, 11, 30), 3) == date(2026, 2, 28)
    assert _month_end_after(date(2025, 12, 31), 1) == date(2026, 1, 31)


def test_the_landing_folder_a_run_used_is_remembered_in_pophealth_home(tmp_path, monkeypatch):
    from pophealth import config

    monkeypatch.setenv(config.ENV_HOME, str(tmp_path / "home"))
    assert config.remembered_landing() is None
    config.remember_landing(tmp_path / "landing" / ".." / "landing")
    assert config.remembered_landing() == (tmp_path / "landing").resolve()
