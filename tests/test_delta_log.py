"""What a reconcile or a poll returns is what it wrote to the delta log, read back from the
log (issue 25: a reconcile of 440,000 entries no longer holds its deltas in memory), and
deciding in chunks writes the same log as deciding at once."""

from __future__ import annotations

import json
from pathlib import Path

import sqlite_utils

from syncengine import engine, store
from syncengine.engine import decide

ALICE = "alice@acme.example"
NOW = 1_900_000_000.0


def _snapshot(folder: Path, count: int, name: str = "snap") -> Path:
    page = {"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}}, "fail": [],
            "data": [{"id": f"{name}-{n}", "received": "2026-03-02T08:00:00Z", "headerDate": "2026-03-02T08:00:00Z",
                      "from": {"emailAddress": f"s{n % 3}@example.org"}, "subject": f"Message {n % 5}",
                      **({"mimeMessageId": f"<{name}-{n}@example.org>"} if n % 4 else {})}
                     for n in range(count)]}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(page))
    return path


def _reconciled(tmp_path: Path, name: str) -> tuple[sqlite_utils.Database, engine.Written]:
    db = store.connect(tmp_path / f"{name}.db")
    engine.add_snapshot(db, _snapshot(tmp_path, 40), NOW)
    return db, engine.start_event(db, "outage", [ALICE], False, NOW + 1, no_local_mail=[ALICE])


def test_an_event_start_returns_the_deltas_it_wrote_as_the_log_holds_them(tmp_path):
    db, written = _reconciled(tmp_path, "store")
    log = engine.deltas(db)
    assert len(written) == len(log) == 40 and written
    assert list(written) == log and written == log            # equal to the list it stands for
    assert written[0] == log[0] and written[-1]["seq"] == 40 and written[3:5] == log[3:5]
    assert all(delta["action"] == "deliver" for delta in written)
    idle = engine.poll(db, NOW + 120)
    assert len(idle) == 0 and not idle and idle == []


def test_deciding_in_chunks_writes_the_same_log_as_at_once(tmp_path, monkeypatch):
    whole_db, _ = _reconciled(tmp_path, "whole")
    monkeypatch.setattr(decide, "ENTRY_CHUNK", 3)   # each chunk's deltas written before the next is decided
    chunked_db, written = _reconciled(tmp_path, "chunked")
    assert engine.deltas(chunked_db) == engine.deltas(whole_db) == list(written)
