"""The vault and its logs against insiders (issue 17, items 1 to 3), on a real embedded PostgreSQL.

A small world is loaded and its marts built by a process that holds the vault's public key only, with a
private-key setting that would fail if anything read it. Each test then acts as an insider would: as a
login role (loader, reidentifier, caldicott_guardian, ig_auditor, analyst, care_team), or as the demo's
superuser owner, whose changes must at least show in the hash chain.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import hpke
from psycopg import errors

from pophealth.governance.chain import verify
from pophealth.identity.keys import VaultPrivateKey
from pophealth.identity.vault import VaultOpener

from .conftest import (
    RUN,
    TEST_VAULT_PRIVATE_KEY,
    TEST_VAULT_PUBLIC_KEY,
    WITHOUT_DATA_TESTS,
    isolated_env,
    synth_world,
    with_vault_private_key,
)
from .conftest import BuiltWarehouse as Warehouse

pytestmark = pytest.mark.integration

LOGINS = ("loader", "reidentifier", "caldicott_guardian", "ig_auditor", "analyst", "care_team")
GOOD = ("case_finding_follow_up", "Dr Test, community frailty team")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    home = tmp_path_factory.mktemp("vault-insiders")
    landing = synth_world(home, population=300, seed=11)
    # The pipeline's environment: the public key, and a private-key setting any read of which would fail the load.
    env = {
        **isolated_env(home),
        "POPHEALTH_VAULT_PRIVATE_KEY": "not a key",
        "POPHEALTH_VAULT_PRIVATE_KEY_FILE": str(home / "no such file"),
    }
    built = subprocess.run(
        [sys.executable, "-c", RUN, str(landing), *WITHOUT_DATA_TESTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    url = (
        subprocess.run(
            [sys.executable, "-m", "pophealth.cli", "db", "url"], env=env, capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    plain = isolated_env(home)
    try:
        yield Warehouse(url, landing, with_vault_private_key(plain))
    finally:
        subprocess.run([sys.executable, "-m", "pophealth.cli", "db", "stop"], env=plain, capture_output=True)


def care_ids(warehouse: Warehouse, n: int, skip: int = 0) -> list[str]:
    return [
        r[0]
        for r in warehouse.query(
            "SELECT person_id FROM direct_care.case_finding ORDER BY risk_rank LIMIT %s OFFSET %s", (n, skip)
        )
    ]


def request(conn: psycopg.Connection, ids: list[str], purpose: str = GOOD[0], on_behalf_of: str | None = GOOD[1]):
    """A request as the connection's login; returns (request_id, decision, reason) as logged."""
    request_id = conn.execute(
        "SELECT vault.request_reidentification(%s, %s, %s)", (ids, purpose, on_behalf_of)
    ).fetchone()[0]
    return (request_id, *conn.execute("SELECT decision, reason FROM vault.my_request(%s)", (request_id,)).fetchone())


def refused_as(conn: psycopg.Connection, statement: str) -> bool:
    try:
        conn.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    return False


# -- 1. a vault the loader can write and not read -----------------------------------------------------------------


def test_a_load_seals_the_vault_with_the_public_key_only_and_the_private_key_opens_it(warehouse):
    # The fixture's loads ran with an unreadable private-key setting: they never read it.
    public_version = VaultPrivateKey.from_hex(TEST_VAULT_PRIVATE_KEY, "test").version
    versions = warehouse.query("SELECT vault_key_version, count(*) FROM vault.identity GROUP BY 1")
    assert [v for v, _ in versions] == [public_version] and versions[0][1] > 0
    proc = warehouse.pophealth("reidentify", *care_ids(warehouse, 2), "--purpose", GOOD[0], "--on-behalf-of", GOOD[1])
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.split()[-1].isdigit()]) == 2


