"""Rotating the linkage key: every transit pseudonym re-keyed from the vault, in one transaction, nothing re-read.

A small generated world is loaded and built under the old key, then re-keyed to a new one while an analyst
reads the marts. Afterwards every transit pseudonym is the new key's and none of the old ones is left, while
the published ids (keyed by purpose) and the metrics are unchanged; no marts are built and no personal data
is loaded before the opt-out list is loaded again.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
from pathlib import Path

import psycopg
import pytest

from pophealth.config import environment
from pophealth.identity.keys import LinkageKey, VaultPrivateKey
from pophealth.identity.pseudonymise import Pseudonymiser
from pophealth.identity.vault import VaultOpener

from .conftest import (
    PURPOSE_KEYS_ENV,
    TEST_KEY,
    TEST_VAULT_PRIVATE_KEY,
    TEST_VAULT_PUBLIC_KEY,
    WITHOUT_DATA_TESTS,
    marts_built_from,
    published_id,
    synth_world,
)

pytestmark = pytest.mark.integration

NEW_KEY = "9e" * 32


def expected_person_id(identity: str, key_hex: str) -> str:
    kind, _, value = identity.partition(":")
    if kind == "nhs":
        return hmac.new(bytes.fromhex(key_hex), value.encode("ascii"), hashlib.sha256).hexdigest()
    source, _, local_id = value.partition("|")
    prefix = {"la": "person|", "spell": "spell|"}[kind]
    return Pseudonymiser(LinkageKey.from_hex(key_hex, "test")).local(source, prefix + local_id).value


class Rotated:
    """What was seen before, during and after the rotation."""


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    home = tmp_path_factory.mktemp("rotation")
    landing = synth_world(home, population=300, seed=12)
    with marts_built_from(landing, home, TEST_KEY, timeout=900, dbt_args=WITHOUT_DATA_TESTS) as url:
        with environment(POPHEALTH_DATABASE_URL=url, POPHEALTH_HOME=str(home / "state"), **PURPOSE_KEYS_ENV):
            yield _rotate(url, landing, home)


def _snapshot(conn: psycopg.Connection) -> dict:
    return {
        "metrics": conn.execute("""SELECT metric_code, period_start, period_end, geography_code, numerator,
                                          denominator, value FROM marts.bcf_metrics ORDER BY 1, 2, 3, 4""").fetchall(),
        "tiers": conn.execute(
            "SELECT risk_tier, count(*) FROM marts.risk_stratification GROUP BY 1 ORDER BY 1"
        ).fetchall(),
        "people": conn.execute("SELECT count(*), count(*) FILTER (WHERE is_linked) FROM marts.person").fetchone(),
    }


def _rotate(url: str, landing: Path, home: Path) -> Rotated:
    from pophealth.identity.purposes import PublishedIdsRefused
    from pophealth.identity.rekey import RotationRefused, rotate_linkage_key
    from pophealth.marts.build import dbt_build

    seen = Rotated()
    seen.url, seen.landing, seen.home = url, landing, home
    with psycopg.connect(url, autocommit=True) as conn:
        seen.before = _snapshot(conn)
        seen.old_pseudonyms = [
            r[0]
            for r in conn.execute(
                "SELECT nhs_number_key FROM raw.gp_register UNION SELECT spell_key FROM raw.apc_episode "
                "UNION SELECT la_person_key FROM raw.cld_event"
            )
        ]
    old, new, vault_key = (
        LinkageKey.from_hex(TEST_KEY, "old"),
        LinkageKey.from_hex(NEW_KEY, "new"),
        VaultPrivateKey.from_hex(TEST_VAULT_PRIVATE_KEY, "vault"),
    )
    try:
        rotate_linkage_key(LinkageKey.from_hex("01" * 32, "wrong"), new, vault_key, progress=lambda _: None)
    except RotationRefused as exc:
        seen.wrong_old_key = str(exc)

    def analyst_reads_during_rotation() -> None:
        analyst = url.replace("postgres:", "analyst:", 1) if "postgres:" in url else url
        with psycopg.connect(analyst, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '500ms'")
            try:
                conn.execute("SELECT count(*) FROM marts.person").fetchone()
                seen.analyst_during = "read"
            except psycopg.errors.LockNotAvailable:
                seen.analyst_during = "waited"

    seen.rotation = rotate_linkage_key(
        old, new, vault_key, progress=lambda _: None, before_commit=analyst_reads_during_rotation
    )
    with psycopg.connect(url, autocommit=True) as conn:
        seen.after_rekey = _snapshot(conn)
    try:
        dbt_build()
        seen.rebuild = "built"
    except PublishedIdsRefused as exc:
        seen.rebuild = str(exc)
    return seen


def test_a_wrong_old_key_is_refused_and_changes_nothing(rotated):
    assert "not with the old key given" in rotated.wrong_old_key
    assert TEST_KEY not in rotated.wrong_old_key and "01" * 32 not in rotated.wrong_old_key


def test_an_analyst_reads_the_marts_throughout_and_sees_the_same_ids(rotated):
    # The marts hold ids keyed by purpose, which the rotation does not touch: nothing to wait for, no mixture.
    assert rotated.analyst_during == "read"
    assert rotated.after_rekey == rotated.before


def test_every_transit_pseudonym_is_the_new_keys_and_every_published_id_is_unchanged(rotated):
    with (rotated.landing / "answer_key" / "people.csv").open(newline="") as handle:
        identities = [r["identity"] for r in csv.DictReader(handle)]
    with psycopg.connect(rotated.url) as conn:
        published = {r[0] for r in conn.execute("SELECT person_id FROM marts.person")}
        transit_of_published = {
            r[0]
            for r in conn.execute(
                """SELECT m.transit_key FROM restricted.pseudonym m
               JOIN marts.person p ON p.person_id = m.secondary_use_id"""
            )
        }
        versions = conn.execute(
            "SELECT DISTINCT key_version FROM raw.apc_episode UNION SELECT DISTINCT key_version FROM raw.gp_register"
        ).fetchall()
    assert published == {published_id("secondary_use", expected_person_id(i, TEST_KEY)) for i in identities}
    assert transit_of_published == {expected_person_id(i, NEW_KEY) for i in identities}
    assert versions == [(LinkageKey.from_hex(NEW_KEY, "new").version,)]


def test_every_vault_entry_is_encrypted_again_under_one_new_data_key_and_opens_under_its_new_pseudonym(rotated):
    # A new pseudonym is new associated data: each entry is encrypted again, under the rotation's own data key;
    # the loads' data keys go with the entries they wrapped.
    opener = VaultOpener(VaultPrivateKey.from_hex(TEST_VAULT_PRIVATE_KEY, "vault"))
    with psycopg.connect(rotated.url) as conn:
        entries = conn.execute(
            "SELECT v.pseudonym, v.kind, v.nonce, v.ciphertext, k.data_key_id, k.load_id, k.wrapped "
            "FROM vault.identity v LEFT JOIN vault.data_key k USING (data_key_id)"
        ).fetchall()
        data_keys = conn.execute("SELECT load_id FROM vault.data_key").fetchall()
    assert data_keys == [(None,)]
    assert entries and all(e[4] is not None for e in entries)
    for pseudonym, kind, nonce, ciphertext, *data_key in entries[:: max(1, len(entries) // 200)]:
        clear = opener.decrypt(kind, pseudonym, nonce, ciphertext, (data_key[0], data_key[1], data_key[2])).decode()
        if kind == "nhs":
            assert expected_person_id(f"nhs:{clear}", NEW_KEY) == pseudonym


def test_no_old_pseudonym_is_left_in_any_table(rotated):
    sample = rotated.old_pseudonyms[:: max(1, len(rotated.old_pseudonyms) // 40)]
    with psycopg.connect(rotated.url) as conn:
        tables = conn.execute(
            """SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'
               AND table_schema NOT IN ('pg_catalog', 'information_schema', 'audit')"""
        ).fetchall()
        for schema, table in tables:
            for pseudonym in sample:
                ((hits,),) = conn.execute(
                    f'SELECT count(*) FROM "{schema}"."{table}" t WHERE strpos(t::text, %s) > 0', (pseudonym,)
                )
                assert hits == 0, f"{schema}.{table} still holds an old pseudonym"


def test_no_marts_are_built_until_the_opt_out_list_is_loaded_again(rotated):
    # The rotation empties the opt-out list (its people need not be in the vault): a build then could not leave
    # them out of the secondary-use marts, so it refuses, and the marts keep their state.
    assert "no national data opt-out list is in force" in rotated.rebuild


def test_the_rotation_is_in_the_audit_log_without_the_mapping(rotated):
    with psycopg.connect(rotated.url) as conn:
        old_version, new_version, mapped = conn.execute(
            "SELECT old_key_version, new_key_version, pseudonyms_mapped FROM audit.key_rotation"
        ).fetchone()
        leftovers = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%rekey%'").fetchone()[0]
    assert (old_version, new_version) == (rotated.rotation.old_version, rotated.rotation.new_version)
    assert mapped == rotated.rotation.pseudonyms_mapped > 0
    assert leftovers == 0


def test_the_loader_refuses_the_old_key_and_personal_data_before_the_opt_outs_are_reloaded(rotated, monkeypatch):
    from pophealth.ingest.load import LoadRefused, publish_load, stage_extract

    apc = sorted(rotated.landing.glob("apc_*.csv"))[0]
    resubmission = rotated.home / "resubmission"
    resubmission.mkdir(exist_ok=True)
    for reference in ("ref_postcode_lookup.csv",):
        (resubmission / reference).write_bytes((rotated.landing / reference).read_bytes())
    # A resubmission of the same episodes (one byte more, so not a duplicate) replaces the earlier file.
    (resubmission / apc.name).write_bytes(apc.read_bytes() + b"\n")

    monkeypatch.setenv("POPHEALTH_VAULT_PUBLIC_KEY", TEST_VAULT_PUBLIC_KEY)  # a load needs no more
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", TEST_KEY)
    with pytest.raises(LoadRefused, match="not the warehouse's key"):
        stage_extract(resubmission / apc.name)
    monkeypatch.setenv("POPHEALTH_LINKAGE_KEY", NEW_KEY)
    with pytest.raises(LoadRefused, match="opt-out"):
        stage_extract(resubmission / apc.name)
    optouts = sorted(rotated.landing.glob("optouts_*.csv"))[-1]
    outcome = stage_extract(optouts)
    assert outcome.status == "validated"
    publish_load(outcome.load_id)
    outcome = stage_extract(resubmission / apc.name)
    publish_load(outcome.load_id)
    from pophealth.marts.build import dbt_build

    assert dbt_build().returncode == 0
    with psycopg.connect(rotated.url) as conn:
        unknown = conn.execute(
            """SELECT count(*) FROM raw.apc_episode a WHERE a.load_id = %s AND a.nhs_number_key IS NOT NULL
               AND NOT EXISTS (SELECT FROM restricted.optout o WHERE o.nhs_number_key = a.nhs_number_key)
               AND NOT EXISTS (SELECT FROM restricted.pseudonym m
                               JOIN marts.person p ON p.person_id = m.secondary_use_id
                               WHERE m.transit_key = a.nhs_number_key)""",
            (outcome.load_id,),
        ).fetchone()[0]
        after = _snapshot(conn)
    assert outcome.rows_loaded > 0 and unknown == 0
    assert after == rotated.before  # the same episodes again: the metrics, tiers and people are as they were
