-- Who can read what. The platform's roles and every grant they hold; run by `prepare_warehouse` as the
-- warehouse owner (the login that runs dbt and owns every table). Idempotent.
--
--   loader        the ingest tasks: write raw, the batch area, the opt-out list, the vault, the load audit
--   analyst       reads marts and reporting, nothing else (the tables' SELECT grants come from dbt's
--                 `grants` config, dbt_project/dbt_project.yml, reapplied on every build)
--   ig_auditor    reads audit (loads, quarantine, gates, re-identifications, key rotations, lineage)
--   care_team     reads direct_care (the case-finding list), nothing else (SELECT from dbt's `grants`)
--   reidentifier  may call the vault's request and release functions, nothing else
--   caldicott_guardian  reads the re-identification log, and approves or refuses a request held beyond the
--                 limits (vault.decide_reidentification), never their own
--   audit_keeper  (NOLOGIN, schema.sql) owns the re-identification and key-rotation logs and the vault's functions
-- Nobody but the owner reads restricted (the opt-out list, the transit -> purpose id mapping) or raw.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['loader', 'analyst', 'ig_auditor', 'reidentifier', 'care_team', 'caldicott_guardian'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', name);
        END IF;
    END LOOP;
END $$;

-- The loads work as loader (SET ROLE). On PostgreSQL 16 a non-superuser owner that created the role may
-- administer it but not act as it: give it SET, without INHERIT, so its own rights stay its own. PostgreSQL 15
-- (Debian 12's, the one `./dev.sh cluster` runs) has no such options: plain membership, which gives the owner
-- nothing it lacks (loader's rights are a subset of the owner's).
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        -- (on 16 the creator is already a member, with ADMIN but without SET: membership alone is not enough)
        IF current_setting('server_version_num')::int >= 160000 THEN
            IF NOT pg_has_role(current_user, 'loader', 'SET') THEN
                EXECUTE format('GRANT loader TO %I WITH INHERIT FALSE, SET TRUE', current_user);
            END IF;
        ELSIF NOT pg_has_role(current_user, 'loader', 'MEMBER') THEN
            EXECUTE format('GRANT loader TO %I', current_user);
        END IF;
    END IF;
END $$;

-- dbt creates these itself; creating them here lets the schema grants exist before the first build.
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS intermediate;
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS reporting;
CREATE SCHEMA IF NOT EXISTS direct_care;
CREATE SCHEMA IF NOT EXISTS reference;

-- Nobody gets anything by default: not in the public schema, not on functions.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA audit FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA vault FROM PUBLIC;

-- loader
GRANT USAGE ON SCHEMA raw, restricted, audit, vault TO loader;
GRANT USAGE, CREATE ON SCHEMA load_batch TO loader;
GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA raw TO loader;
GRANT SELECT, INSERT, DELETE ON restricted.optout TO loader;
REVOKE ALL ON restricted.pseudonym, restricted.purpose_key FROM PUBLIC, loader, analyst, ig_auditor, reidentifier, care_team;
-- A load's row is written once, then only its outcome moves on: which file it was, when it started, and its
-- id are never the loader's to change.
REVOKE UPDATE ON audit.load FROM loader;
GRANT SELECT, INSERT ON audit.load TO loader;
GRANT UPDATE (status, message, finished_at, published_at, superseded_by, key_version, rows_read, rows_loaded,
              rows_quarantined, rows_opted_out, rows_test_range, rows_unlinked, extra_columns, vault_entries,
              covers_from, covers_to)
    ON audit.load TO loader;
GRANT SELECT, INSERT ON audit.quarantine, audit.optout_applied, audit.gate_result TO loader;
GRANT INSERT, DELETE ON vault.identity TO loader;            -- writes ciphertext; never reads it (nor could: public key only)
GRANT SELECT (pseudonym, kind, data_key_id) ON vault.identity TO loader;  -- to skip a stored pseudonym, remove opt-outs
-- A file's data key, wrapped (the loader can seal one, never unwrap one): written at the file's start, removed
-- with a refused file, or when it wraps no entry; never read back.
GRANT INSERT, DELETE ON vault.data_key TO loader;
GRANT SELECT (data_key_id, load_id) ON vault.data_key TO loader;
-- The load ids' sequence only: never the re-identification log's (a number drawn there would look like a gap).
REVOKE USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA audit FROM loader;
GRANT USAGE ON SEQUENCE audit.load_load_id_seq TO loader;
REVOKE ALL ON audit.reidentification, audit.reidentification_approval, audit.key_rotation FROM loader;
GRANT SELECT (purpose, new_key_version, rotation_id) ON audit.key_rotation TO loader;  -- which key the warehouse is keyed with

-- analyst: schema usage here; SELECT on each table from dbt's grants
GRANT USAGE ON SCHEMA marts, reporting TO analyst;

-- care_team: schema usage here; SELECT on each direct_care table from dbt's grants
GRANT USAGE ON SCHEMA direct_care TO care_team;

-- ig_auditor: all of audit, now and later (lineage tables are added to audit)
GRANT USAGE ON SCHEMA audit TO ig_auditor;
GRANT SELECT ON ALL TABLES IN SCHEMA audit TO ig_auditor;
ALTER DEFAULT PRIVILEGES IN SCHEMA audit GRANT SELECT ON TABLES TO ig_auditor;

-- reidentifier: the vault functions, and nothing else (they run as their owner, audit_keeper: SECURITY DEFINER)
GRANT USAGE ON SCHEMA vault TO reidentifier;
GRANT EXECUTE ON FUNCTION vault.request_reidentification(text[], text, text) TO reidentifier;
GRANT EXECUTE ON FUNCTION vault.reidentify(bigint) TO reidentifier;
GRANT EXECUTE ON FUNCTION vault.my_request(bigint) TO reidentifier;

-- caldicott_guardian: reads the re-identification log and decides on held requests
GRANT USAGE ON SCHEMA vault, audit TO caldicott_guardian;
GRANT SELECT ON audit.reidentification, audit.reidentification_approval TO caldicott_guardian;
GRANT EXECUTE ON FUNCTION vault.decide_reidentification(bigint, boolean, text) TO caldicott_guardian;

-- The logs are append-only for everyone (their owner, audit_keeper, is stopped by the triggers, and no process
-- logs in as it); nobody else inserts into them but the vault's functions and the owner's key rotations.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON audit.reidentification, audit.reidentification_approval,
    audit.key_rotation FROM PUBLIC, loader, analyst, ig_auditor, reidentifier, care_team, caldicott_guardian;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audit FROM PUBLIC, analyst, ig_auditor, reidentifier, care_team, caldicott_guardian;
