-- The Mimecast poller finds every message however late the archive lists it (C8a), lists
-- distribution lists' own mail (C16), and fetches again a part it could not fetch.

-- Whether the raw message was fetched with the entry: entries written without content
-- are tried again on later passes, with backoff, and their content stored when it comes.
ALTER TABLE mimecast_fetched ADD COLUMN content INTEGER NOT NULL DEFAULT 1;
ALTER TABLE mimecast_fetched ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX mimecast_fetched_missing ON mimecast_fetched(mailbox, fetched_at) WHERE content = 0;

-- The poller's health per address (a mailbox or a list), for `status`: its last success,
-- its last error, and how many passes in a row have failed.
CREATE TABLE mimecast_health (
    address      TEXT PRIMARY KEY,
    last_success REAL,
    last_error   TEXT,
    error_at     REAL,
    failures     INTEGER NOT NULL DEFAULT 0
);
