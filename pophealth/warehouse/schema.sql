-- The warehouse tables the loader owns. Idempotent: safe to run on every load.
-- Nothing identifiable is stored: NHS numbers become nhs_number_key (keyed hash), local identifiers become
-- keyed pseudonyms, dates of birth become year and month, postcodes become LSOA and locality.
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS restricted;   -- the opt-out list, the purpose mapping: the owner (dbt) alone reads it
CREATE SCHEMA IF NOT EXISTS audit;
CREATE SCHEMA IF NOT EXISTS load_batch;   -- one table per load, between validation and publication

CREATE TABLE IF NOT EXISTS audit.load (
    load_id            bigserial PRIMARY KEY,
    run_id             text,
    feed               text NOT NULL,
    provider           text,            -- procode or LA code; null for feeds with one sender
    period_end         date,
    file_name          text NOT NULL,
    file_sha256        text,
    file_bytes         bigint,
    key_version        text,
    status             text NOT NULL,   -- loading, validated, published, gate_failed, rejected, failed (a crash), duplicate, superseded, interrupted, stale (an opt-out list older than the one in force), rekeyed
    rows_read          bigint NOT NULL DEFAULT 0,
    rows_loaded        bigint NOT NULL DEFAULT 0,
    rows_quarantined   bigint NOT NULL DEFAULT 0,
    rows_opted_out     bigint NOT NULL DEFAULT 0,
    rows_test_range    bigint NOT NULL DEFAULT 0,
    rows_unlinked      bigint NOT NULL DEFAULT 0,
    extra_columns      text[] NOT NULL DEFAULT '{}',
    message            text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    published_at       timestamptz,
    superseded_by      bigint REFERENCES audit.load (load_id)
);
ALTER TABLE audit.load ADD COLUMN IF NOT EXISTS vault_entries bigint NOT NULL DEFAULT 0;  -- identities stored, encrypted
CREATE INDEX IF NOT EXISTS load_feed_period ON audit.load (feed, provider, period_end);
-- Where a load's data starts and ends, from its rows (contract v2: the file name says only where it ends): the
-- first day of the earliest month its rows cover, and its period end. A register snapshot covers its one date.
ALTER TABLE audit.load ADD COLUMN IF NOT EXISTS covers_from date;
ALTER TABLE audit.load ADD COLUMN IF NOT EXISTS covers_to date;

CREATE TABLE IF NOT EXISTS audit.quarantine (
    load_id     bigint NOT NULL REFERENCES audit.load (load_id),
    source_row  bigint NOT NULL,       -- 1 = the first data row after the header
    column_name text,
    reason      text NOT NULL          -- never the offending value
);
CREATE INDEX IF NOT EXISTS quarantine_load ON audit.quarantine (load_id);

-- Contract version 1 only (opt-outs deleted from raw when a list was published); kept as history, no longer
-- written: audit.optout_by_purpose counts what each marts build leaves out.
CREATE TABLE IF NOT EXISTS audit.optout_applied (
    optout_load_id bigint NOT NULL REFERENCES audit.load (load_id),
    table_name     text NOT NULL,
    rows_removed   bigint NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);