def test_the_loads_write_by_envelope_one_data_key_per_file_stored_only_wrapped(warehouse):
    per_load = warehouse.query(
        """SELECT v.load_id, count(DISTINCT v.data_key_id), bool_and(k.load_id = v.load_id),
                  bool_and(length(v.nonce) = 12), count(*) FILTER (WHERE v.data_key_id IS NULL)
           FROM vault.identity v LEFT JOIN vault.data_key k USING (data_key_id) GROUP BY v.load_id"""
    )
    assert len(per_load) > 1
    assert {row[1:] for row in per_load} == {(1, True, True, 0)}  # each file's entries: its one key, AES-GCM's nonce
    # A file's data key wraps at least one entry, the unused ones (every pseudonym already stored) are removed.
    assert warehouse.query(
        "SELECT count(*) FROM vault.data_key k WHERE NOT EXISTS "
        "(SELECT FROM vault.identity v WHERE v.data_key_id = k.data_key_id)"
    ) == [(0,)]


def test_every_entry_has_its_data_key_and_a_data_key_in_use_stays(warehouse):
    """What a foreign key said, checked per statement (issue 19): even the owner cannot write an entry under a data
    key that is not stored, nor remove a data key that opens entries; a key that opens none can go."""
    ((pseudonym, key),) = warehouse.query("SELECT pseudonym, data_key_id FROM vault.identity LIMIT 1")
    unknown = "00000000-0000-4000-8000-000000000000"
    with warehouse.as_owner() as conn:
        with pytest.raises(errors.ForeignKeyViolation, match="not in vault.data_key"):
            conn.execute(
                """INSERT INTO vault.identity (pseudonym, kind, nonce, ciphertext, vault_key_version,
                                               linkage_key_version, load_id, data_key_id)
                   SELECT repeat('0', 64), kind, nonce, ciphertext, vault_key_version, linkage_key_version, load_id,
                          %s FROM vault.identity WHERE pseudonym = %s""",
                (unknown, pseudonym),
            )
        with pytest.raises(errors.ForeignKeyViolation, match="not in vault.data_key"):
            conn.execute("UPDATE vault.identity SET data_key_id = %s WHERE pseudonym = %s", (unknown, pseudonym))
        with pytest.raises(errors.ForeignKeyViolation, match="cannot be removed"):
            conn.execute("DELETE FROM vault.data_key WHERE data_key_id = %s", (key,))
        with pytest.raises(errors.ForeignKeyViolation, match="cannot be removed"):
            conn.execute("UPDATE vault.data_key SET data_key_id = %s WHERE data_key_id = %s", (unknown, key))
        conn.execute(
            "INSERT INTO vault.data_key (data_key_id, wrapped, vault_key_version) "
            "SELECT %s, wrapped, vault_key_version FROM vault.data_key WHERE data_key_id = %s",
            (unknown, key),
        )
        assert conn.execute("DELETE FROM vault.data_key WHERE data_key_id = %s", (unknown,)).rowcount == 1
    assert warehouse.query(
        "SELECT count(*) FROM vault.identity v WHERE data_key_id IS NOT NULL "
        "AND NOT EXISTS (SELECT FROM vault.data_key k WHERE k.data_key_id = v.data_key_id)"
    ) == [(0,)]


