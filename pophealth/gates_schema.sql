-- The quality gate's own table (pophealth/gates.py applies this itself, idempotently, before every gate run).
-- One row per rule per gated load. Never a value from the file: counts, thresholds and row numbers only.
CREATE SCHEMA IF NOT EXISTS audit;

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