-- The quality gates' results (pophealth/quality/gates.py): one row per rule per gated load. Never a value from
-- the file: counts, thresholds and row numbers only.
CREATE TABLE IF NOT EXISTS audit.gate_result (
    load_id          bigint NOT NULL,
    run_id           text,
    feed             text NOT NULL,
    suite            text NOT NULL,          -- <feed>_load: the Great Expectations suite the rule ran in
    check_id         text NOT NULL,          -- the rule id in expectations/registry.yml
    expectation      text,                   -- the Great Expectations class
    severity         text NOT NULL CHECK (severity IN ('error', 'warn')),
    category         text NOT NULL,          -- conformance | completeness | plausibility (OHDSI DQD)
    status           text NOT NULL CHECK (status IN ('passed', 'failed', 'not_applicable')),
    observed         text,                   -- what was measured (a count or share), never a row's value
    observed_number  numeric,
    threshold        text,
    unexpected_count bigint,
    row_count        bigint,
    example_rows     bigint[] NOT NULL DEFAULT '{}',   -- source_row numbers (1 = first data row)
    note             text,
    checked_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit.gate_result ADD COLUMN IF NOT EXISTS subcategory text;  -- DQD: value, relational, ...
ALTER TABLE audit.gate_result ADD COLUMN IF NOT EXISTS context text;      -- DQD: verification | validation
CREATE INDEX IF NOT EXISTS gate_result_load ON audit.gate_result (load_id);
CREATE INDEX IF NOT EXISTS gate_result_checked_at ON audit.gate_result (checked_at);

-- Each dbt node's result, from Cosmos's callback after each task (pophealth/marts/build.py).
CREATE TABLE IF NOT EXISTS audit.dbt_result (
    run_id          text,
    unique_id       text NOT NULL,
    resource_type   text NOT NULL,
    status          text NOT NULL,
    execution_time  double precision,
    rows_affected   bigint,
    failures        bigint,
    message         text,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS restricted.optout (
    nhs_number_key text PRIMARY KEY,
    load_id   bigint NOT NULL
);

-- Pseudonyms by purpose (pophealth/identity/purposes.py): each transit pseudonym of raw (nhs_number_key, or a local
-- pseudonym that stands for a person or a spell) and its published ids, one per purpose, each keyed under a
-- key no source holds. The keys never reach the database; this table is read by the owner (dbt) alone.
CREATE TABLE IF NOT EXISTS restricted.pseudonym (
    transit_key      text PRIMARY KEY,
    secondary_use_id text NOT NULL UNIQUE,   -- marts, reporting
    direct_care_id   text NOT NULL UNIQUE,   -- direct_care; the only ids re-identification accepts
    assigned_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS restricted.purpose_key (
    purpose     text PRIMARY KEY CHECK (purpose IN ('secondary_use', 'direct_care')),
    key_version text NOT NULL,               -- the fingerprint of the key the ids were made with
    set_at      timestamptz NOT NULL DEFAULT now()
);

-- Per marts build: how many people each purpose left out under the opt-out list in force (counts only).
CREATE TABLE IF NOT EXISTS audit.optout_by_purpose (
    built_at          timestamptz NOT NULL DEFAULT now(),
    run_id            text,
    optout_load_id    bigint,
    optout_period_end date,
    purpose           text NOT NULL,
    people_on_list    bigint NOT NULL,
    people_left_out   bigint NOT NULL
);

-- Each publication of the marts (build_marts's publish, in the transaction that swaps the schemas in), with the
-- newest load it was built on: a build the assets start when nothing was published since is skipped.
CREATE TABLE IF NOT EXISTS audit.marts_publication (
    publication_id  bigserial PRIMARY KEY,
    published_at    timestamptz NOT NULL DEFAULT now(),
    run_id          text,
    newest_load_id  bigint
);

CREATE TABLE IF NOT EXISTS raw.gp_register (
    load_id                 bigint NOT NULL,
    source_row              bigint NOT NULL,
    key_version             text NOT NULL,
    loaded_at               timestamptz NOT NULL DEFAULT now(),
    nhs_number_key          text NOT NULL,
    nhs_number_check        text NOT NULL,
    birth_year              smallint,
    birth_month             smallint,
    sex                     text,
    lsoa_code               text,
    locality_code           text,
    gp_practice_code        text,
    registration_start_date date,
    registration_end_date   date,
    date_of_death           date
);

CREATE TABLE IF NOT EXISTS raw.apc_episode (
    load_id              bigint NOT NULL,
    source_row           bigint NOT NULL,
    key_version          text NOT NULL,
    loaded_at            timestamptz NOT NULL DEFAULT now(),
    nhs_number_key       text,
    nhs_number_check     text NOT NULL,
    episode_key          text NOT NULL,   -- pseudonym of procode|epikey
    spell_key            text NOT NULL,   -- pseudonym of procode|spell_id
    nhs_number_status    text,
    birth_year           smallint,
    birth_month          smallint,
    sex                  text,
    lsoa_code            text,
    locality_code        text,
    gp_practice_code     text,
    procode              text NOT NULL,
    admidate             date NOT NULL,
    disdate              date,
    epistart             date NOT NULL,
    epiend               date,
    epiorder             smallint NOT NULL,
    admimeth             text NOT NULL,
    admisorc             text,
    disdest              text,
    dismeth              text,
    classpat             text,
    mainspef             text,
    tretspef             text,
    diag_01 text, diag_02 text, diag_03 text, diag_04 text, diag_05 text,
    diag_06 text, diag_07 text, diag_08 text, diag_09 text, diag_10 text,
    diag_11 text, diag_12 text, diag_13 text, diag_14 text, diag_15 text,
    diag_16 text, diag_17 text, diag_18 text, diag_19 text, diag_20 text,
    discharge_ready_date date
);

CREATE TABLE IF NOT EXISTS raw.cld_event (
    load_id                     bigint NOT NULL,
    source_row                  bigint NOT NULL,
    key_version                 text NOT NULL,
    loaded_at                   timestamptz NOT NULL DEFAULT now(),
    nhs_number_key              text,
    nhs_number_check            text NOT NULL,
    la_person_key               text NOT NULL,   -- pseudonym of LA_Code|LA_Person_Unique_Identifier
    la_code                     text NOT NULL,
    reporting_period_start_date date,
    reporting_period_end_date   date NOT NULL,
    client_type                 text,
    gender                      text,
    ethnicity                   text,
    birth_year                  smallint,
    birth_month                 smallint,
    date_of_death               date,
    lsoa_code                   text,
    locality_code               text,
    primary_support_reason      text,
    accommodation_status        text,
    event_type                  text NOT NULL,
    event_reference             text,
    event_start_date            date NOT NULL,
    event_end_date              date,
    event_outcome               text,
    request_route_of_access     text,
    assessment_type             text,
    service_type                text,
    service_component           text,
    delivery_mechanism          text,
    review_reason               text,
    unit_cost                   numeric,
    cost_frequency_unit_type    text,
    planned_units_per_week      numeric
);

-- One name per meaning (docs/architecture.md, "Names"): a warehouse made before issue 20 has the NHS number's
-- transit pseudonym as person_id, a published id's name, and the purpose mapping's as transit_id; renamed in
-- place, so an existing warehouse keeps its rows.
DO $$
DECLARE
    renamed text[];
BEGIN
    FOREACH renamed SLICE 1 IN ARRAY ARRAY[
        ['raw', 'gp_register', 'person_id', 'nhs_number_key'],
        ['raw', 'apc_episode', 'person_id', 'nhs_number_key'],
        ['raw', 'cld_event', 'person_id', 'nhs_number_key'],
        ['restricted', 'optout', 'person_id', 'nhs_number_key'],
        ['restricted', 'pseudonym', 'transit_id', 'transit_key']] LOOP
        IF EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = renamed[1] AND table_name = renamed[2] AND column_name = renamed[3]) THEN
            EXECUTE format('ALTER TABLE %I.%I RENAME COLUMN %I TO %I', renamed[1], renamed[2], renamed[3], renamed[4]);
        END IF;
    END LOOP;
END $$;

-- Reference data: public geography and population estimates (not personal). A person's postcode is never
-- kept: it is reduced in memory to its LSOA. The lookup's own postcodes (every postcode of the area: public
-- geography, no one's address) are kept in raw.ref_postcode as one-way digests, as last published, for the
-- loader only: personal loads reduce postcodes through the published lookup, never a file in the landing folder.
CREATE TABLE IF NOT EXISTS raw.ref_postcode (
    load_id       bigint NOT NULL,
    postcode_digest text NOT NULL, -- SHA-256 of the normalised postcode (pseudonymise.postcode_digest): no postcode in clear
    lsoa_code     text NOT NULL,
    locality_code text NOT NULL,
    la_code       text
);

CREATE TABLE IF NOT EXISTS raw.ref_lsoa (
    load_id       bigint NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    lsoa_code     text NOT NULL,
    locality_code text NOT NULL,
    locality_name text
);
ALTER TABLE raw.ref_lsoa ADD COLUMN IF NOT EXISTS la_code text;  -- the council (contract v2); empty: the lookup has none

CREATE TABLE IF NOT EXISTS raw.ref_population (
    load_id    bigint NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    year       smallint NOT NULL,
    lsoa_code  text NOT NULL,
    sex        text NOT NULL,
    age        smallint NOT NULL,   -- 90 means 90 and over
    population integer NOT NULL
);

-- The re-identification vault (pophealth/identity/vault.py): pseudonym -> the identifier it was made from,
-- encrypted by envelope: AES-256-GCM under a data key per file, the data key sealed (HPKE) to the vault's public
-- key, whose private half the warehouse never holds. `nhs` rows serve re-identification for direct care; `local`
-- rows (a source's own ids) let the key custodian re-key local pseudonyms when the linkage key is rotated.
-- Nobody reads these tables directly (pophealth/warehouse/access.sql).
CREATE SCHEMA IF NOT EXISTS vault;
-- One row per file's data key (or per rotation's), stored only wrapped: useless without the vault's private key.
CREATE TABLE IF NOT EXISTS vault.data_key (
    data_key_id         uuid PRIMARY KEY,
    wrapped             bytea NOT NULL,      -- HPKE to the vault public key, bound to id, load and key version
    vault_key_version   text NOT NULL,
    load_id             bigint,              -- the load that made it; NULL for a rotation's
    made_at             timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS vault.identity (
    pseudonym           text PRIMARY KEY,    -- nhs_number_key, or a local pseudonym
    kind                text NOT NULL CHECK (kind IN ('nhs', 'local')),
    nonce               bytea NOT NULL,      -- AES-GCM's nonce (the legacy form: HPKE's encapsulated key)
    ciphertext          bytea NOT NULL,      -- bound to kind and pseudonym (associated data)
    vault_key_version   text NOT NULL,
    linkage_key_version text NOT NULL,
    load_id             bigint NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now()
);
-- The envelope (issue 19): NULL for an entry written before it, one HPKE per entry (read, never written).
ALTER TABLE vault.identity ADD COLUMN IF NOT EXISTS data_key_id uuid;
CREATE INDEX IF NOT EXISTS identity_data_key ON vault.identity (data_key_id);

-- Every entry's data key exists, and a data key that opens an entry is never deleted: what a foreign key says,
-- checked once per statement instead of once per row. A foreign key's check of each row was a third of the
-- time to publish a load's entries (1.1 of 3.4 s for 191,685 entries; issue 19). The entries' keys are locked as
-- a foreign key locks them (FOR KEY SHARE), so a key cannot be deleted while a load that uses it is unfinished;
-- a delete waiting for that load then sees its entries and is refused (the loads delete at READ COMMITTED).
ALTER TABLE vault.identity DROP CONSTRAINT IF EXISTS identity_data_key_id_fkey;
CREATE OR REPLACE FUNCTION vault.entries_have_their_data_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing bigint;
BEGIN
    PERFORM FROM vault.data_key k WHERE k.data_key_id IN (SELECT data_key_id FROM entries) FOR KEY SHARE;
    SELECT count(*) INTO missing FROM (SELECT DISTINCT data_key_id FROM entries WHERE data_key_id IS NOT NULL) e
    WHERE NOT EXISTS (SELECT FROM vault.data_key k WHERE k.data_key_id = e.data_key_id);
    IF missing > 0 THEN
        RAISE EXCEPTION 'vault.identity: % data key(s) of the entries written are not in vault.data_key', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
-- enable_seqscan off: the planner, counting most entries under a few keys, would read the vault for each probe.
CREATE OR REPLACE FUNCTION vault.data_keys_in_use_stay() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    gone_key uuid;
BEGIN
    -- Key by key (a load removes one at most): each a probe of the entries' index, never a scan of the vault.
    FOR gone_key IN SELECT DISTINCT data_key_id FROM gone LOOP
        IF EXISTS (SELECT FROM vault.identity v WHERE v.data_key_id = gone_key)
           AND NOT EXISTS (SELECT FROM vault.data_key k WHERE k.data_key_id = gone_key) THEN
            RAISE EXCEPTION 'vault.data_key: a data key that opens vault entries cannot be removed'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
-- One trigger per event: PostgreSQL gives a transition table (the rows written, or the keys gone) to a trigger of
-- one event only.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('entries_inserted_have_keys', 'INSERT', 'identity', 'NEW TABLE AS entries', 'entries_have_their_data_keys'),
        ('entries_updated_have_keys', 'UPDATE', 'identity', 'NEW TABLE AS entries', 'entries_have_their_data_keys'),
        ('keys_deleted_not_in_use', 'DELETE', 'data_key', 'OLD TABLE AS gone', 'data_keys_in_use_stay'),
        ('keys_updated_not_in_use', 'UPDATE', 'data_key', 'OLD TABLE AS gone', 'data_keys_in_use_stay')
    ) AS trigger_of (name, event, on_table, transition, function_name) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON vault.%I', t.name, t.on_table);
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON vault.%I REFERENCING %s FOR EACH STATEMENT
                        EXECUTE FUNCTION vault.%I()', t.name, t.event, t.on_table, t.transition, t.function_name);
    END LOOP;
END $$;

-- The keeper of the re-identification log and the key-rotation log: a role nobody logs in as. It owns those
-- tables, their triggers and the vault's functions, so no login role (loader, reidentifier, caldicott_guardian,
-- ig_auditor, analyst, care_team) can disable, drop or replace any of them. A non-superuser warehouse owner is
-- made a member to run this file; `pophealth status` names every login that can act as the keeper.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_keeper') THEN
        CREATE ROLE audit_keeper NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'audit_keeper', 'USAGE') THEN
        EXECUTE format('GRANT audit_keeper TO %I', current_user);
    END IF;
