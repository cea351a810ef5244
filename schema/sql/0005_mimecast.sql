-- The Mimecast poller: what it has fetched, so a later pass fetches only what is new.

CREATE TABLE mimecast_fetched (
    mailbox    TEXT NOT NULL,
    id         TEXT NOT NULL,     -- Mimecast's message id, as listed
    fetched_at REAL NOT NULL,
    PRIMARY KEY (mailbox, id)
) WITHOUT ROWID;

CREATE TABLE mimecast_windows (
    mailbox  TEXT PRIMARY KEY,
    last_end REAL NOT NULL        -- the end of the last pass's window; the next starts a few minutes before it
);
