-- Every batch of an index run asks which locations sit in sources gone missing during an
-- event (C19: a move keeps its first seen_at). Few sources are ever missing; without this
-- index the question read every location of the mailbox, once per batch (issue 25).
CREATE INDEX sources_missing ON sources(id) WHERE missing_since IS NOT NULL;