def test_a_data_key_removed_while_a_load_writes_entries_under_it_is_refused_once_they_are_committed(warehouse):
    """The race a foreign key closes: the writer locks the keys its entries use, so a delete of one waits for the
    writer, then sees its entries and is refused."""
    ((pseudonym, key),) = warehouse.query("SELECT pseudonym, data_key_id FROM vault.identity LIMIT 1")
    fresh = "00000000-0000-4000-8000-000000000001"
    warehouse.query(
        "INSERT INTO vault.data_key (data_key_id, wrapped, vault_key_version) "
        "SELECT %s, wrapped, vault_key_version FROM vault.data_key WHERE data_key_id = %s",
        (fresh, key),
    )
    outcome: list[BaseException | None] = []
    with warehouse.as_owner() as writer, warehouse.as_owner() as remover:
        writer.autocommit = False
        writer.execute(
            """INSERT INTO vault.identity (pseudonym, kind, nonce, ciphertext, vault_key_version,
                                           linkage_key_version, load_id, data_key_id)
               SELECT repeat('f', 64), kind, nonce, ciphertext, vault_key_version, linkage_key_version, load_id, %s
               FROM vault.identity WHERE pseudonym = %s""",
            (fresh, pseudonym),
        )
        remover_pid = remover.info.backend_pid

        def remove() -> None:
            try:
                remover.execute("DELETE FROM vault.data_key WHERE data_key_id = %s", (fresh,))
                outcome.append(None)
            except psycopg.Error as refused:
                outcome.append(refused)

        removing = threading.Thread(target=remove)
        removing.start()
        # Until the delete waits for the writer's lock; a delete that finishes without waiting fails at once, and the
        # deadline is for a machine that never starts the thread, far beyond any load's pause.
        deadline = time.monotonic() + 120
        while warehouse.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (remover_pid,)) != [
            ("Lock",)
        ]:
            if not removing.is_alive() or time.monotonic() > deadline:
                pytest.fail("the delete of the data key did not wait for the load that uses it")
            time.sleep(0.01)
        writer.commit()
        removing.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.ForeignKeyViolation), outcome
    assert warehouse.query("SELECT count(*) FROM vault.data_key WHERE data_key_id = %s", (fresh,)) == [(1,)]
    warehouse.query("DELETE FROM vault.identity WHERE pseudonym = %s", ("f" * 64,))
    warehouse.query("DELETE FROM vault.data_key WHERE data_key_id = %s", (fresh,))


def test_an_entry_moved_to_another_files_data_key_does_not_open(warehouse):
    ids = care_ids(warehouse, 1, skip=70)
    ((moved, own),) = warehouse.query(
        """SELECT v.pseudonym, v.data_key_id FROM restricted.pseudonym p JOIN vault.identity v
           ON v.kind = 'nhs' AND v.pseudonym = p.transit_key WHERE p.direct_care_id = %s""",
        (ids[0],),
    )
    warehouse.query(
        "UPDATE vault.identity SET data_key_id = (SELECT data_key_id FROM vault.data_key WHERE data_key_id <> %s "
        "LIMIT 1) WHERE pseudonym = %s",
        (own, moved),
    )
    try:
        proc = warehouse.pophealth("reidentify", *ids, "--purpose", GOOD[0], "--on-behalf-of", GOOD[1])
        assert proc.returncode == 2 and "does not open" in proc.stderr, proc.stdout + proc.stderr
    finally:
        warehouse.query("UPDATE vault.identity SET data_key_id = %s WHERE pseudonym = %s", (own, moved))
    assert warehouse.pophealth("reidentify", *ids, "--purpose", GOOD[0], "--on-behalf-of", GOOD[1]).returncode == 0


def test_an_entry_written_before_the_envelope_still_opens(warehouse):
    """A warehouse loaded before the envelope holds entries of one HPKE each (no data key): they open, and the
    vault-key rotation (at the end of this module) encrypts them again by envelope."""
    ids = care_ids(warehouse, 1, skip=80)
    ((pseudonym, nonce, ciphertext, key_id, key_load_id, wrapped),) = warehouse.query(
        """SELECT v.pseudonym, v.nonce, v.ciphertext, k.data_key_id, k.load_id, k.wrapped
           FROM restricted.pseudonym p JOIN vault.identity v ON v.kind = 'nhs' AND v.pseudonym = p.transit_key
           JOIN vault.data_key k USING (data_key_id) WHERE p.direct_care_id = %s""",
        (ids[0],),
    )
    private = VaultPrivateKey.from_hex(TEST_VAULT_PRIVATE_KEY, "test")
    number = VaultOpener(private).decrypt("nhs", pseudonym, nonce, ciphertext, (key_id, key_load_id, wrapped)).decode()
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sealed = suite.encrypt(
        number.encode(),
        private.public_key().x25519(),
        info=f"pophealth vault|nhs|{pseudonym}".encode(),
    )
    warehouse.query(
        "UPDATE vault.identity SET nonce = %s, ciphertext = %s, data_key_id = NULL WHERE pseudonym = %s",
        (sealed[:32], sealed[32:], pseudonym),
    )
    proc = warehouse.pophealth("reidentify", *ids, "--purpose", GOOD[0], "--on-behalf-of", GOOD[1])
    assert proc.returncode == 0, proc.stderr
    assert number in proc.stdout


