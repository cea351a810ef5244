-- An Exchange copy of a continuity delivery that was not purged, and why (N2: no certain
-- duplicate). The event report and `status` name them, so a user who sees a duplicate
-- knows the engine saw it and chose not to delete. Described, not referenced: an index run
-- may renumber locations, and the report outlives the file.
CREATE TABLE kept_copies (
    event INTEGER NOT NULL REFERENCES events(id),
    mailbox TEXT NOT NULL,
    location TEXT NOT NULL,          -- source path '#' locator
    folder TEXT,
    message_id TEXT,
    subject TEXT,
    reason TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (event, mailbox, location)
);
