"""Decisions that the engine takes from a part of the index (issue 25: memory flat at
mailbox scale) are the decisions the rules take from all of it."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from syncengine import coverage, engine, index, rules, store
from syncengine.engine import decide
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


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ts))


def _shared_id_decisions(tmp_path: Path, monkeypatch, many: int, chunk: int = 20_000,
                         kept: int = 50_000) -> tuple[list, list]:
    monkeypatch.setattr(decide, "MANY_WITH_ONE_ID", many)
    monkeypatch.setattr(decide, "ENTRY_CHUNK", chunk)
    monkeypatch.setattr(decide, "CROWDED_KEPT", kept)
    rng = random.Random(4)
    shared = ["noreply@app.example", "alerts@app.example"]
    local = [Record(f"n{n}", "Inbox", "inbox", shared[n % 3 == 0], "mapi", BASE + 1000 * n if n % 9 else None,
                    f"Alert {n % 13}", "app@app.example", OWNER, None, "IPM.Note", None) for n in range(3000)]
    folder = tmp_path / f"{many}-{chunk}-{kept}"
    folder.mkdir()
    db = _indexed(folder, local)
    entries = []
    for k in range(900):
        n = rng.randrange(3000)
        when = [BASE + 1000 * n, BASE + 1000 * n + 100, BASE + 1000 * n + 500, BASE + 1000 * n + 18, None][k % 5]
        entry = {"id": f"e{k}", "received": _iso(BASE + 10**6), "mimeMessageId": f"<{shared[n % 3 == 0]}>",
                 "from": {"emailAddress": "app@app.example"}, "to": [{"emailAddress": OWNER}],
                 "subject": f"Alert {n % 13}" if k % 7 else "Something else", "status": "ARCHIVED"}
        if when is not None:
            entry["headerDate"] = _iso(when)
        entries.append(entry)
    page = folder / "snapshot.json"
    page.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": OWNER, "kind": "mailbox"}},
                                "data": entries, "fail": []}))
    engine.add_snapshot(db, page, float(BASE + 10**6))
    engine.start_event(db, "outage", [OWNER], False, float(BASE + 10**6 + 1))
    outcomes = db.execute("SELECT entry, outcome FROM decided ORDER BY entry").fetchall()
    deltas = db.execute("SELECT seq, action, message_id, reason, source FROM deltas ORDER BY seq").fetchall()
    return outcomes, deltas


def test_c4_one_id_on_3000_messages_is_decided_by_time_as_against_all_of_them(tmp_path, monkeypatch):
    """An entry whose Message-ID 3,000 local messages share is compared only with those
    near its submit time; the decisions equal those taken against every one."""
    by_time = _shared_id_decisions(tmp_path, monkeypatch, many=1)
    against_all = _shared_id_decisions(tmp_path, monkeypatch, many=10**9)
    assert by_time == against_all
    assert {"matched", "delivered", "already"} <= {outcome for _, outcome in by_time[0]}


@pytest.mark.parametrize("kept", [0, 2500, 50_000])
def test_c4_c8_crowded_ids_read_in_one_chunk_decide_the_later_chunks_as_read_each_time(tmp_path, monkeypatch, kept):
    """Crowded Message-IDs are read once and kept for later chunks while they fit the
    budget (kept 2,500: one of the two ids fits), read per chunk past it; chunks of 64
    entries decide as one chunk does, deliveries of earlier chunks included (C8)."""
    chunked = _shared_id_decisions(tmp_path, monkeypatch, many=1, chunk=64, kept=kept)
    against_all = _shared_id_decisions(tmp_path, monkeypatch, many=10**9)
    assert chunked == against_all


def test_c5_an_entry_with_a_message_id_finds_its_local_copy_without_one(tmp_path):
    """Entries that have a Message-ID reach local messages without one by sender and
    subject through an index of those messages only (migration 0013); a thread of 2,000
    messages with ids under the same key must not hide them, nor be taken for them."""
    thread = [Record(f"t{n}", "Inbox", "inbox", f"t{n}@partner.example", "mapi", BASE + 600 * n, "Re: Budget",
                     "bob@partner.example", OWNER, None, "IPM.Note", None) for n in range(2000)]
    copies = [Record(f"c{n}", "Inbox", "inbox", None, None, BASE + 7 + 600 * n, "Re: Budget",
                     "bob@partner.example", OWNER, None, "IPM.Note", None) for n in range(0, 2000, 40)]
    db = _indexed(tmp_path, thread + copies)
    entries = [{"id": f"e{n}", "received": _iso(BASE + 600 * n + 30), "headerDate": _iso(BASE + 7 + 600 * n),
                "mimeMessageId": f"<other{n}@mimecast.example>", "from": {"emailAddress": "bob@partner.example"},
                "to": [{"emailAddress": OWNER}], "subject": "Re: Budget", "status": "ARCHIVED"}
               for n in range(0, 2000, 20)]  # every other one has a local copy without a Message-ID
    page = tmp_path / "snapshot.json"
    page.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": OWNER, "kind": "mailbox"}},
                                "data": entries, "fail": []}))
    engine.add_snapshot(db, page, float(BASE + 10**6))
    engine.start_event(db, "outage", [OWNER], False, float(BASE + 10**6 + 1))
    outcomes = dict(db.execute("SELECT e.entry_id, d.outcome FROM decided d JOIN entries e ON e.id = d.entry"))
    assert {f"e{n}" for n in range(0, 2000, 40)} == {entry for entry, outcome in outcomes.items() if outcome == "matched"}
    assert {outcome for entry, outcome in outcomes.items() if int(entry[1:]) % 40} == {"delivered"}