END $$;
GRANT USAGE ON SCHEMA audit, vault, restricted TO audit_keeper;

-- The closed list of re-identification reasons (from governance/data_sharing_register.yml) and the limits
-- (settings POPHEALTH_REIDENTIFY_*), written by prepare_warehouse; the vault's functions read them.
CREATE TABLE IF NOT EXISTS vault.reidentification_purpose (
    purpose     text PRIMARY KEY,
    description text NOT NULL
);
CREATE TABLE IF NOT EXISTS vault.reidentification_limit (
    only_row                  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    people_per_request        integer NOT NULL CHECK (people_per_request > 0),         -- beyond: approval
    people_per_login_per_day  integer NOT NULL CHECK (people_per_login_per_day > 0),   -- beyond: approval
    most_people_with_approval integer NOT NULL CHECK (most_people_with_approval > 0)   -- beyond: refused
);
GRANT SELECT ON vault.reidentification_purpose, vault.reidentification_limit TO audit_keeper;
GRANT SELECT ON restricted.pseudonym TO audit_keeper;
GRANT SELECT (pseudonym, kind, nonce, ciphertext, vault_key_version, data_key_id) ON vault.identity TO audit_keeper;
GRANT SELECT (data_key_id, wrapped, load_id) ON vault.data_key TO audit_keeper;

