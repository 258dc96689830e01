-- Outbound webhooks (§3.10, §5.17): endpoints, deliveries (the durable retry queue) and the
-- attempts of each delivery. Ids are UUID text with collation "C" (text order = UUID order);
-- times are ms since the epoch.
CREATE TABLE webhook_endpoints (
    id               TEXT COLLATE "C" PRIMARY KEY,
    owner_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    url              TEXT,
    description      TEXT,
    -- JSON array of strings; [] = every event type.
    event_types      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('ACTIVE', 'DISABLED', 'DELETED')),
    health           TEXT NOT NULL CHECK (health IN ('healthy', 'failing', 'blocked')),
    blocked_at       BIGINT,
    blocked_reason   TEXT,
    secret           TEXT NOT NULL,
    created_by       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    -- Health bookkeeping: `dead` deliveries since the last success, and when the endpoint
    -- started failing (NULL while healthy).
    consecutive_dead BIGINT NOT NULL DEFAULT 0,
    failing_since    BIGINT
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at, id);

-- A `pending` delivery is a queue item due at `next_attempt_at`; a claim pushes that time
-- forward by a lease, so the delivery of a node that dies mid-attempt is retried.
CREATE TABLE webhook_deliveries (
    id               TEXT COLLATE "C" PRIMARY KEY,
    owner_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    source           TEXT NOT NULL,
    occurred_at      BIGINT NOT NULL,
    -- The envelope's `data` (JSON).
    data             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'success', 'skipped', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error       TEXT,
    duration_ms      BIGINT,
    is_test          BOOLEAN NOT NULL,
    created_at       BIGINT NOT NULL,
    completed_at     BIGINT,
    created_by       TEXT,
    next_attempt_at  BIGINT,
    lease_owner      TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner_id, created_at, id);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    delivery_id      TEXT NOT NULL,
    attempt_no       INTEGER NOT NULL,
    sent_at          BIGINT NOT NULL,
    request_url      TEXT NOT NULL,
    request_method   TEXT NOT NULL,
    -- JSON objects of header name → value.
    request_headers  TEXT,
    request_body     TEXT,
    signed           BOOLEAN NOT NULL,
    response_status  INTEGER,
    response_headers TEXT,
    response_snippet TEXT,
    duration_ms      BIGINT,
    error            TEXT,
    PRIMARY KEY (delivery_id, attempt_no)
);
