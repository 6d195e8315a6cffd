-- The warehouse tables the loader owns. Idempotent: safe to run on every load.
-- Nothing identifiable is stored: NHS numbers become person_id (keyed hash), local identifiers become
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

-- The quality gates' results (pophealth/gates.py): one row per rule per gated load. Never a value from
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

-- Each dbt node's result, from Cosmos's callback after each task (pophealth/marts.py).
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
    person_id text PRIMARY KEY,
    load_id   bigint NOT NULL
);

-- Pseudonyms by purpose (pophealth/purposes.py): each transit pseudonym of raw (person_id, or a local
-- pseudonym that stands for a person or a spell) and its published ids, one per purpose, each keyed under a
-- key no source holds. The keys never reach the database; this table is read by the owner (dbt) alone.
CREATE TABLE IF NOT EXISTS restricted.pseudonym (
    transit_id       text PRIMARY KEY,
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

CREATE TABLE IF NOT EXISTS raw.gp_register (
    load_id                 bigint NOT NULL,
    source_row              bigint NOT NULL,
    key_version             text NOT NULL,
    loaded_at               timestamptz NOT NULL DEFAULT now(),
    person_id               text NOT NULL,
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
    person_id            text,
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
    person_id                   text,
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

-- The re-identification vault (pophealth/vault.py): pseudonym -> the identifier it was made from,
-- encrypted with AES-256-GCM under the vault key, which the warehouse never holds. `nhs` rows serve
-- re-identification for direct care; `local` rows (a source's own ids) let the key custodian re-key local
-- pseudonyms when the linkage key is rotated. Nobody reads this table directly (pophealth/access.sql).
CREATE SCHEMA IF NOT EXISTS vault;
CREATE TABLE IF NOT EXISTS vault.identity (
    pseudonym           text PRIMARY KEY,    -- person_id, or a local pseudonym
    kind                text NOT NULL CHECK (kind IN ('nhs', 'local')),
    nonce               bytea NOT NULL,
    ciphertext          bytea NOT NULL,      -- bound to kind and pseudonym (associated data)
    vault_key_version   text NOT NULL,
    linkage_key_version text NOT NULL,
    load_id             bigint NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now()
);

-- Every re-identification request: who, when, which people, why. Append-only: no role may change or
-- delete a row (grants in access.sql; these triggers stop even the owner).
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

CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS append_only_rows ON audit.reidentification;
CREATE TRIGGER append_only_rows BEFORE UPDATE OR DELETE ON audit.reidentification
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
DROP TRIGGER IF EXISTS append_only_truncate ON audit.reidentification;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.reidentification
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

-- Step 1 of re-identification: record the request. Nothing is released until this row is committed. Only
-- direct-care ids (direct_care.case_finding) are accepted: a secondary-use id (marts, reporting) is refused.
CREATE OR REPLACE FUNCTION vault.request_reidentification(person_ids text[], purpose text, on_behalf_of text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request bigint;
BEGIN
    IF purpose IS NULL OR length(btrim(purpose)) < 10 THEN
        RAISE EXCEPTION 'state the purpose of the re-identification (at least 10 characters)';
    END IF;
    IF person_ids IS NULL OR cardinality(person_ids) = 0 THEN
        RAISE EXCEPTION 'name at least one person_id';
    END IF;
    IF EXISTS (SELECT FROM restricted.pseudonym p WHERE p.secondary_use_id = ANY (person_ids)) THEN
        RAISE EXCEPTION 'a secondary-use person_id (from marts or reporting) cannot be re-identified: '
                        're-identification serves direct care only; use the person_id of direct_care.case_finding'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO audit.reidentification (on_behalf_of, purpose, person_ids, people_in_vault)
    VALUES (on_behalf_of, btrim(purpose), person_ids,
            (SELECT count(*) FROM restricted.pseudonym p JOIN vault.identity v
                ON v.kind = 'nhs' AND v.pseudonym = p.transit_id
             WHERE p.direct_care_id = ANY (person_ids)))
    RETURNING request_id INTO request;
    RETURN request;
END $$;

-- Step 2: the one function that reads the vault. It releases the ciphertexts of a request made by the same
-- login in the last 15 minutes and already committed to the audit log, so that rolling back a transaction
-- can never hide a read. Decryption happens outside the database, with the vault key (the ciphertext is bound
-- to the transit pseudonym, which is returned for that alone).
DROP FUNCTION IF EXISTS vault.reidentify(bigint);
CREATE FUNCTION vault.reidentify(request bigint)
RETURNS TABLE (person_id text, bound_to text, nonce bytea, ciphertext bytea, vault_key_version text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r audit.reidentification%ROWTYPE;
BEGIN
    SELECT * INTO r FROM audit.reidentification a WHERE a.request_id = request;
    IF NOT FOUND OR r.requested_by <> session_user THEN
        RAISE EXCEPTION 'no re-identification request % by %', request, session_user;
    END IF;
    IF pg_xact_status(r.txid::text::xid8) IS DISTINCT FROM 'committed' THEN
        RAISE EXCEPTION 'request % is not committed to the audit log yet: commit it, then read', request;
    END IF;
    IF r.requested_at < now() - interval '15 minutes' THEN
        RAISE EXCEPTION 'request % has expired: make a new request', request;
    END IF;
    RETURN QUERY SELECT p.direct_care_id, v.pseudonym, v.nonce, v.ciphertext, v.vault_key_version
                 FROM restricted.pseudonym p JOIN vault.identity v ON v.kind = 'nhs' AND v.pseudonym = p.transit_id
                 WHERE p.direct_care_id = ANY (r.person_ids);
END $$;

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
ALTER TABLE audit.key_rotation ADD COLUMN IF NOT EXISTS purpose text NOT NULL DEFAULT 'linkage';  -- or a purpose key

-- Column-level lineage (pophealth/lineage.py): each published column (marts, reporting) and the source feed
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
