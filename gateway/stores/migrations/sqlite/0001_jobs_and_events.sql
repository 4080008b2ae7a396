-- Jobs, one row each, and every distinct event received for them.
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- stable order for listings and cursors
    job_id        TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    result        TEXT,            -- JSON: {"images": [...]} or {"article": {...}}
    metadata      TEXT,            -- JSON: model_name, generation_time_seconds
    error_message TEXT,
    created_at    TEXT NOT NULL,   -- ISO-8601 UTC, when the gateway first saw the job
    updated_at    TEXT NOT NULL,
    completed_at  TEXT
);
CREATE INDEX jobs_by_kind ON jobs (kind, seq);
CREATE INDEX jobs_by_status ON jobs (status, seq);

CREATE TABLE job_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- global, increasing, never reused
    -- Checked at commit, so an event can be recorded before the job row it creates.
    job_id        TEXT NOT NULL REFERENCES jobs (job_id) DEFERRABLE INITIALLY DEFERRED,
    status        TEXT NOT NULL,
    timestamp     TEXT NOT NULL,   -- the sender's
    received_at   TEXT NOT NULL,
    outcome       TEXT NOT NULL,   -- applied | stale
    event_key     TEXT NOT NULL UNIQUE,  -- kind:job_id:status:timestamp; the last guard of exactly-once
    delivery_id   TEXT UNIQUE,           -- the sender's webhook-id, when there is one
    metadata      TEXT,
    error_message TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
