-- API keys: only the SHA-256 of a key is stored.
CREATE TABLE api_keys (
    key_hash   TEXT PRIMARY KEY,
    owner_id   TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Definitions (triggers, actions, flows with their action tree, devices) as JSON documents.
-- The server keeps them in memory and writes through; queries run on the in-memory copy.
CREATE TABLE definitions (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    doc        TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Idempotency-Key records (§1.9); `state` is 'running' while the first request executes.
CREATE TABLE idempotency (
    owner_id    TEXT NOT NULL,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    status      INTEGER,
    body        BLOB,
    location    TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner_id, method, route, idem_key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);

-- Server-wide settings (e.g. the artifact signing key).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
