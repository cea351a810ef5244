-- Continuity state: snapshots, directory syncs, events, decisions and the delta log.
-- Every poll writes its decisions and their deltas in one transaction, so a restart
-- resumes from here and never repeats a delta (C1, N1).

-- The Outbox and Sent Items are read on every poll (C13).
CREATE INDEX locations_mailbox_role ON locations(mailbox, role);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,          -- poll_interval, post_event_window, calendar_items
    value TEXT NOT NULL
);

CREATE TABLE snapshots (
    id             INTEGER PRIMARY KEY,
    path           TEXT NOT NULL,
    visible_at     REAL NOT NULL,    -- engine clock when it was added (C8)
    pages          INTEGER NOT NULL,
    rejected_pages INTEGER NOT NULL,
    entries        INTEGER NOT NULL
);

CREATE TABLE snapshot_errors (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id),
    file        TEXT NOT NULL,
    reason      TEXT NOT NULL
);

CREATE TABLE entries (
    id            INTEGER PRIMARY KEY,
    snapshot_id   INTEGER NOT NULL REFERENCES snapshots(id),
    page          INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    entry_id      TEXT NOT NULL,     -- Mimecast's id: not an identity
    address       TEXT NOT NULL,     -- the snapshot's address, normalised
    kind          TEXT NOT NULL,     -- mailbox | group
    visible_at    REAL NOT NULL,
    message_id    TEXT,
    header_ts     INTEGER,
    received_ts   INTEGER NOT NULL,
    sender        TEXT,
    recipients    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    subject_norm  TEXT NOT NULL,
    status        TEXT,
    expired       INTEGER NOT NULL,
    message_class TEXT NOT NULL,
    resent_key    TEXT,
    content       TEXT,              -- stored copy, readable by the store's owner only
    fingerprint   TEXT NOT NULL
);
CREATE INDEX entries_address ON entries(address, visible_at);
CREATE INDEX entries_fallback ON entries(sender, subject_norm);

CREATE TABLE directory_syncs (
    id       INTEGER PRIMARY KEY,
    path     TEXT NOT NULL,
    synced   REAL NOT NULL,
    added_at REAL NOT NULL,
    body     BLOB NOT NULL            -- the validated JSON as given
);

CREATE TABLE events (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    phase             TEXT NOT NULL,  -- reconciling | active | ending | closed (C1)
    started_at        REAL NOT NULL,
    ended_at          REAL,
    closed_at         REAL,
    last_poll         REAL NOT NULL,
    expand_lists      INTEGER NOT NULL,
    poll_interval     INTEGER NOT NULL,
    post_event_window INTEGER NOT NULL,
    calendar_items    INTEGER NOT NULL,
    report            TEXT
);

CREATE TABLE event_mailboxes (
    event   INTEGER NOT NULL REFERENCES events(id),
    mailbox TEXT NOT NULL,
    PRIMARY KEY (event, mailbox)
);

-- Each visible entry is decided once per event and mailbox; `outcome` feeds the report.
CREATE TABLE decided (
    event   INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    entry   INTEGER NOT NULL,
    outcome TEXT NOT NULL,  -- delivered | ambiguous-delivered | deferred | matched | held | already | not-member
    PRIMARY KEY (event, mailbox, entry)
) WITHOUT ROWID;

-- What continuity delivered, kept for C8 (once per event) and for purges (C12, C14, N2).
CREATE TABLE deliveries (
    event        INTEGER NOT NULL,
    mailbox      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    message_id   TEXT,
    submit_ts    INTEGER,
    resent_key   TEXT,
    sender       TEXT,
    recipients   TEXT NOT NULL,
    subject_norm TEXT NOT NULL,
    fingerprint  TEXT NOT NULL
);
CREATE INDEX deliveries_event ON deliveries(event, mailbox, message_id);

-- Outbox items handled (C13: exactly one send), and locations purged.
CREATE TABLE outbox_done (
    event    INTEGER NOT NULL,
    mailbox  TEXT NOT NULL,
    identity TEXT NOT NULL,
    outcome  TEXT NOT NULL,  -- sent | deferred | already-sent
    PRIMARY KEY (event, mailbox, identity)
) WITHOUT ROWID;

CREATE TABLE purged (
    event    INTEGER NOT NULL,
    mailbox  TEXT NOT NULL,
    location INTEGER NOT NULL,  -- locations.id: a copy deleted and delivered again is a new location
    PRIMARY KEY (event, mailbox, location)
) WITHOUT ROWID;

CREATE TABLE deltas (
    seq         INTEGER PRIMARY KEY,
    mailbox     TEXT NOT NULL,
    mailbox_seq INTEGER NOT NULL,
    at          REAL NOT NULL,
    event       TEXT NOT NULL,
    action      TEXT NOT NULL,
    folder      TEXT,
    message_id  TEXT,
    subject     TEXT,
    fingerprint TEXT,
    source      TEXT NOT NULL,
    content     TEXT,
    reason      TEXT NOT NULL,
    body        BLOB NOT NULL,    -- the delta's JSON line, encoded once, sent as it is
    UNIQUE (mailbox, mailbox_seq)
);

-- How far a replay got, so a restarted replay resumes instead of starting over.
CREATE TABLE replay_steps (
    step    INTEGER PRIMARY KEY,
    done_at REAL NOT NULL
);
