-- Coverage is declared, not discovered (C19): an export belongs to its mailbox from the
-- moment it is declared (the daemon's config, or `index PATH`), before its first read, and
-- a mailbox whose declared exports have not all read once waits for its index.
ALTER TABLE exports ADD COLUMN declared_at REAL;
UPDATE exports SET declared_at = coalesce(good_at, checked_at);

-- A mailbox with no export at all waits too, unless it is declared to have no local mail
-- (a new employee, a web-only user): then every entry is new to it.
CREATE TABLE mailboxes (
    address       TEXT PRIMARY KEY,
    no_local_mail INTEGER NOT NULL,
    declared_at   REAL NOT NULL
);

-- A first read is a baseline (C19): a source found while its export had not yet read once
-- is in the baseline until its own first successful read, and every location that read
-- finds is baseline: never an Exchange copy (C12, C14, C15), never purged.
ALTER TABLE sources ADD COLUMN baseline INTEGER NOT NULL DEFAULT 0;
ALTER TABLE locations ADD COLUMN baseline INTEGER NOT NULL DEFAULT 0;
-- A first read stamps `seen_at` and the export's `good_at` with the same clock.
UPDATE locations SET baseline = 1 WHERE seen_at <= (SELECT e.good_at FROM sources s
    JOIN exports e ON e.path = s.root WHERE s.id = locations.source_id);

-- When a source went missing while an event covered its mailbox (C19 keeps it, stale):
-- a later event does not count what vanished before it started.
ALTER TABLE sources ADD COLUMN missing_since REAL;
UPDATE sources SET missing_since = indexed_at WHERE stale LIKE 'missing%';

-- C5: two entries without a Message-ID are the same message only when they carry the same
-- Mimecast id, whatever address (a primary, an alias, a list) lists them.
UPDATE entries SET fingerprint = fingerprint('entry:' || entry_id) WHERE message_id IS NULL;
UPDATE deliveries SET fingerprint = fingerprint('entry:' || substr((SELECT d.source FROM deltas d
    WHERE d.seq = deliveries.seq), length('mimecast:') + 1)) WHERE message_id IS NULL;