def test_without_the_private_key_reidentify_refuses_and_names_the_setting(warehouse):
    env = {k: v for k, v in warehouse.env.items() if not k.startswith("POPHEALTH_VAULT_PRIVATE")}
    env["POPHEALTH_VAULT_PUBLIC_KEY"] = TEST_VAULT_PUBLIC_KEY
    proc = Warehouse(warehouse.url, warehouse.landing, env).pophealth(
        "reidentify", *care_ids(warehouse, 1), "--purpose", GOOD[0], "--on-behalf-of", GOOD[1]
    )
    assert proc.returncode == 2 and "POPHEALTH_VAULT_PRIVATE_KEY" in proc.stderr


# -- 2. bounded, approved re-identification ----------------------------------------------------------------------


def test_a_request_within_the_limits_is_released_and_beyond_them_waits_for_a_caldicott_guardian(warehouse):
    with warehouse.as_role("reidentifier") as conn:
        small, decision, _ = request(conn, care_ids(warehouse, 3))
        assert decision == "released"
        assert len(conn.execute("SELECT * FROM vault.reidentify(%s)", (small,)).fetchall()) == 3
        big, decision, reason = request(conn, care_ids(warehouse, 11, skip=3))
        assert (decision, "Caldicott guardian" in reason) == ("awaiting_approval", True)
        with pytest.raises(errors.InsufficientPrivilege, match="held for approval"):
            conn.execute("SELECT * FROM vault.reidentify(%s)", (big,))
        # The requester cannot approve: it has no right to, and the function refuses one's own request anyway.
        assert refused_as(conn, f"SELECT vault.decide_reidentification({big}, true, 'approving my own request')")
    with warehouse.as_owner() as owner:
        own, decision, _ = request(owner, care_ids(warehouse, 11, skip=20))
        with pytest.raises(errors.InsufficientPrivilege, match="someone else than its requester"):
            owner.execute("SELECT vault.decide_reidentification(%s, true, 'approving my own request')", (own,))
    with warehouse.as_role("caldicott_guardian") as guardian:
        with pytest.raises(errors.RaiseException, match="note"):
            guardian.execute("SELECT vault.decide_reidentification(%s, true, 'ok')", (big,))
        assert guardian.execute(
            "SELECT vault.decide_reidentification(%s, true, %s)", (big, "frailty MDT list for this week, agreed")
        ).fetchone() == ("approved",)
        assert refused_as(guardian, "SELECT * FROM vault.identity LIMIT 1")
    proc = warehouse.pophealth("reidentify", "--request", str(big))
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.split()[-1].isdigit()]) == 11