-- Every re-identification request: who, when, which people, why, and what the database decided (released,
-- awaiting_approval, refused, with the reason). Append-only and hash-chained (audit.chain_row).
CREATE TABLE IF NOT EXISTS audit.reidentification (
    request_id     bigserial PRIMARY KEY,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    requested_by   text NOT NULL DEFAULT session_user,  -- the database login that asked
    on_behalf_of   text,                                -- the clinician or team, as stated
    purpose        text NOT NULL,
    person_ids     text[] NOT NULL,
    people_in_vault integer NOT NULL,
    txid           bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint
);
ALTER TABLE audit.reidentification ADD COLUMN IF NOT EXISTS people_named integer;
ALTER TABLE audit.reidentification ADD COLUMN IF NOT EXISTS decision text NOT NULL DEFAULT 'released'
    CHECK (decision IN ('released', 'awaiting_approval', 'refused'));
ALTER TABLE audit.reidentification ADD COLUMN IF NOT EXISTS reason text;

-- A Caldicott guardian's decision on a request held beyond the limits: another login than the requester's.
CREATE TABLE IF NOT EXISTS audit.reidentification_approval (
    approval_id bigserial PRIMARY KEY,
    request_id  bigint NOT NULL REFERENCES audit.reidentification (request_id),
    decided_at  timestamptz NOT NULL DEFAULT now(),
    decided_by  text NOT NULL DEFAULT session_user,
    decision    text NOT NULL CHECK (decision IN ('approved', 'refused')),
    note        text NOT NULL
);

