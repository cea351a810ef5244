"""Decisions that the engine takes from a part of the index (issue 25: memory flat at
mailbox scale) are the decisions the rules take from all of it."""

from __future__ import annotations

import random
from pathlib import Path

from syncengine import coverage, engine, index, rules, store
from syncengine.record import Record

OWNER = "alice@acme.example"
BASE = 1_767_225_600


def _indexed(tmp_path: Path, records: list[Record]):
    db = store.connect(tmp_path / "store.db")
    writer = index.Writer(db, OWNER, now=float(BASE))
    task = index.Task(Path("/exports/alice.pst"), Path("/exports/alice.pst"), "pst", "", "", "inbox")
    source_id = writer._source_id(task)
    writer._stage([writer._staged(source_id, record) for record in records])
    with store.transaction(db.conn):
        writer._merge([source_id])
        coverage.record_read(db.conn, OWNER, str(task.path), None, False, float(BASE))
    return db


def test_c13_an_outbox_against_150_times_as_many_sent_items_is_decided_as_against_all_of_them(tmp_path):
    """The engine reads only Sent Items sharing a Message-ID with the Outbox; the rules,
    given every Sent Item, must say the same of each Outbox message."""
    rng = random.Random(13)
    sent = [Record(f"s{n}", "Sent Items", "sent", f"m{n}@acme.example" if n % 10 else None, "mapi",
                   BASE + 60 * n if n % 7 else None, f"Report {n % 50}", OWNER, "bob@partner.example", None,
                   "IPM.Note", None) for n in range(6000)]
    outbox = []
    for n in range(40):
        k = rng.randrange(6000)
        mid = [f"m{k}@acme.example", f"m{k}@acme.example", None, f"new{n}@acme.example"][n % 4]
        when = [BASE + 60 * k + 30, BASE + 60 * k + 900, BASE + n, None][rng.randrange(4)]
        outbox.append(Record(f"o{n}", "Outbox", "outbox", mid, "mapi" if mid else None, when, f"Report {k % 50}",
                             OWNER, "bob@partner.example", None, "IPM.Note", None))
    db = _indexed(tmp_path, sent + outbox)
    engine.start_event(db, "outage", [OWNER], False, float(BASE + 10**6))
    got = dict(db.execute("SELECT identity, outcome FROM outbox_done").fetchall())

    every_sent = [rules.LocalIn(r.locator, rules.Msg(r.message_id, r.submit_ts, r.resent_key, r.sender, r.recipients,
                                                     r.subject.lower())) for r in sent]
    expected = {}
    for r in outbox:
        identity = db.execute("SELECT m.identity FROM locations l JOIN messages m ON m.id = l.message"
                              " WHERE l.locator = ?", (r.locator,)).fetchone()[0]
        item = rules.OutboxIn(identity, rules.LocalIn(r.locator, rules.Msg(
            r.message_id, r.submit_ts, r.resent_key, r.sender, r.recipients, r.subject.lower())), r.message_class)
        expected.setdefault(identity, rules.decide_outbox(item, every_sent, False)[0])
    assert got == expected
    assert {"already-sent", "sent"} <= set(got.values())  # both ways, so the comparison means something
