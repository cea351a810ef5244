-- A store's identity: random, made once, when the store is created (or first migrated).
-- A client's journal keys on it, so a store rebuilt under the same path (corrupt, or a new
-- `db` in the config) is a new store whose deltas, numbered again from 1, are applied,
-- never taken for the old store's.
CREATE TABLE store_identity (id TEXT NOT NULL);
INSERT INTO store_identity VALUES (lower(hex(randomblob(16))));
