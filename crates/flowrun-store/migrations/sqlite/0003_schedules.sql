-- Schedules (§5.3): the durable state of every schedule trigger, one row each. The scheduler
-- sleeps until the smallest `next_fire_at` (an index probe, so 100,000 idle schedules cost
-- nothing), claims the due rows, fires their occurrences and advances them.
--
-- An occurrence is identified by (trigger_id, nominal instant). Every nominal instant at or
-- before `last_handled_nominal_at` is handled (fired or recorded missed), or lies before the
-- last (re)start of the schedule and never fires. `next_nominal_at` / `next_fire_at` (the
-- jittered instant) are those of the first unhandled occurrence, NULL when the rule is
-- exhausted. A claim (`claimed_by`, `claimed_at`, `claimed_until`) gives one node the row
-- until it advances it (clearing the claim) or the claim expires; the advance is fenced by
-- the claim, so an occurrence is handled once. `rule_key` fingerprints the rule the row was
-- computed from; a trigger change with a different fingerprint restarts the row.
-- Times are ms since the epoch; ids are UUID text.
CREATE TABLE schedules (
    trigger_id              TEXT PRIMARY KEY,
    owner_id                TEXT NOT NULL,
    rule_key                TEXT NOT NULL,
    -- When the schedule last (re)started.
    started_at              INTEGER NOT NULL,
    last_handled_nominal_at INTEGER NOT NULL,
    next_nominal_at         INTEGER,
    next_fire_at            INTEGER,
    claimed_by              TEXT,
    claimed_at              INTEGER,
    claimed_until           INTEGER
);

-- The scheduler's sleep and its claims: rows by due time (exhausted rows are not indexed).
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
-- Claims that may expire (a node that stopped mid-pass).
CREATE INDEX schedules_claimed ON schedules (claimed_until) WHERE claimed_until IS NOT NULL;
