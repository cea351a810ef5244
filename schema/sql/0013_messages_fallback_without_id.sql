-- An entry with a Message-ID can fallback-match (C5) only local messages without one; a
-- reconcile looks those up by sender and subject here, instead of reading every message
-- of a thread ("Re: ..." from one sender) to discard those that have an id (issue 25).
CREATE INDEX messages_fallback_without_id ON messages(sender, subject_norm)
    WHERE message_id IS NULL OR message_id = '';
