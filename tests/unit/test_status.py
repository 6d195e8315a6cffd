"""What `pophealth status` prints about the warehouse and ages, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pophealth.db import parse_url
from pophealth.status import age


def test_the_warehouse_is_named_without_its_password():
    assert parse_url("postgresql://pophealth_owner:s3cret%40x@db.example:5433/pophealth").shown() == \
        "pophealth_owner@db.example:5433/pophealth"
    assert parse_url("postgresql://postgres:@/pophealth?host=/srv/state/pgdata&port=5432").shown() == \
        "postgres@/srv/state/pgdata:5432/pophealth"


def test_ages_are_in_the_unit_a_person_reads_at_a_glance():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert age(now - timedelta(minutes=7), now) == "7 min"
    assert age(now - timedelta(hours=5), now) == "5.0 h"
    assert age(now - timedelta(days=40), now) == "40 d"
    assert age(None, now) == "-"
