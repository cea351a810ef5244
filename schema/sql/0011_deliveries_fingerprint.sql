-- A reconcile looks up, chunk by chunk, whether an entry without a Message-ID was
-- delivered already (C5: by its fingerprint), instead of holding every delivery of the
-- event in memory (issue 25).
CREATE INDEX deliveries_fingerprint ON deliveries(event, mailbox, fingerprint);
