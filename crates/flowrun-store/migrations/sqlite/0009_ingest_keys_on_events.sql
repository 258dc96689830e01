-- The `Idempotency-Key` of an ingest request (§1.9) lives on the event it stored instead of in
-- `idempotency`: its replay is `{"eventId": id}` with 202, so the event row holds the whole
-- record. A keyed ingest then writes one row and one index entry instead of an event plus a
-- key record with two indexes. Records written before move onto their events.
ALTER TABLE events ADD COLUMN idem_key TEXT;
ALTER TABLE events ADD COLUMN idem_fingerprint TEXT;
UPDATE events
SET idem_key = i.idem_key, idem_fingerprint = i.fingerprint
FROM idempotency AS i
WHERE i.method = 'POST' AND i.route = '/events/ingest' AND i.state = 'done'
  AND i.owner_id = events.owner_id
  AND json_extract(CAST(i.body AS TEXT), '$.eventId') = events.id;
DELETE FROM idempotency WHERE method = 'POST' AND route = '/events/ingest';
-- Key first: a group commit looks its keys up with one `idem_key IN (…)`.
CREATE UNIQUE INDEX events_idem_key ON events (idem_key, owner_id) WHERE idem_key IS NOT NULL;
