-- What the index last read of each message inside a PST/OST, so a re-index of a changed
-- store opens only the messages that changed (issue 12). A message's version comes from
-- its node B-tree entry (data block, subnode block, parent): PST blocks are copy-on-write,
-- so an unchanged version means unchanged content. Written only after a whole read;
-- a source without rows here is read whole next time.
CREATE TABLE store_items (
    source_id INTEGER NOT NULL,
    nid       INTEGER NOT NULL,    -- the node id, as the location's locator
    version   INTEGER NOT NULL,
    PRIMARY KEY (source_id, nid)
) WITHOUT ROWID;

-- The mailbox folders of each store as last read: a folder renamed or given another
-- role has its messages read again.
CREATE TABLE store_folders (
    source_id INTEGER NOT NULL,
    nid       INTEGER NOT NULL,
    path      TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (source_id, nid)
) WITHOUT ROWID;
