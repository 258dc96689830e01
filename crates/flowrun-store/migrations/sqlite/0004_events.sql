-- Ingested events (§5.4). `seq` is the arrival order the router follows; `routed_at` is set
-- in the transaction that inserts the executions the event caused (routed exactly once).
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    owner_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    device_id   TEXT,
    payload     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    actor_id    TEXT,
    routed_at   INTEGER
);
CREATE INDEX events_unrouted ON events (seq) WHERE routed_at IS NULL;
