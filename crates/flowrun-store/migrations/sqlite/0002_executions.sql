-- Executions (§5.7): the durable queue and the run history in one table. A `pending` row is a
-- queue item; a claim makes it `running` under a lease (`lease_owner` until
-- `lease_expires_at`), and every later write by the claiming node is fenced by
-- (status = 'running', lease_owner, attempt). Ids are UUID text (lowercase, hyphenated), so
-- text order is UUID order; times are ms since the epoch.
CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL,
    flow_id          TEXT NOT NULL,
    trigger_id       TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('pending', 'running', 'success', 'failed', 'cancelled', 'skipped', 'invalid')),
    device_id        TEXT,
    invocation_id    TEXT,
    event_id         TEXT,
    error            TEXT,
    flow_name        TEXT,
    trigger_name     TEXT,
    created_by       TEXT,
    enqueued_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- The reference time of §1.7 (startedAt, else the enqueue time) that lists filter and sort
    -- on. A stored generated column, so every write that changes started_at keeps it right.
    ref_at           INTEGER NOT NULL GENERATED ALWAYS AS (COALESCE(started_at, enqueued_at)) STORED,
    attempt          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    graph_hash       TEXT,
    -- Opaque JSON: what the engine needs to run the row (fixed at enqueue) and its progress.
    snapshot         TEXT NOT NULL,
    state            TEXT NOT NULL,
    -- Folded `flowName\ntriggerName\nerror`; `search` is instr() on it.
    search_text      TEXT NOT NULL
);

-- Claims: pending rows in FIFO order (enqueued_at, id).
CREATE INDEX executions_claim ON executions (enqueued_at, id) WHERE status = 'pending';
-- Claims take only the oldest pending row of a device (so its runs keep their order): this
-- answers "is there an older pending row of this device" with one probe.
CREATE INDEX executions_pending_device ON executions (device_id, enqueued_at, id)
    WHERE status = 'pending' AND device_id IS NOT NULL;
-- A device runs one execution at a time; claims check this, the index makes it a hard rule
-- (NULL device ids are distinct, so device-free rows are not constrained).
CREATE UNIQUE INDEX executions_device_running ON executions (device_id) WHERE status = 'running';
-- GET /executions and /executions/metrics: one owner's rows by reference time.
CREATE INDEX executions_owner_ref ON executions (owner_id, ref_at, id);
-- Invocation dedupe, and a flow's pending rows when it is archived.
CREATE INDEX executions_flow_invocation ON executions (flow_id, invocation_id);
-- Lease renewal by the holding node.
CREATE INDEX executions_lease_owner ON executions (lease_owner) WHERE lease_owner IS NOT NULL;
-- The reaper: running rows by lease expiry.
CREATE INDEX executions_lease_expiry ON executions (lease_expires_at) WHERE status = 'running';
