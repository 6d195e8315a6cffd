"""Pseudonyms by purpose, tried as an attacker and as each role would (issue 16, contract version 2).

Every source holds the linkage key, and the synthetic world draws its NHS numbers from the 999 block of about
a million numbers: an attacker at any source can hash them all in seconds. So nothing an analyst, a care team
or an auditor reads may hold a transit pseudonym; what they see is keyed again per purpose, under keys no
source holds. The national data opt-out keeps people out of every secondary use, not out of their own care.

A small generated world is loaded and its marts built on a real embedded PostgreSQL; each test then reads
as one of the platform's roles. The last tests change the opt-out list in force and rebuild.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from psycopg import errors

from pophealth.contract.identifiers import nhs_check_digit

from .conftest import (
    TEST_KEY,
    WITHOUT_DATA_TESTS,
    isolated_env,
    marts_built_from,
    published_id,
    synth_world,
    with_vault_private_key,
)
from .conftest import BuiltWarehouse as Warehouse

pytestmark = pytest.mark.integration

PUBLISHED_SCHEMAS = ("marts", "reporting", "direct_care")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    home = tmp_path_factory.mktemp("purposes")
    env = isolated_env(home)
    landing = synth_world(home, population=400, seed=16)
    with marts_built_from(landing, home, TEST_KEY, timeout=900, dbt_args=WITHOUT_DATA_TESTS) as url:
        warehouse = Warehouse(url, landing, with_vault_private_key(env))
        warehouse.home = home
        yield warehouse


def transit(number: str) -> str:
    """The transit pseudonym of an NHS number: what every source can compute with the linkage key."""
    return hmac.new(bytes.fromhex(TEST_KEY), number.encode("ascii"), hashlib.sha256).hexdigest()


def optout_numbers(landing: Path) -> list[str]:
    numbers = []
    for path in sorted(landing.glob("optouts_*.csv"))[-1:]:
        with path.open(newline="") as handle:
            numbers += [r["nhs_number"].replace(" ", "").replace("-", "") for r in csv.DictReader(handle)]
    return numbers


def opted_out_in_feeds(warehouse) -> list[str]:
    """The transit pseudonyms of opted-out people who have records in the feeds (raw)."""
    return [
        r[0]
        for r in warehouse.query(
            """SELECT DISTINCT o.nhs_number_key FROM restricted.optout o
           WHERE EXISTS (SELECT FROM raw.gp_register g WHERE g.nhs_number_key = o.nhs_number_key)
              OR EXISTS (SELECT FROM raw.apc_episode a WHERE a.nhs_number_key = o.nhs_number_key)
              OR EXISTS (SELECT FROM raw.cld_event c WHERE c.nhs_number_key = o.nhs_number_key)"""
        )
    ]


def published_values(warehouse) -> set[str]:
    """Every value of every column of every published table, as text."""
    values: set[str] = set()
    with warehouse.as_owner() as conn:
        tables = conn.execute(
            """SELECT table_schema, table_name FROM information_schema.tables
               WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE'""",
            (list(PUBLISHED_SCHEMAS),),
        ).fetchall()
        assert {s for s, _ in tables} == set(PUBLISHED_SCHEMAS)
        for schema, table in tables:
            with conn.cursor().copy(f'COPY "{schema}"."{table}" TO STDOUT') as copy:
                for block in copy:
                    for line in bytes(block).decode().splitlines():
                        values.update(line.split("\t"))
    return values


# -- 1. the transit pseudonym is never published ---------------------------------------------------------------


def test_an_attacker_with_the_linkage_key_finds_nobody_in_any_published_table(warehouse):
    # Hash every NHS number the synthetic world could have used (the whole 999 block, as an attacker at a source
    # would) under the linkage key, and look for each among every value an analyst or care team can read.
    published = published_values(warehouse)
    hashed = found = 0
    mac = hmac.new(bytes.fromhex(TEST_KEY), digestmod=hashlib.sha256)
    for stem in range(999_000_000, 1_000_000_000):
        digit = nhs_check_digit(str(stem))
        if digit is None:
            continue
        candidate = mac.copy()
        candidate.update(f"{stem}{digit}".encode("ascii"))
        hashed += 1
        found += candidate.hexdigest() in published
    assert hashed > 900_000
    assert found == 0
    # And the world's people are there under other ids: the attack failed for the right reason.
    assert len([v for v in published if len(v) == 64]) > 300