-- Key rotations: which key replaced which, when, by whom, and how many rows each table re-keyed. The
-- mapping itself is never stored.
CREATE TABLE IF NOT EXISTS audit.key_rotation (
    rotation_id      bigserial PRIMARY KEY,
    rotated_at       timestamptz NOT NULL DEFAULT now(),
    rotated_by       text NOT NULL DEFAULT session_user,
    old_key_version  text NOT NULL,
    new_key_version  text NOT NULL,
    pseudonyms_mapped bigint NOT NULL,
    rows_rekeyed     jsonb NOT NULL
);
ALTER TABLE audit.key_rotation ADD COLUMN IF NOT EXISTS purpose text NOT NULL DEFAULT 'linkage';  -- or a purpose key, or vault

-- The hash chain: each row's row_hash = sha256(previous row's row_hash || the row as jsonb text, without the
-- two hashes), in chain_position order, starting from 64 zeros. A deleted, changed, inserted-out-of-turn or
-- forged row breaks it; pophealth/governance/chain.py verifies it from the rows alone (never with a function of this
-- database, which a superuser could replace). Rows from before the chain existed have no position.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['reidentification', 'reidentification_approval', 'key_rotation'] LOOP
        EXECUTE format('ALTER TABLE audit.%I ADD COLUMN IF NOT EXISTS chain_position bigint UNIQUE', t);
        EXECUTE format('ALTER TABLE audit.%I ADD COLUMN IF NOT EXISTS previous_hash text', t);
        EXECUTE format('ALTER TABLE audit.%I ADD COLUMN IF NOT EXISTS row_hash text', t);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION audit.chain_hash(previous_hash text, canonical text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(sha256(convert_to(previous_hash || canonical, 'UTF8')), 'hex')
$$;

-- BEFORE INSERT: stamps the row with the time and the login (TG_ARGV: the time column, the login column), so
-- a row cannot be back-dated or signed by another, then chains it to the last row. One writer at a time.
CREATE OR REPLACE FUNCTION audit.chain_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' AS $$
DECLARE
    last_position bigint;
    last_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pophealth audit chain ' || TG_TABLE_NAME));
    NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], now(), TG_ARGV[1], session_user));
    EXECUTE format('SELECT chain_position, row_hash FROM %I.%I WHERE chain_position IS NOT NULL
                    ORDER BY chain_position DESC LIMIT 1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO last_position, last_hash;
    NEW.chain_position := coalesce(last_position, 0) + 1;
    NEW.previous_hash := coalesce(last_hash, repeat('0', 64));
    NEW.row_hash := NULL;
    NEW.row_hash := audit.chain_hash(NEW.previous_hash, (to_jsonb(NEW) - 'row_hash' - 'previous_hash')::text);
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

DO $$
DECLARE
    t text;
    stamp text[];
BEGIN
    FOREACH t IN ARRAY ARRAY['reidentification', 'reidentification_approval', 'key_rotation'] LOOP
        stamp := CASE t WHEN 'reidentification' THEN ARRAY['requested_at', 'requested_by']
                        WHEN 'reidentification_approval' THEN ARRAY['decided_at', 'decided_by']
                        ELSE ARRAY['rotated_at', 'rotated_by'] END;
        EXECUTE format('DROP TRIGGER IF EXISTS chain_rows ON audit.%I', t);
        EXECUTE format('CREATE TRIGGER chain_rows BEFORE INSERT ON audit.%I FOR EACH ROW
                        EXECUTE FUNCTION audit.chain_row(%L, %L)', t, stamp[1], stamp[2]);
        EXECUTE format('DROP TRIGGER IF EXISTS append_only_rows ON audit.%I', t);
        EXECUTE format('CREATE TRIGGER append_only_rows BEFORE UPDATE OR DELETE ON audit.%I
                        FOR EACH ROW EXECUTE FUNCTION audit.refuse_change()', t);
        EXECUTE format('DROP TRIGGER IF EXISTS append_only_truncate ON audit.%I', t);
        EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', t);
    END LOOP;
END $$;

-- Step 1 of re-identification: record the request and the database's decision on it. Nothing is released until
-- this row is committed. A request is refused (and the refusal logged, ids that are not 64 hex characters
-- left out of the log: they could be NHS numbers typed by mistake) unless every id is a current direct-care id
-- (direct_care.case_finding), the purpose is on the closed list, and on_behalf_of names someone. Beyond the
-- people-per-request or per-login daily limit, it waits for a Caldicott guardian's approval.
DROP FUNCTION IF EXISTS vault.request_reidentification(text[], text, text);
CREATE FUNCTION vault.request_reidentification(person_ids text[], purpose text, on_behalf_of text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
    limits vault.reidentification_limit%ROWTYPE;
    named integer := coalesce(cardinality(person_ids), 0);
    well_formed text[];
    today integer;
    verdict text := 'released';
    why text;
BEGIN
    SELECT * INTO limits FROM vault.reidentification_limit;
    IF NOT FOUND THEN
        RAISE EXCEPTION 're-identification is not set up (no limits): run pophealth setup';
    END IF;
    SELECT coalesce(array_agg(u.i ORDER BY u.n), '{}') INTO well_formed
        FROM unnest(coalesce(person_ids, '{}')) WITH ORDINALITY u(i, n) WHERE u.i ~ '^[0-9a-f]{64}$';
    IF named = 0 THEN
        why := 'name at least one person_id';
    ELSIF named > limits.most_people_with_approval THEN
        why := format('a request names at most %s people, even with approval; this one names %s',
                      limits.most_people_with_approval, named);
        well_formed := '{}';  -- not kept: far too many to be a request for care
    ELSIF cardinality(well_formed) <> named OR (SELECT count(DISTINCT i) FROM unnest(well_formed) i) <> named THEN
        why := 'every person_id is 64 hexadecimal characters, each named once; some are not';
    ELSIF NOT EXISTS (SELECT FROM vault.reidentification_purpose p WHERE p.purpose = btrim(request_reidentification.purpose)) THEN
        why := format('the purpose must be one of: %s',
                      (SELECT string_agg(p.purpose, ', ' ORDER BY p.purpose) FROM vault.reidentification_purpose p));
    ELSIF on_behalf_of IS NULL OR length(btrim(on_behalf_of)) < 3 THEN
        why := 'say on behalf of whom (the clinician or team) the re-identification is made';
    ELSIF EXISTS (SELECT FROM restricted.pseudonym p WHERE p.secondary_use_id = ANY (well_formed)) THEN
        why := 'a secondary-use person_id (from marts or reporting) cannot be re-identified: re-identification '
               'serves direct care only; use the person_id of direct_care.case_finding';
    ELSIF EXISTS (SELECT FROM unnest(well_formed) i
                  WHERE NOT EXISTS (SELECT FROM restricted.pseudonym p WHERE p.direct_care_id = i)) THEN
        why := 'every person_id must be a current direct-care id (direct_care.case_finding); some are not';
    ELSE
        SELECT coalesce(sum(a.people_named), 0) INTO today FROM audit.reidentification a
        WHERE a.requested_by = session_user AND a.decision <> 'refused'
          AND a.requested_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        IF named > limits.people_per_request OR today + named > limits.people_per_login_per_day THEN
            verdict := 'awaiting_approval';
            why := format('beyond the limits (%s people a request, %s a login a day; %s already today): '
                          'a Caldicott guardian must approve request before anything is released',
                          limits.people_per_request, limits.people_per_login_per_day, today);
        END IF;
    END IF;
    IF why IS NOT NULL AND verdict = 'released' THEN
        verdict := 'refused';
    END IF;
    INSERT INTO audit.reidentification (on_behalf_of, purpose, person_ids, people_named, people_in_vault, decision, reason)
    VALUES (on_behalf_of, coalesce(left(btrim(purpose), 200), ''), well_formed, named,
            CASE WHEN verdict = 'refused' THEN 0 ELSE
            (SELECT count(*) FROM restricted.pseudonym p JOIN vault.identity v
                ON v.kind = 'nhs' AND v.pseudonym = p.transit_key
             WHERE p.direct_care_id = ANY (well_formed)) END,
            verdict, why)
    RETURNING request_id INTO request;
    RETURN request;
END $$;

-- A login's own request (to collect it once approved).
DROP FUNCTION IF EXISTS vault.my_request(bigint);
CREATE FUNCTION vault.my_request(request bigint)
RETURNS TABLE (request_id bigint, person_ids text[], decision text, reason text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.request_id, a.person_ids, a.decision, a.reason FROM audit.reidentification a
    WHERE a.request_id = request AND a.requested_by = session_user
$$;

-- A Caldicott guardian approves or refuses a request held beyond the limits; never their own request.
DROP FUNCTION IF EXISTS vault.decide_reidentification(bigint, boolean, text);
CREATE FUNCTION vault.decide_reidentification(request bigint, approve boolean, note text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r audit.reidentification%ROWTYPE;
BEGIN
    SELECT * INTO r FROM audit.reidentification a WHERE a.request_id = request;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no re-identification request %', request;
    END IF;
    IF r.decision <> 'awaiting_approval' THEN
        RAISE EXCEPTION 'request % is %, not awaiting approval', request, r.decision;
    END IF;
    IF r.requested_by = session_user THEN
        RAISE EXCEPTION 'a request is approved by someone else than its requester' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT FROM audit.reidentification_approval d WHERE d.request_id = request) THEN
        RAISE EXCEPTION 'request % has been decided already', request;
    END IF;
    IF note IS NULL OR length(btrim(note)) < 10 THEN
        RAISE EXCEPTION 'say why (a note of at least 10 characters)';
    END IF;
    INSERT INTO audit.reidentification_approval (request_id, decision, note)
    VALUES (request, CASE WHEN approve THEN 'approved' ELSE 'refused' END, btrim(note));
    RETURN CASE WHEN approve THEN 'approved' ELSE 'refused' END;
END $$;

-- Step 2: the one function that reads the vault. It releases the ciphertexts of a request made by the same
-- login, already committed to the audit log (so that rolling back a transaction can never hide a read),
-- released by the database or approved by a Caldicott guardian, in the last 15 minutes, whose row is the
-- chain's own (a row forged with the trigger disabled does not chain). Decryption happens outside the
-- database, with the vault's private key (the ciphertext is bound to the transit pseudonym, returned for that;
-- its data key comes wrapped, NULL for an entry of the legacy form).
DROP FUNCTION IF EXISTS vault.reidentify(bigint);
CREATE FUNCTION vault.reidentify(request bigint)
RETURNS TABLE (person_id text, bound_to text, nonce bytea, ciphertext bytea, vault_key_version text,
               data_key_id uuid, data_key_load_id bigint, wrapped_key bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' AS $$
DECLARE
    r audit.reidentification%ROWTYPE;
    approval audit.reidentification_approval%ROWTYPE;
    since timestamptz;
BEGIN
    SELECT * INTO r FROM audit.reidentification a WHERE a.request_id = request;
    IF NOT FOUND OR r.requested_by <> session_user THEN
        RAISE EXCEPTION 'no re-identification request % by %', request, session_user;
    END IF;
    IF pg_xact_status(r.txid::text::xid8) IS DISTINCT FROM 'committed' THEN
        RAISE EXCEPTION 'request % is not committed to the audit log yet: commit it, then read', request;
    END IF;
    IF r.row_hash IS NULL OR r.row_hash <> audit.chain_hash(r.previous_hash, (to_jsonb(r) - 'row_hash' - 'previous_hash')::text)
       OR r.previous_hash IS DISTINCT FROM coalesce(
            (SELECT a.row_hash FROM audit.reidentification a WHERE a.chain_position = r.chain_position - 1),
            CASE WHEN r.chain_position = 1 THEN repeat('0', 64) END) THEN
        RAISE EXCEPTION 'request % is not in the audit log''s hash chain: nothing is released', request
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF r.decision = 'refused' THEN
        RAISE EXCEPTION 'refused: %', r.reason USING ERRCODE = 'insufficient_privilege';
    END IF;
    since := r.requested_at;
    IF r.decision = 'awaiting_approval' THEN
        SELECT * INTO approval FROM audit.reidentification_approval d WHERE d.request_id = request;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'held for approval: %; then collect it with pophealth reidentify --request %', r.reason, request
                USING ERRCODE = 'insufficient_privilege';
        ELSIF approval.decision <> 'approved' THEN
            RAISE EXCEPTION 'refused by the Caldicott guardian %: %', approval.decided_by, approval.note
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        since := approval.decided_at;
    END IF;
    IF since < now() - interval '15 minutes' THEN
        RAISE EXCEPTION 'request % has expired: make a new request', request;
    END IF;
    RETURN QUERY SELECT p.direct_care_id, v.pseudonym, v.nonce, v.ciphertext, v.vault_key_version,
                        v.data_key_id, k.load_id, k.wrapped
                 FROM restricted.pseudonym p JOIN vault.identity v ON v.kind = 'nhs' AND v.pseudonym = p.transit_key
                      LEFT JOIN vault.data_key k ON k.data_key_id = v.data_key_id
                 WHERE p.direct_care_id = ANY (r.person_ids);
END $$;

-- The keeper owns the logs, their triggers' functions and the vault's functions (SECURITY DEFINER: they run
-- with its rights, which are the grants above and nothing else). PostgreSQL gives an object to a role only if
-- that role may create in its schema: for the moment of the hand-over, and no longer.
GRANT CREATE ON SCHEMA audit, vault TO audit_keeper;
ALTER TABLE audit.reidentification OWNER TO audit_keeper;
ALTER TABLE audit.reidentification_approval OWNER TO audit_keeper;
ALTER TABLE audit.key_rotation OWNER TO audit_keeper;
ALTER FUNCTION audit.chain_row() OWNER TO audit_keeper;
ALTER FUNCTION audit.chain_hash(text, text) OWNER TO audit_keeper;
ALTER FUNCTION audit.refuse_change() OWNER TO audit_keeper;
ALTER FUNCTION vault.request_reidentification(text[], text, text) OWNER TO audit_keeper;
ALTER FUNCTION vault.my_request(bigint) OWNER TO audit_keeper;
ALTER FUNCTION vault.decide_reidentification(bigint, boolean, text) OWNER TO audit_keeper;
ALTER FUNCTION vault.reidentify(bigint) OWNER TO audit_keeper;
REVOKE CREATE ON SCHEMA audit, vault FROM audit_keeper;
-- The warehouse owner writes key rotations (pophealth rotate-key), and reads the logs; it does not change them.
GRANT SELECT, INSERT ON audit.key_rotation TO CURRENT_USER;
GRANT SELECT ON audit.reidentification, audit.reidentification_approval TO CURRENT_USER;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA audit TO CURRENT_USER;

-- Column-level lineage (pophealth/governance/lineage.py): each published column (marts, reporting) and the source feed
-- columns behind it, direct (its value is computed from them) or indirect (they filter, join or group its
-- rows), with the relations walked through. Replaced after every marts build; read by ig_auditor.
CREATE TABLE IF NOT EXISTS audit.column_lineage (
    mart          text NOT NULL,      -- schema.table of the published model
    column_name   text NOT NULL,
    source_feed   text NOT NULL,      -- the extract feed (apc, cld, gp_register, ...), or `seed reference.<name>`
    source_column text NOT NULL,      -- the extract contract's column ("(the file)": the file as a whole)
    kind          text NOT NULL CHECK (kind IN ('direct', 'indirect')),
    path          text NOT NULL,      -- mart <- intermediate <- staging <- raw
    run_id        text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS column_lineage_mart ON audit.column_lineage (mart, column_name);
