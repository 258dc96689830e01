-- Artifacts (§5.18): screenshot bytes, kept in the database so that every node can serve
-- them through the signed `/artifacts/{token}` route. Times are ms since the epoch.
CREATE TABLE artifacts (
    id           TEXT COLLATE "C" PRIMARY KEY,
    owner_id     TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    mime_type    TEXT NOT NULL,
    bytes        BYTEA NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX artifacts_execution ON artifacts (execution_id);

-- Self-healing repair records (§5.15, §4.8); one episode = the records of one (flow,
-- episode), one per attempt.
CREATE TABLE repairs (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    owner_id            TEXT NOT NULL,
    flow_id             TEXT NOT NULL,
    episode             BIGINT NOT NULL,
    attempt             BIGINT NOT NULL,
    max_attempts        BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'running', 'canary', 'promoting',
                                                        'repaired', 'failed', 'escalated')),
    source_execution_id TEXT NOT NULL,
    failed_step_index   BIGINT NOT NULL,
    original_slug       TEXT NOT NULL,
    candidate_slug      TEXT NOT NULL,
    device_id           TEXT,
    agent_run_id        TEXT,
    chat_session_id     TEXT,
    -- Verdict JSON.
    verdict             TEXT,
    error               TEXT,
    started_at          BIGINT,
    finished_at         BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (flow_id, episode, attempt)
);