@pytest.mark.parametrize(
    "case, ids, purpose, on_behalf_of, why",
    [
        ("a purpose off the list", "good", "aaaaaaaaaa", GOOD[1], "purpose must be one of"),
        ("no on_behalf_of", "good", GOOD[0], None, "on behalf of whom"),
        ("not a pseudonym", "random", GOOD[0], GOOD[1], "current direct-care id"),
        ("an analyst's id", "secondary", GOOD[0], GOOD[1], "secondary-use person_id"),
        ("an NHS number typed in", "nhs", GOOD[0], GOOD[1], "64 hexadecimal characters"),
        ("a hundred thousand ids", "many", GOOD[0], GOOD[1], "at most 500 people, even with approval"),
    ],
)
def test_each_bad_request_is_refused_and_the_refusal_is_logged(warehouse, case, ids, purpose, on_behalf_of, why):
    named = {
        "good": care_ids(warehouse, 1),
        "random": ["ab" * 32],
        "secondary": [warehouse.query("SELECT person_id FROM marts.risk_stratification LIMIT 1")[0][0]],
        "nhs": ["9434765919"],
        "many": [f"{i:064x}" for i in range(100_000)],
    }[ids]
    with warehouse.as_role("reidentifier") as conn:
        request_id, decision, reason = request(conn, named, purpose, on_behalf_of)
        assert decision == "refused" and why in reason, (case, reason)
        with pytest.raises(errors.InsufficientPrivilege, match="refused"):
            conn.execute("SELECT * FROM vault.reidentify(%s)", (request_id,))
    logged = warehouse.query(
        "SELECT people_named, person_ids, requested_by FROM audit.reidentification WHERE request_id = %s", (request_id,)
    )
    assert logged[0][0] == len(named) and logged[0][2] == "reidentifier"
    assert "9434765919" not in str(logged)  # a refused identifier is never kept in clear


def test_a_login_beyond_its_daily_cap_waits_for_approval(warehouse):
    ((today,),) = warehouse.query("""SELECT coalesce(sum(people_named), 0) FROM audit.reidentification
                                   WHERE requested_by = 'reidentifier' AND decision <> 'refused'""")
    warehouse.env["POPHEALTH_REIDENTIFY_DAILY_PEOPLE"] = str(today + 5)
    try:
        warehouse.python("from pophealth.warehouse.schema import prepare_warehouse; prepare_warehouse()")
        with warehouse.as_role("reidentifier") as conn:
            assert request(conn, care_ids(warehouse, 3, skip=40))[1] == "released"
            assert request(conn, care_ids(warehouse, 3, skip=43))[1] == "awaiting_approval"
    finally:
        del warehouse.env["POPHEALTH_REIDENTIFY_DAILY_PEOPLE"]
        warehouse.python("from pophealth.warehouse.schema import prepare_warehouse; prepare_warehouse()")


# -- 3. a log that shows tampering ------------------------------------------------------------------------------


def test_the_logs_belong_to_a_role_nobody_logs_in_as(warehouse):
    owners = warehouse.query("""SELECT c.relname, r.rolname, r.rolcanlogin FROM pg_class c JOIN pg_roles r
                                ON r.oid = c.relowner WHERE c.oid = ANY (ARRAY['audit.reidentification'::regclass,
                                'audit.reidentification_approval'::regclass, 'audit.key_rotation'::regclass])""")
    assert {(o, login) for _, o, login in owners} == {("audit_keeper", False)}


@pytest.mark.parametrize("login", LOGINS)
def test_no_login_role_can_disable_drop_replace_or_bypass_the_logs_protection(warehouse, login):
    with warehouse.as_role(login) as conn:
        for attack in (
            "ALTER TABLE audit.reidentification DISABLE TRIGGER USER",
            "DROP TRIGGER append_only_rows ON audit.reidentification",
            "CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN OLD; END $$",
            "SET session_replication_role = replica",
            "DELETE FROM audit.reidentification",
            "TRUNCATE audit.key_rotation",
            "INSERT INTO audit.reidentification (purpose, person_ids, people_in_vault) "
            "VALUES ('case_finding_follow_up', '{}', 0)",
            "SELECT nextval('audit.reidentification_request_id_seq')",
        ):
            assert refused_as(conn, attack), (login, attack)


