-- Jobs, one row each, and every distinct event received for them: the same tables and columns as
-- SQLite's 0001, in PostgreSQL types. JSON columns stay text so a result is served byte for byte as sent.
CREATE TABLE jobs (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- stable order for listings and cursors
    job_id        text NOT NULL UNIQUE,
    kind          text NOT NULL,
    status        text NOT NULL,
    result        text,            -- JSON: {"images": [...]} or {"article": {...}}
    metadata      text,            -- JSON: model_name, generation_time_seconds
    error_message text,
    created_at    timestamptz NOT NULL,  -- when the gateway first saw the job
    updated_at    timestamptz NOT NULL,
    completed_at  timestamptz
);
CREATE INDEX jobs_by_status ON jobs (status, seq);

CREATE TABLE job_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- global, increasing, never reused
    -- Checked at commit, so an event can be recorded before the job row it creates.
    job_id        text NOT NULL REFERENCES jobs (job_id) DEFERRABLE INITIALLY DEFERRED,
    status        text NOT NULL,
    timestamp     timestamptz NOT NULL,  -- the sender's
    received_at   timestamptz NOT NULL,
    outcome       text NOT NULL,         -- applied | stale
    event_key     text NOT NULL UNIQUE,  -- kind:job_id:status:timestamp; the last guard of exactly-once
    delivery_id   text UNIQUE,           -- the sender's webhook-id, when there is one
    metadata      text,
    error_message text
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
