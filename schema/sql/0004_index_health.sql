-- Index health (C19): the engine decides for a mailbox only once its index is whole,
-- and a source that fails to read after a good read keeps its last good locations.

-- An export is a PATH given to `index` (a PST/OST/MSG/EML file, or a folder tree).
CREATE TABLE exports (
    path       TEXT PRIMARY KEY,    -- absolute
    mailbox    TEXT NOT NULL,
    good_at    REAL,                -- engine clock of its first successful read; NULL: never (waiting-for-index)
    checked_at REAL NOT NULL,       -- its latest read, successful or not
    problem    TEXT                 -- why the latest read failed; NULL when it read
);
CREATE INDEX exports_mailbox ON exports(mailbox);

ALTER TABLE sources ADD COLUMN good_at REAL;  -- engine clock of its latest successful read; NULL: never
ALTER TABLE sources ADD COLUMN stale TEXT;    -- why its locations are from an earlier read; NULL: they are current
UPDATE sources SET good_at = indexed_at WHERE status != 'error';

INSERT OR IGNORE INTO exports (path, mailbox, good_at, checked_at)
    SELECT root, mailbox, min(good_at), max(indexed_at) FROM sources GROUP BY root, mailbox;

-- When the event decided for the mailbox first (C3); NULL while it is waiting-for-index.
ALTER TABLE event_mailboxes ADD COLUMN reconciled_at REAL;
-- The highest entry id this event has decided for the mailbox: an idle poll reads nothing.
ALTER TABLE event_mailboxes ADD COLUMN entry_cursor INTEGER NOT NULL DEFAULT 0;
UPDATE event_mailboxes SET reconciled_at = (SELECT started_at FROM events WHERE events.id = event_mailboxes.event);