def test_the_loader_may_only_move_a_loads_outcome_on(warehouse):
    with warehouse.as_role("loader") as conn:
        assert refused_as(conn, "UPDATE audit.load SET file_sha256 = 'x' WHERE false")
        assert refused_as(conn, "UPDATE audit.load SET started_at = now() WHERE false")
        assert not refused_as(conn, "UPDATE audit.load SET message = message WHERE false")
        assert not refused_as(conn, "SELECT nextval('audit.load_load_id_seq')")


def _breaks(conn: psycopg.Connection, anchor: Path | None = None) -> list[str]:
    return [b for c in verify(conn, anchor) for b in c.breaks]


SUPERUSER_ATTACKS = {
    "disable the trigger, then delete a row": [
        "ALTER TABLE audit.reidentification DISABLE TRIGGER USER",
        "DELETE FROM audit.reidentification WHERE chain_position = 2",
    ],
    "drop the triggers, then truncate (seen against the head kept outside the database)": [
        "DROP TRIGGER append_only_truncate ON audit.reidentification",
        "DROP TRIGGER append_only_truncate ON audit.reidentification_approval",
        "TRUNCATE audit.reidentification, audit.reidentification_approval",
    ],
    "replace the refusing function, then rewrite a purpose": [
        "CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NEW; END $$",
        "UPDATE audit.reidentification SET purpose = 'safeguarding' WHERE chain_position = 1",
    ],
    "replica role, then delete a row": [
        "SET LOCAL session_replication_role = replica",
        "DELETE FROM audit.reidentification WHERE chain_position = 3",
    ],
    "replace the chain's function, then add a row that claims any hash": [
        "CREATE OR REPLACE FUNCTION audit.chain_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.chain_position := (SELECT max(chain_position) + 1 FROM audit.reidentification); "
        "NEW.previous_hash := (SELECT row_hash FROM audit.reidentification ORDER BY chain_position DESC LIMIT 1); "
        "NEW.row_hash := repeat('f', 64); RETURN NEW; END $$",
        "INSERT INTO audit.reidentification (purpose, person_ids, people_in_vault, requested_by) "
        "VALUES ('case_finding_follow_up', '{}', 0, 'reidentifier')",
    ],
}


@pytest.mark.parametrize("attack", SUPERUSER_ATTACKS)
def test_each_attack_by_the_superuser_owner_is_detected_by_the_chain(warehouse, attack, tmp_path):
    anchor = tmp_path / "heads.json"
    assert warehouse.query("SELECT count(*) FROM audit.reidentification")[0][0] >= 3
    with psycopg.connect(warehouse.url) as conn:  # one transaction, rolled back: the attack is undone after
        assert _breaks(conn, anchor) == [], "the chain is intact before the attack"
        for statement in SUPERUSER_ATTACKS[attack]:
            conn.execute(statement)
        found = _breaks(conn, anchor)
        conn.rollback()
    assert found, attack


