-- The delivery outbox: one row per applied event and enabled sink, written in the transaction that
-- applied the event, so an acknowledged webhook is never lost for delivery (see gateway/delivery/).
-- The same tables as SQLite's 0003, in PostgreSQL types.
CREATE TABLE deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sequence         bigint NOT NULL,       -- job_events.id: the event's global, increasing id
    event_id         text NOT NULL,         -- evt_<sequence>: webhook-id / Nats-Msg-Id, kept by replays
    sink             text NOT NULL,         -- http | nats
    job_id           text NOT NULL,
    kind             text NOT NULL,
    status           text NOT NULL,
    body             bytea NOT NULL,        -- the normalised event JSON, exactly what is sent
    traceparent      text,                  -- the webhook request's span, to link the delivery span to it
    state            text NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    UNIQUE (sequence, sink)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_by_job ON deliveries (job_id, sink, sequence);

-- A sink an endpoint disabled with 410 Gone: nothing is sent to it until an operator re-enables it.
CREATE TABLE delivery_sinks_disabled (
    sink        text PRIMARY KEY,
    reason      text NOT NULL,
    disabled_at timestamptz NOT NULL
);
