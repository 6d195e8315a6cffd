"""Who can read what, over real connections as each role; and the audited re-identification vault.

A small generated world is loaded and its marts built on a real embedded PostgreSQL; each test then logs in
as one of the platform's roles (pophealth/warehouse/access.sql) and is allowed, or refused, what the issue says.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from pophealth.warehouse.db import parse_url

from .conftest import TEST_KEY, isolated_env, published_id, with_vault_private_key
from .conftest import BuiltWarehouse as Warehouse

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def warehouse(small_world):
    env = with_vault_private_key(isolated_env(small_world.home))  # the loads had the public key only
    return Warehouse(small_world.url, small_world.landing, env)


def person_id(number: str) -> str:
    """The transit pseudonym (raw, the vault) of an NHS number."""
    return hmac.new(bytes.fromhex(TEST_KEY), number.encode("ascii"), hashlib.sha256).hexdigest()


def direct_care_id(number: str) -> str:
    """The id direct_care.case_finding shows for an NHS number: the only kind re-identification accepts."""
    return published_id("direct_care", person_id(number))


def linked_numbers(landing: Path) -> list[str]:
    with (landing / "answer_key" / "people.csv").open(newline="") as handle:
        return [r["identity"][4:] for r in csv.DictReader(handle) if r["identity"].startswith("nhs:")]


def can(conn: psycopg.Connection, statement: str, params: tuple = ()) -> bool:
    try:
        conn.execute(statement, params)
        return True
    except errors.InsufficientPrivilege:
        return False


# -- the analyst ------------------------------------------------------------------------------------------------

ANALYST_REFUSED = [
    "SELECT * FROM raw.gp_register LIMIT 1",
    "SELECT * FROM raw.apc_episode LIMIT 1",
    "SELECT * FROM restricted.optout LIMIT 1",
    "SELECT * FROM restricted.pseudonym LIMIT 1",
    "SELECT * FROM direct_care.case_finding LIMIT 1",
    "SELECT * FROM intermediate.int_secondary_use_id LIMIT 1",
    "SELECT * FROM vault.identity LIMIT 1",
    "SELECT * FROM vault.data_key LIMIT 1",
    "SELECT * FROM audit.load LIMIT 1",
    "SELECT * FROM audit.reidentification LIMIT 1",
    "SELECT * FROM staging.stg_gp_register LIMIT 1",
    "SELECT * FROM intermediate.int_person LIMIT 1",
    "SELECT vault.request_reidentification(ARRAY['x'], 'a purpose long enough', 'me')",
    "SELECT * FROM vault.reidentify(1)",
    "CREATE TABLE marts.mine (x int)",
    "DELETE FROM marts.person",
]


def test_an_analyst_reads_the_marts_and_reporting(warehouse):
    with warehouse.as_role("analyst") as conn:
        assert conn.execute("SELECT count(*) FROM marts.person").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM marts.bcf_metrics").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM reporting.risk_pyramid").fetchone()[0] > 0


@pytest.mark.parametrize("statement", ANALYST_REFUSED)
def test_an_analyst_is_refused_everything_else(warehouse, statement):
    with warehouse.as_role("analyst") as conn:
        assert not can(conn, statement)


def test_every_published_table_and_nothing_else_is_readable_by_the_analyst(warehouse):
    with warehouse.as_owner() as conn:
        readable = conn.execute(
            """SELECT DISTINCT table_schema FROM information_schema.tables
               WHERE has_table_privilege('analyst', format('%I.%I', table_schema, table_name), 'SELECT')
                 AND table_schema NOT IN ('pg_catalog', 'information_schema')"""
        ).fetchall()
        unreadable_published = conn.execute(
            """SELECT table_schema || '.' || table_name FROM information_schema.tables
               WHERE table_schema IN ('marts', 'reporting')
                 AND NOT has_table_privilege('analyst', format('%I.%I', table_schema, table_name), 'SELECT')"""
        ).fetchall()
    assert {r[0] for r in readable} == {"marts", "reporting"}
    assert unreadable_published == []


# -- the information governance auditor -------------------------------------------------------------------------


def test_an_ig_auditor_reads_the_audit_schema_only(warehouse):
    with warehouse.as_role("ig_auditor") as conn:
        assert conn.execute("SELECT count(*) FROM audit.load").fetchone()[0] > 0
        assert can(conn, "SELECT * FROM audit.quarantine LIMIT 1")
        assert can(conn, "SELECT * FROM audit.reidentification LIMIT 1")
        assert can(conn, "SELECT * FROM audit.key_rotation LIMIT 1")
        for refused in (
            "SELECT * FROM raw.gp_register LIMIT 1",
            "SELECT * FROM vault.identity LIMIT 1",
            "SELECT * FROM vault.data_key LIMIT 1",
            "SELECT * FROM marts.person LIMIT 1",
            "SELECT * FROM vault.reidentify(1)",
            "DELETE FROM audit.load",
        ):
            assert not can(conn, refused), refused


# -- the loader -------------------------------------------------------------------------------------------------


def test_the_loader_writes_raw_and_the_vault_but_reads_neither_marts_nor_ciphertexts(warehouse):
    with warehouse.as_role("loader", autocommit=False) as conn:
        assert can(conn, "INSERT INTO raw.ref_lsoa (load_id, lsoa_code, locality_code) VALUES (0, 'X', 'Y')")
        assert can(conn, "SELECT count(*) FROM restricted.optout")
        assert can(conn, "SELECT count(*) FROM audit.load")
        conn.rollback()
        for refused in (
            "SELECT ciphertext FROM vault.identity LIMIT 1",
            "SELECT wrapped FROM vault.data_key LIMIT 1",
            "UPDATE vault.data_key SET load_id = load_id",
            "SELECT * FROM marts.person LIMIT 1",
            "SELECT * FROM audit.reidentification LIMIT 1",
            "SELECT * FROM vault.reidentify(1)",
        ):
            assert not can(conn, refused), refused
            conn.rollback()


# -- re-identification ------------------------------------------------------------------------------------------


def test_the_reidentifier_can_only_call_the_vault_functions(warehouse):
    with warehouse.as_role("reidentifier") as conn:
        for refused in (
            "SELECT * FROM vault.identity LIMIT 1",
            "SELECT * FROM raw.gp_register LIMIT 1",
            "SELECT * FROM marts.person LIMIT 1",
            "SELECT * FROM audit.reidentification LIMIT 1",
        ):
            assert not can(conn, refused), refused


def test_reidentification_returns_the_nhs_number_and_is_logged_first(warehouse):
    numbers = linked_numbers(warehouse.landing)[:3]
    wanted = [direct_care_id(n) for n in numbers]
    proc = warehouse.pophealth(
        "reidentify",
        *wanted,
        "--purpose",
        "case_finding_follow_up",
        "--on-behalf-of",
        "Dr Test, community frailty team",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for pid, number in zip(wanted, numbers, strict=False):
        assert f"{pid}  {number}" in proc.stdout
    with warehouse.as_role("ig_auditor") as conn:
        requested_by, purpose, people, found = conn.execute(
            """SELECT requested_by, purpose, person_ids, people_in_vault FROM audit.reidentification
               ORDER BY request_id DESC LIMIT 1"""
        ).fetchone()
    assert (requested_by, purpose, people, found) == ("reidentifier", "case_finding_follow_up", wanted, 3)


def test_a_reidentification_without_a_purpose_is_refused(warehouse):
    proc = warehouse.pophealth(
        "reidentify",
        direct_care_id(linked_numbers(warehouse.landing)[0]),
        "--purpose",
        "x",
        "--on-behalf-of",
        "someone",
    )
    assert proc.returncode == 2
    assert "purpose" in proc.stderr and linked_numbers(warehouse.landing)[0] not in proc.stdout + proc.stderr


def test_a_read_in_the_same_transaction_as_its_request_is_refused(warehouse):
    # Otherwise a rollback would undo the audit row and keep the numbers.
    with warehouse.as_role("reidentifier", autocommit=False) as conn:
        request = conn.execute(
            "SELECT vault.request_reidentification(%s, %s, %s)",
            ([direct_care_id(linked_numbers(warehouse.landing)[0])], "care_coordination", "nobody"),
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.RaiseException, match="not committed"):
            conn.execute("SELECT * FROM vault.reidentify(%s)", (request,)).fetchall()
        conn.rollback()


def test_the_reidentification_log_is_append_only_even_for_its_owner(warehouse):
    with warehouse.as_owner() as conn:
        ((rows,),) = conn.execute("SELECT count(*) FROM audit.reidentification").fetchall()
        assert rows > 0
        for change in (
            "UPDATE audit.reidentification SET purpose = 'changed'",
            "DELETE FROM audit.reidentification",
            "TRUNCATE audit.reidentification, audit.reidentification_approval",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                conn.execute(change)
    with warehouse.as_role("ig_auditor") as conn:
        assert not can(conn, "DELETE FROM audit.reidentification")


def test_the_vault_holds_every_linked_person_encrypted_opted_out_people_included(warehouse):
    # The opt-out does not apply to a person's own care: their care team may re-identify them (direct_care).
    optout_numbers = []
    for path in warehouse.landing.glob("optouts_*.csv"):
        with path.open(newline="") as handle:
            optout_numbers += [r["nhs_number"].replace(" ", "").replace("-", "") for r in csv.DictReader(handle)]
    with warehouse.as_owner() as conn:
        stored = {
            r[0]: bytes(r[1])
            for r in conn.execute("SELECT pseudonym, ciphertext FROM vault.identity WHERE kind = 'nhs'")
        }
        linked = {
            r[0]
            for r in conn.execute(
                "SELECT nhs_number_key FROM raw.gp_register "
                "UNION SELECT nhs_number_key FROM raw.apc_episode WHERE nhs_number_key IS NOT NULL "
                "UNION SELECT nhs_number_key FROM raw.cld_event WHERE nhs_number_key IS NOT NULL"
            )
        }
    assert set(stored) == linked
    assert {person_id(n) for n in optout_numbers} & linked <= set(stored)
    assert {person_id(n) for n in optout_numbers} & linked, "the world has opted-out people in its feeds"
    numbers = linked_numbers(warehouse.landing)
    assert not any(n.encode() in blob for n in numbers[:200] for blob in stored.values())


# -- a real server's owner is not a superuser ----------------------------------------------------------------


def test_an_owner_that_is_not_a_superuser_can_set_up_the_roles_and_work_as_the_loader(tmp_path):
    """On a real PostgreSQL 16 server the warehouse owner has CREATEROLE, not SUPERUSER: `pophealth setup` must
    still leave it able to SET ROLE loader (every load does), without inheriting the loader's rights."""
    env = isolated_env(tmp_path)

    def run(code: str, env: dict = env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)

    try:
        started = run("from pophealth.warehouse import db; print(db.warehouse_url())")
        assert started.returncode == 0, started.stderr[-2000:]
        superuser = parse_url(started.stdout.strip().splitlines()[-1])
        with psycopg.connect(superuser.url(), autocommit=True) as conn:
            conn.execute("CREATE ROLE pophealth_owner LOGIN CREATEROLE NOSUPERUSER")
            conn.execute("CREATE DATABASE owned_warehouse OWNER pophealth_owner")
        owner = superuser.with_db("owned_warehouse").with_user("pophealth_owner", "-")
        owner = parse_url(owner.url().replace(":-@", ":@"))
        as_owner = {**env, "POPHEALTH_DATABASE_URL": owner.url()}
        setup = run(
            "from pophealth.warehouse.schema import prepare_warehouse; prepare_warehouse(); prepare_warehouse()",
            env=as_owner,
        )
        assert setup.returncode == 0, setup.stderr[-2000:]
        with psycopg.connect(owner.url(), autocommit=True) as conn:
            membership = conn.execute(
                "SELECT m.inherit_option, m.set_option FROM pg_auth_members m "
                "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
                "WHERE r.rolname = 'loader' AND u.rolname = 'pophealth_owner' AND m.set_option"
            ).fetchall()
            assert membership == [(False, True)]
            conn.execute("SET ROLE loader")
            assert conn.execute("SELECT current_user").fetchone() == ("loader",)
            assert conn.execute("SELECT count(*) FROM audit.load").fetchone() == (0,)
            assert not can(conn, "SELECT * FROM vault.identity")
    finally:
        run("from pophealth.warehouse import db; db.stop_embedded()")
