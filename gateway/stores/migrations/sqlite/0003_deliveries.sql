-- The delivery outbox: one row per applied event and enabled sink, written in the transaction that
-- applied the event, so an acknowledged webhook is never lost for delivery (see gateway/delivery/).
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sequence         INTEGER NOT NULL,  -- job_events.id: the event's global, increasing id
    event_id         TEXT NOT NULL,     -- evt_<sequence>: webhook-id / Nats-Msg-Id, kept by replays
    sink             TEXT NOT NULL,     -- http | nats
    job_id           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    body             BLOB NOT NULL,     -- the normalised event JSON, exactly what is sent
    traceparent      TEXT,              -- the webhook request's span, to link the delivery span to it
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,     -- ISO-8601 UTC
    lease_owner      TEXT,
    lease_expires_at TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    delivered_at     TEXT,
    UNIQUE (sequence, sink)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_by_job ON deliveries (job_id, sink, sequence);

-- A sink an endpoint disabled with 410 Gone: nothing is sent to it until an operator re-enables it.
CREATE TABLE delivery_sinks_disabled (
    sink        TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    disabled_at TEXT NOT NULL
);
