-- Several nodes share the events table; one at a time routes, in arrival order. The holder
-- renews its lease with every batch; a node that stops is replaced once it expires.
CREATE TABLE routing_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
