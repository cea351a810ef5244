-- The mailbox index: one row per message identity, one per location (as notmuch).
-- Times are epoch seconds (UTC); `seen_at` is the engine's clock when a location
-- first appeared in the index, which is what C12, C14 and C15 compare.

CREATE TABLE sources (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL UNIQUE,   -- absolute path of the export file
    root        TEXT NOT NULL,          -- the PATH argument it was found under
    kind        TEXT NOT NULL,          -- pst | msg | eml
    mailbox     TEXT NOT NULL,
    size        INTEGER,
    mtime_ns    INTEGER,
    status      TEXT NOT NULL,          -- ok | partial | error
    messages    INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,  -- items outside mailbox folders
    indexed_at  REAL NOT NULL
);
CREATE INDEX sources_root ON sources(root);

CREATE TABLE source_errors (
    source_id   INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    "where"     TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX source_errors_source ON source_errors(source_id);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    identity      TEXT NOT NULL UNIQUE, -- C4 key; `nomid:<source>:<locator>` without Message-ID
    fingerprint   TEXT NOT NULL,
    message_id    TEXT,                 -- normalised, without brackets
    submit_ts     INTEGER,
    subject       TEXT NOT NULL,
    subject_norm  TEXT NOT NULL,
    sender        TEXT,
    recipients    TEXT NOT NULL,        -- sorted To+Cc, tab separated
    resent_key    TEXT,
    message_class TEXT
);
CREATE INDEX messages_message_id ON messages(message_id);
CREATE INDEX messages_fallback ON messages(sender, subject_norm);

CREATE TABLE locations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an id names one appearance
    message       INTEGER NOT NULL REFERENCES messages(id),
    source_id     INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    mailbox       TEXT NOT NULL,
    locator       TEXT NOT NULL,        -- PST node id, or path relative to the tree root
    folder        TEXT NOT NULL,
    role          TEXT NOT NULL,
    received      INTEGER NOT NULL,     -- 1 in a received-mail folder
    mid_source    TEXT,                 -- mapi | headers | mime
    delivery_tag  TEXT,                 -- X-Syncengine-Delivery (C12)
    seen_at       REAL NOT NULL,
    UNIQUE (source_id, locator)
);
CREATE INDEX locations_message ON locations(message);
CREATE INDEX locations_mailbox_seen ON locations(mailbox, seen_at);
