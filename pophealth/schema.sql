-- The warehouse tables the loader owns. Idempotent: safe to run on every load.
-- Nothing identifiable is stored: NHS numbers become person_id (keyed hash), local identifiers become
-- keyed pseudonyms, dates of birth become year and month, postcodes become LSOA and locality.
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS restricted;   -- opt-out pseudonyms: never granted to analysts
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
    status             text NOT NULL,   -- loading, validated, published, gate_failed, rejected, duplicate, superseded
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
CREATE INDEX IF NOT EXISTS load_feed_period ON audit.load (feed, provider, period_end);

CREATE TABLE IF NOT EXISTS audit.quarantine (
    load_id     bigint NOT NULL REFERENCES audit.load (load_id),
    source_row  bigint NOT NULL,       -- 1 = the first data row after the header
    column_name text,
    reason      text NOT NULL          -- never the offending value
);
CREATE INDEX IF NOT EXISTS quarantine_load ON audit.quarantine (load_id);

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

-- Reference data: public geography and population estimates (not personal). Postcodes are not kept:
-- the lookup is used in memory to reduce a postcode to its LSOA, and only LSOA -> locality is stored.
CREATE TABLE IF NOT EXISTS raw.ref_lsoa (
    load_id       bigint NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    lsoa_code     text NOT NULL,
    locality_code text NOT NULL,
    locality_name text
);

CREATE TABLE IF NOT EXISTS raw.ref_population (
    load_id    bigint NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    year       smallint NOT NULL,
    lsoa_code  text NOT NULL,
    sex        text NOT NULL,
    age        smallint NOT NULL,   -- 90 means 90 and over
    population integer NOT NULL
);