def test_a_forged_back_dated_request_releases_nothing_and_status_and_the_ig_report_say_where_in_red(warehouse):
    with warehouse.as_owner() as conn:
        # With the trigger on, the row is stamped with its real author and time: it cannot pass as another login's.
        conn.execute("BEGIN")
        conn.execute(
            """INSERT INTO audit.reidentification (purpose, person_ids, people_in_vault, requested_by,
                                                               requested_at)
                        VALUES ('case_finding_follow_up', %s, 3, 'reidentifier', now() - interval '1 day')""",
            (care_ids(warehouse, 3),),
        )
        stamped = conn.execute("""SELECT requested_by, requested_at > now() - interval '1 minute'
                                  FROM audit.reidentification ORDER BY request_id DESC LIMIT 1""").fetchone()
        conn.execute("ROLLBACK")
        ((owner,),) = conn.execute("SELECT session_user").fetchall()
        assert stamped == (owner, True)
        # Around the trigger (replica role), with a committed transaction id and a recent time.
        ((txid,),) = conn.execute("SELECT txid FROM audit.reidentification ORDER BY request_id LIMIT 1").fetchall()
        conn.execute("BEGIN")
        conn.execute("SET LOCAL session_replication_role = replica")
        ((forged,),) = conn.execute(
            """INSERT INTO audit.reidentification (requested_at, requested_by, on_behalf_of, purpose, person_ids,
                                                   people_in_vault, txid, decision)
               VALUES (now() - interval '1 minute', 'reidentifier', 'Dr Nobody', 'case_finding_follow_up', %s, 3, %s,
                       'released') RETURNING request_id""",
            (care_ids(warehouse, 3), txid),
        ).fetchall()
        conn.execute("COMMIT")
    try:
        with warehouse.as_role("reidentifier") as conn:
            with pytest.raises(errors.InsufficientPrivilege, match="not in the audit log's hash chain"):
                conn.execute("SELECT * FROM vault.reidentify(%s)", (forged,))
        env = {**warehouse.env, "FORCE_COLOR": "1"}
        status = Warehouse(warehouse.url, warehouse.landing, env).pophealth("status")
        assert status.returncode == 1
        assert f"\033[31m  request_id {forged} was written around the chain" in status.stdout
        report = Warehouse(warehouse.url, warehouse.landing, env).pophealth(
            "ig-report", "--out", str(Path(warehouse.env["POPHEALTH_HOME"]) / "ig.html")
        )
        assert report.returncode == 1 and f"\033[31m  request_id {forged} was written around" in report.stdout
    finally:
        with warehouse.as_owner() as conn:
            conn.execute("BEGIN")
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("DELETE FROM audit.reidentification WHERE request_id = %s", (forged,))
            conn.execute("COMMIT")


# -- rotating the vault's key pair --------------------------------------------------------------------------------


def test_the_vault_key_pair_rotates_and_only_the_new_private_key_opens_it_afterwards(warehouse, tmp_path):
    new_private = "9b" * 32
    new_public = VaultPrivateKey.from_hex(new_private, "new").public_hex()
    warehouse.python(
        """
        import sys
        from pophealth.identity.keys import VaultPrivateKey, VaultPublicKey
        from pophealth.identity.rekey import rotate_vault_key
        rotate_vault_key(VaultPrivateKey.from_hex(sys.argv[1], "old"), VaultPublicKey.from_hex(sys.argv[2], "new"),
                         progress=lambda _: None)
    """,
        TEST_VAULT_PRIVATE_KEY,
        new_public,
    )
    ids = care_ids(warehouse, 1, skip=60)
    old = warehouse.pophealth("reidentify", *ids, "--purpose", GOOD[0], "--on-behalf-of", GOOD[1])
    assert old.returncode == 2 and "use the private key of that pair" in old.stderr
    new = Warehouse(warehouse.url, warehouse.landing, {**warehouse.env, "POPHEALTH_VAULT_PRIVATE_KEY": new_private})
    assert new.pophealth("reidentify", *ids, "--purpose", GOOD[0], "--on-behalf-of", GOOD[1]).returncode == 0
    # Data keys were wrapped again, and the legacy entry (test above) is now under a data key too.
    assert warehouse.query(
        "SELECT DISTINCT vault_key_version, data_key_id IS NULL FROM vault.identity "
        "UNION SELECT DISTINCT vault_key_version, false FROM vault.data_key"
    ) == [(VaultPrivateKey.from_hex(new_private, "n").version, False)]
    ((purpose, versions),) = warehouse.query(
        "SELECT purpose, ARRAY[old_key_version, new_key_version] FROM "
        "audit.key_rotation ORDER BY chain_position DESC LIMIT 1"
    )
    assert purpose == "vault"
    assert versions == [
        VaultPrivateKey.from_hex(TEST_VAULT_PRIVATE_KEY, "o").version,
        VaultPrivateKey.from_hex(new_private, "n").version,
    ]
    with psycopg.connect(warehouse.url) as conn:
        assert _breaks(conn) == []
