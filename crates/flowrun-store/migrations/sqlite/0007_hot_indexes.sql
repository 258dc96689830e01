-- Fewer index pages written per run (every index a row enters is at least one page of each
-- commit's WAL frames):
-- - rows without a device never enter the one-running-run-per-device index (NULLs were
--   indexed, though never constrained, and every device-less run went in and out of it);
-- - one index of running rows by holder and lease expiry serves lease renewal and the reaper,
--   instead of one for each.
DROP INDEX executions_device_running;
CREATE UNIQUE INDEX executions_device_running ON executions (device_id)
    WHERE status = 'running' AND device_id IS NOT NULL;
DROP INDEX executions_lease_owner;
DROP INDEX executions_lease_expiry;
CREATE INDEX executions_running ON executions (lease_owner, lease_expires_at)
    WHERE status = 'running';
