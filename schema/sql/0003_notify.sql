-- What each plugin client has acknowledged (N1): a hello without `since` resumes here.
CREATE TABLE client_acks (
    client      TEXT NOT NULL,     -- "<address>" or "<address>/<instance>"
    mailbox     TEXT NOT NULL,
    mailbox_seq INTEGER NOT NULL,
    acked_at    REAL NOT NULL,
    PRIMARY KEY (client, mailbox)
) WITHOUT ROWID;
