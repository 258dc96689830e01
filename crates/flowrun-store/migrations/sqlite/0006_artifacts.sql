-- Artifacts (§5.18): screenshot bytes, kept in the database so that every node can serve
-- them through the signed `/artifacts/{token}` route. Times are ms since the epoch.
CREATE TABLE artifacts (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    mime_type    TEXT NOT NULL,
    bytes        BLOB NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX artifacts_execution ON artifacts (execution_id);

-- Self-healing repair records (§5.15, §4.8); one episode = the records of one (flow,
-- episode), one per attempt.
CREATE TABLE repairs (
    id                  TEXT PRIMARY KEY,
    owner_id            TEXT NOT NULL,
    flow_id             TEXT NOT NULL,
    episode             INTEGER NOT NULL,
    attempt             INTEGER NOT NULL,
    max_attempts        INTEGER NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'running', 'canary', 'promoting',
                                                        'repaired', 'failed', 'escalated')),
    source_execution_id TEXT NOT NULL,
    failed_step_index   INTEGER NOT NULL,
    original_slug       TEXT NOT NULL,
    candidate_slug      TEXT NOT NULL,
    device_id           TEXT,
    agent_run_id        TEXT,
    chat_session_id     TEXT,
    -- Verdict JSON.
    verdict             TEXT,
    error               TEXT,
    started_at          INTEGER,
    finished_at         INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    UNIQUE (flow_id, episode, attempt)
);
