-- Cheaper execution writes. A run rewrites its row after each step; with full pages every such
-- update went to another page and into every index of the table. Room left on each page
-- (fillfactor) lets a progress write (which changes no indexed column) stay a heap-only
-- update: no index entries, and the dead version is pruned in place. The JSON documents are
-- compressed with lz4 rather than pglz (several times faster at a similar ratio).
ALTER TABLE executions SET (fillfactor = 70);
ALTER TABLE executions ALTER COLUMN state SET COMPRESSION lz4;
ALTER TABLE executions ALTER COLUMN snapshot SET COMPRESSION lz4;
-- Rows without a device never enter the one-running-run-per-device index, and one index of
-- running rows by holder and lease expiry serves lease renewal and the reaper.
DROP INDEX executions_device_running;
CREATE UNIQUE INDEX executions_device_running ON executions (device_id)
    WHERE status = 'running' AND device_id IS NOT NULL;
DROP INDEX executions_lease_owner;
DROP INDEX executions_lease_expiry;
CREATE INDEX executions_running ON executions (lease_owner, lease_expires_at)
    WHERE status = 'running';