def test_no_transit_pseudonym_of_raw_is_in_any_published_table_or_the_files_of_the_run(warehouse):
    transits = {
        r[0]
        for r in warehouse.query(
            """SELECT nhs_number_key FROM raw.gp_register UNION SELECT nhs_number_key FROM raw.apc_episode
           WHERE nhs_number_key IS NOT NULL
           UNION SELECT spell_key FROM raw.apc_episode UNION SELECT episode_key FROM raw.apc_episode
           UNION SELECT la_person_key FROM raw.cld_event"""
        )
    }
    assert len(transits) > 400
    assert not transits & published_values(warehouse)
    # The files the platform wrote outside the database (dbt's target and logs, reports, lineage events).
    state = Path(warehouse.env["POPHEALTH_HOME"])
    files = [p for p in state.rglob("*") if p.is_file() and "pgdata" not in p.parts and p.stat().st_size < 50_000_000]
    assert files
    for path in files:
        text = path.read_bytes()
        assert not any(t.encode() in text for t in list(transits)[:300]), f"{path.name} holds a transit pseudonym"


# -- 2. a pseudonym per purpose, under keys no source holds ------------------------------------------------------


def test_each_purpose_has_its_own_id_and_the_two_cannot_be_joined(warehouse):
    with warehouse.as_owner() as conn:
        marts_ids = {r[0] for r in conn.execute("SELECT person_id FROM marts.person")}
        care_ids = {r[0] for r in conn.execute("SELECT person_id FROM direct_care.case_finding")}
        registered = [
            r[0]
            for r in conn.execute(
                "SELECT person_key FROM intermediate.int_risk_scored "  # registered and alive at the as-of date
                "WHERE person_key NOT IN (SELECT nhs_number_key FROM restricted.optout) LIMIT 20"
            )
        ]
    assert len(registered) == 20
    assert marts_ids and care_ids and not marts_ids & care_ids
    for person in registered:
        # The ids are the transit pseudonym keyed under each purpose's key (worked out here independently).
        assert published_id("secondary_use", person) in marts_ids
        assert published_id("direct_care", person) in care_ids
        assert published_id("secondary_use", person) != published_id("direct_care", person)
    # No role that reads one purpose's ids can read the other's, nor the mapping.
    with warehouse.as_role("analyst") as conn:
        for refused in (
            "SELECT * FROM direct_care.case_finding",
            "SELECT * FROM restricted.pseudonym",
            "SELECT * FROM intermediate.int_direct_care_id",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(refused)
    with warehouse.as_role("care_team") as conn:
        for refused in (
            "SELECT * FROM marts.person",
            "SELECT * FROM restricted.pseudonym",
            "SELECT * FROM reporting.risk_pyramid",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(refused)


def test_the_ids_are_stable_from_build_to_build(warehouse):
    before = {r[0] for r in warehouse.query("SELECT person_id FROM marts.person")}
    rebuilt = warehouse.python("""
        from pophealth.marts.build import dbt_build
        proc = dbt_build(["--select", "person"])
        assert proc.returncode == 0, proc.stdout[-2000:]
    """)
    assert rebuilt.returncode == 0
    assert {r[0] for r in warehouse.query("SELECT person_id FROM marts.person")} == before


MAPPING = "SELECT transit_key, secondary_use_id, direct_care_id FROM restricted.pseudonym ORDER BY transit_key"
CONSTRAINTS = """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = 'restricted.pseudonym'::regclass AND contype IN ('p', 'u') ORDER BY conname"""
ASSIGN = """
    from pophealth.identity.purposes import assign_purpose_pseudonyms
    print("ASSIGNED", assign_purpose_pseudonyms().new_transit_pseudonyms)
"""


@pytest.mark.parametrize("kept", [0.95, 0.05], ids=["a few new: indexes kept up", "many new: indexes built again"])
def test_new_pseudonyms_get_the_same_ids_and_the_mapping_keeps_its_constraints(warehouse, kept):
    mapping, constraints = warehouse.query(MAPPING), warehouse.query(CONSTRAINTS)
    assert {name for name, _ in constraints} == {
        "pseudonym_pkey",
        "pseudonym_secondary_use_id_key",
        "pseudonym_direct_care_id_key",
    }
    forgotten = mapping[int(len(mapping) * kept) :]
    warehouse.query("DELETE FROM restricted.pseudonym WHERE transit_key >= %s", (forgotten[0][0],))
    warehouse.query("ANALYZE restricted.pseudonym")
    assert f"ASSIGNED {len(forgotten)}" in warehouse.python(ASSIGN).stdout
    assert warehouse.query(MAPPING) == mapping
    assert warehouse.query(CONSTRAINTS) == constraints


@pytest.mark.parametrize("kept", [0.95, 0.05], ids=["a few new: indexes kept up", "many new: indexes built again"])
def test_a_published_id_made_twice_fails_the_assignment_and_changes_nothing(warehouse, kept):
    mapping, constraints = warehouse.query(MAPPING), warehouse.query(CONSTRAINTS)
    forgotten = mapping[int(len(mapping) * kept) :]
    transit, secondary_use_id, _ = forgotten[-1]
    try:
        warehouse.query("DELETE FROM restricted.pseudonym WHERE transit_key >= %s", (forgotten[0][0],))
        # Another transit pseudonym already holds the secondary-use id the forgotten one will be given again.
        warehouse.query(
            "INSERT INTO restricted.pseudonym (transit_key, secondary_use_id, direct_care_id) VALUES (%s, %s, %s)",
            ("f" * 64, secondary_use_id, "e" * 64),
        )
        warehouse.query("ANALYZE restricted.pseudonym")
        left = warehouse.query(MAPPING)
        failed = Warehouse(warehouse.url, warehouse.landing, warehouse.env).python(
            """
            from pophealth.identity.purposes import PublishedIdsRefused, assign_purpose_pseudonyms
            try:
                assign_purpose_pseudonyms()
            except PublishedIdsRefused as exc:
                print("REFUSED", exc)
            """
        )
        assert "REFUSED a new pseudonym's published id is already another's (pseudonym_secondary_use_id_key)" in (
            failed.stdout
        )
        assert secondary_use_id not in failed.stdout + failed.stderr and transit not in failed.stdout + failed.stderr
        assert warehouse.query(MAPPING) == left
        assert warehouse.query(CONSTRAINTS) == constraints
    finally:
        warehouse.query("DELETE FROM restricted.pseudonym WHERE transit_key = %s", ("f" * 64,))
        warehouse.python(ASSIGN)
    assert warehouse.query(MAPPING) == mapping
    assert transit in {row[0] for row in mapping}


def test_no_marts_are_built_without_a_purpose_key(warehouse):
    env = {k: v for k, v in warehouse.env.items() if k != "POPHEALTH_DIRECT_CARE_KEY"}
    proc = Warehouse(warehouse.url, warehouse.landing, env).python("""
        from pophealth.marts.build import dbt_build
        from pophealth.identity.purposes import PublishedIdsRefused
        try:
            dbt_build()
        except PublishedIdsRefused as exc:
            print("REFUSED", exc)
    """)
    assert "REFUSED no direct-care key: set POPHEALTH_DIRECT_CARE_KEY" in proc.stdout


def test_a_purpose_key_other_than_the_warehouses_is_refused_naming_the_versions(warehouse):
    env = {**warehouse.env, "POPHEALTH_SECONDARY_USE_KEY": "0b" * 32}
    proc = Warehouse(warehouse.url, warehouse.landing, env).python("""
        from pophealth.identity.purposes import PublishedIdsRefused, assign_purpose_pseudonyms
        try:
            assign_purpose_pseudonyms()
        except PublishedIdsRefused as exc:
            print("REFUSED", exc)
    """)
    assert "REFUSED the secondary-use key in use (version s-" in proc.stdout
    assert "0b" * 32 not in proc.stdout


# -- 4. direct care: the case-finding list, read by care_team, re-identified by its ids only ----------------------


def test_the_care_team_reads_direct_care_and_nothing_else(warehouse):
    with warehouse.as_role("care_team") as conn:
        assert conn.execute("SELECT count(*) FROM direct_care.case_finding").fetchone()[0] > 0
        for refused in (
            "SELECT * FROM raw.gp_register",
            "SELECT * FROM audit.load",
            "SELECT * FROM vault.identity",
            "SELECT * FROM restricted.optout",
            "SELECT * FROM marts.bcf_metrics",
            "SELECT * FROM vault.reidentify(1)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(refused)
    with warehouse.as_owner() as conn:
        readable = {
            r[0]
            for r in conn.execute(
                """SELECT DISTINCT table_schema FROM information_schema.tables
               WHERE has_table_privilege('care_team', format('%I.%I', table_schema, table_name), 'SELECT')
                 AND table_schema NOT IN ('pg_catalog', 'information_schema')"""
            )
        }
    assert readable == {"direct_care"}


def test_case_finding_ranks_everyone_registered_and_alive_in_the_pyramid(warehouse):
    ((people, very_high, high, moderate, ranks_ok),) = warehouse.query(
        """SELECT count(*), count(*) FILTER (WHERE risk_tier = 'very_high'), count(*) FILTER (WHERE risk_tier = 'high'),
                  count(*) FILTER (WHERE risk_tier = 'moderate'),
                  bool_and(risk_rank BETWEEN 1 AND (SELECT count(*) FROM direct_care.case_finding))
           FROM direct_care.case_finding"""
    )
    assert (very_high, very_high + high, very_high + high + moderate) == (
        people * 5 // 1000,
        people * 5 // 100,
        people * 20 // 100,
    )
    assert ranks_ok


def test_reidentifying_a_secondary_use_id_is_refused_clearly(warehouse):
    analyst_id = warehouse.query("SELECT person_id FROM marts.risk_stratification LIMIT 1")[0][0]
    proc = warehouse.pophealth("reidentify", analyst_id, "--purpose", "care_coordination", "--on-behalf-of", "Dr Test")
    assert proc.returncode == 2
    assert "a secondary-use person_id (from marts or reporting) cannot be re-identified" in proc.stderr
    assert "direct_care.case_finding" in proc.stderr
    care_id = warehouse.query("SELECT person_id FROM direct_care.case_finding ORDER BY risk_rank LIMIT 1")[0][0]
    proc = warehouse.pophealth("reidentify", care_id, "--purpose", "care_coordination", "--on-behalf-of", "Dr Test")
    assert proc.returncode == 0, proc.stderr
    number = proc.stdout.strip().splitlines()[-1].split()[-1]
    assert published_id("direct_care", transit(number)) == care_id


# -- 3. opt-outs by purpose -------------------------------------------------------------------------------------


def test_an_opted_out_person_is_in_case_finding_and_in_no_row_or_count_of_marts_or_reporting(warehouse):
    opted_out = opted_out_in_feeds(warehouse)
    assert opted_out, "the world has opted-out people with records in the feeds"
    published = published_values(warehouse)
    secondary = {published_id("secondary_use", p) for p in opted_out}
    assert not secondary & published
    care_ids = {r[0] for r in warehouse.query("SELECT person_id FROM direct_care.case_finding")}
    registered_living = {
        r[0]
        for r in warehouse.query(
            """SELECT person_key FROM intermediate.int_risk_scored WHERE person_key = ANY(%s)""", (opted_out,)
        )
    }
    assert registered_living, "some opted-out person is registered and alive"
    assert {published_id("direct_care", p) for p in registered_living} <= care_ids
    # Counts: the secondary-use pyramid counts everyone registered and alive but them.
    ((ranked,),) = warehouse.query("SELECT count(*) FROM marts.risk_stratification")
    assert ranked == len(care_ids) - len(registered_living)
    ((people,),) = warehouse.query("SELECT count(*) FROM marts.person")
    ((everyone,),) = warehouse.query("SELECT count(*) FROM intermediate.int_person")
    assert people == everyone - len(set(opted_out))


def test_the_build_records_how_many_people_each_purpose_left_out(warehouse):
    rows = dict(
        warehouse.query(
            """SELECT DISTINCT ON (purpose) purpose, people_left_out FROM audit.optout_by_purpose
           ORDER BY purpose, built_at DESC"""
        )
    )
    assert rows == {"secondary_use": len(set(opted_out_in_feeds(warehouse))), "direct_care": 0}
    with warehouse.as_role("ig_auditor") as conn:
        assert conn.execute("SELECT count(*) FROM audit.optout_by_purpose").fetchone()[0] >= 2


def _load(warehouse, path: Path) -> str:
    proc = warehouse.python(
        """
        import sys
        from pophealth.ingest.load import LoadRefused, publish_load, stage_extract
        try:
            outcome = stage_extract(sys.argv[1])
            publish_load(outcome.load_id)
            print("PUBLISHED")
        except LoadRefused as exc:
            print("REFUSED", exc)
    """,
        str(path),
    )
    return proc.stdout


def _rebuild(warehouse) -> None:
    warehouse.python("""
        from pophealth.marts.build import dbt_build
        proc = dbt_build()
        assert proc.returncode == 0, proc.stdout[-3000:]
    """)


def _write_list(path: Path, numbers: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["nhs_number"])
        writer.writerows([n] for n in numbers)
    return path


def test_the_latest_list_is_in_force_removal_brings_back_and_an_older_list_is_refused_as_stale(warehouse):
    landing = warehouse.home / "optouts_later"
    landing.mkdir()
    numbers = optout_numbers(warehouse.landing)
    in_feeds = set(opted_out_in_feeds(warehouse))
    leaving = next(n for n in numbers if transit(n) in in_feeds)  # someone with records who withdraws the opt-out
    back = published_id("secondary_use", transit(leaving))
    current = sorted(warehouse.landing.glob("optouts_*.csv"))[-1].name  # optouts_YYYYMMDD.csv
    dated = date(int(current[8:12]), int(current[12:14]), int(current[14:16]))
    later = f"optouts_{dated + timedelta(days=31):%Y%m%d}.csv"
    # A later list without them: they come back into the secondary-use marts at the next build.
    assert "PUBLISHED" in _load(warehouse, _write_list(landing / later, [n for n in numbers if n != leaving]))
    _rebuild(warehouse)
    assert warehouse.query("SELECT count(*) FROM marts.person WHERE person_id = %s", (back,)) == [(1,)]
    # The earlier list, delivered again late: older than the list in force, refused as stale, never in force.
    stale = _load(warehouse, _write_list(landing / current, numbers + [leaving]))
    assert "REFUSED" in stale and "stale" in stale and "before the list in force" in stale
    assert warehouse.query("SELECT status FROM audit.load WHERE feed = 'optouts' ORDER BY load_id DESC LIMIT 1") == [
        ("stale",)
    ]
    _rebuild(warehouse)
    assert warehouse.query("SELECT count(*) FROM marts.person WHERE person_id = %s", (back,)) == [(1,)]
    # A still later list with them again: they disappear from every secondary-use mart at the next build.
    even_later = f"optouts_{dated + timedelta(days=62):%Y%m%d}.csv"
    assert "PUBLISHED" in _load(warehouse, _write_list(landing / even_later, numbers))
    _rebuild(warehouse)
    assert warehouse.query("SELECT count(*) FROM marts.person WHERE person_id = %s", (back,)) == [(0,)]
    assert back not in published_values(warehouse)


def test_of_several_lists_in_the_folder_only_the_newest_is_picked_up_the_others_recorded_stale_once(warehouse):
    # Runs after the test above: the list in force is dated 62 days after the world's.
    current = sorted(warehouse.landing.glob("optouts_*.csv"))[-1].name
    dated = date(int(current[8:12]), int(current[12:14]), int(current[14:16]))
    folder = warehouse.home / "optouts_folder"
    folder.mkdir()
    numbers = optout_numbers(warehouse.landing)
    names = [f"optouts_{dated + timedelta(days=d):%Y%m%d}.csv" for d in (70, 80, 90)]
    for name in names:
        _write_list(folder / name, numbers)

    settled_at_once = Warehouse(
        warehouse.url, warehouse.landing, {**warehouse.env, "POPHEALTH_LANDING_SETTLE_SECONDS": "0"}
    )

    def discover() -> tuple[list[str], list[str]]:
        out = (
            settled_at_once.python(
                """
            import json, sys
            from pathlib import Path
            from pophealth.ingest.load import pending_extracts, stale_optout_lists
            stale = stale_optout_lists(Path(sys.argv[1]))
            print(json.dumps([[Path(p).name for p in pending_extracts(Path(sys.argv[1]), "optouts")],
                              [s.split(":")[0] for s in stale]]))
        """,
                str(folder),
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        pending, stale = json.loads(out)
        return pending, stale

    assert discover() == ([names[2]], names[:2])  # three lists: the newest only; the two others stale
    assert discover() == ([names[2]], [])  # the stale ones are recorded once
    assert "PUBLISHED" in _load(warehouse, folder / names[2])
    assert discover() == ([], [])  # a run with nothing new: nothing, nothing republished
    late = f"optouts_{dated + timedelta(days=85):%Y%m%d}.csv"
    _write_list(folder / late, numbers)
    assert discover() == ([], [late])  # a late older list: recorded stale, never picked up
    statuses = dict(
        warehouse.query("SELECT file_name, status FROM audit.load WHERE file_name = ANY(%s)", (names + [late],))
    )
    assert statuses == {names[0]: "stale", names[1]: "stale", names[2]: "published", late: "stale"}


def test_rotating_the_secondary_use_key_changes_every_marts_id_and_no_direct_care_id(warehouse):
    # Last: the warehouse's secondary-use key changes here.
    marts_before = {r[0] for r in warehouse.query("SELECT person_id FROM marts.person")}
    care_before = {r[0] for r in warehouse.query("SELECT person_id FROM direct_care.case_finding")}
    new_key = warehouse.home / "secondary_use.new.key"
    new_key.write_text("6a" * 32)
    new_key.chmod(0o600)
    proc = warehouse.pophealth("rotate-key", "--purpose", "secondary_use", "--new-key-file", str(new_key))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    marts_after = {r[0] for r in warehouse.query("SELECT person_id FROM marts.person")}
    assert len(marts_after) == len(marts_before) and not marts_after & marts_before
    assert {r[0] for r in warehouse.query("SELECT person_id FROM direct_care.case_finding")} == care_before
    ((purpose, rekeyed),) = warehouse.query(
        "SELECT purpose, pseudonyms_mapped FROM audit.key_rotation ORDER BY rotation_id DESC LIMIT 1"
    )
    assert purpose == "secondary_use" and rekeyed >= len(marts_before)
    assert "6a" * 32 not in proc.stdout + proc.stderr
    # The old key is refused from now on, naming both versions.
    refused = warehouse.python("""
        from pophealth.identity.purposes import PublishedIdsRefused, assign_purpose_pseudonyms
        try:
            assign_purpose_pseudonyms()
        except PublishedIdsRefused as exc:
            print("REFUSED", exc)
    """)
    assert "REFUSED the secondary-use key in use" in refused.stdout
