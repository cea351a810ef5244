"""Re-indexing a changed PST reads only what changed inside it, and ends exactly where a
full re-read ends: same messages, locations, folders, roles and first-seen times, over a
series of edits (appends, deletions, moves, a renamed folder, an emptied folder), in both
layouts: a PST, and the 4 KB-page OST of Outlook 2013+ (issue 24)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine import index, store
from syncengine.pst.layout import UNICODE, UNICODE_4K, Layout
from syncengine.pst.writer import Message, PstWriter
from syncengine.readers import pst_nodes

OWNER = "alice@acme.example"
# Inbox holds half: its contents table outgrows a heap page and a row block, so the
# writer streams table pages between message blocks, as it does for real mailboxes.
FOLDERS = ["Inbox", "Inbox/Projects", "Inbox", "Archive/2024", "Inbox", "Sent Items", "Inbox", "Deleted Items",
           "Inbox", "Calendar"]
BASE = 600


def _message(n: int) -> Message:
    return Message(subject=f"Topic {n}", sender=f"s{n % 9}@example.org", to=[OWNER], cc=[f"c{n % 4}@example.org"],
                   message_id=f"<m{n}@mail.example>" if n % 17 else None, submit_time=1767225600 + 60 * n,
                   headers=f"Message-ID: <m{n}@mail.example>\r\nTo: {OWNER}\r\nCc: c{n % 4}@example.org\r\n\r\n"
                   if n % 3 else None,
                   message_class="IPM.Schedule.Meeting.Request" if n % 50 == 0 else "IPM.Note")


def write(path: Path, count: int, deleted=frozenset(), moved: dict[int, str] | None = None,
          renamed: dict[str, str] | None = None) -> None:
    """The same mailbox each time, edited as Outlook edits a store in place: a deleted or
    moved message leaves every other node and block as it was."""
    moved, renamed = moved or {}, renamed or {}
    with PstWriter(path, "Edited", LAYOUT_OF[path.suffix]) as pst:
        for n in range(count):
            folder = moved.get(n, FOLDERS[n % len(FOLDERS)])
            pst.add(renamed.get(folder, folder), _message(n), deleted=n in deleted)


LAYOUT_OF: dict[str, Layout] = {".pst": UNICODE, ".ost": UNICODE_4K}
STORE = pytest.mark.parametrize("name", ["mailbox.pst", "mailbox.ost"])
DELETED = frozenset(range(3, BASE, 16))
MOVED = {n: "Junk Email" for n in range(100, 106)}
EDITS = [
    ("append 20", dict(count=BASE + 20)),
    ("delete 38", dict(count=BASE + 20, deleted=DELETED)),
    ("move 6 to Junk", dict(count=BASE + 20, deleted=DELETED, moved=MOVED)),
    ("rename a folder", dict(count=BASE + 20, deleted=DELETED, moved=MOVED, renamed={"Inbox/Projects": "Inbox/Q4"})),
    ("empty Calendar", dict(count=BASE + 20, deleted=frozenset(range(9, BASE + 20, 10)))),
]


def _state(db) -> list[tuple]:
    return sorted(db.execute(
        "SELECT l.locator, l.folder, l.role, l.received, l.mid_source, l.delivery_tag, l.seen_at, m.identity,"
        " m.message_id, m.submit_ts, m.subject, m.sender, m.recipients, m.message_class"
        " FROM locations l JOIN messages m ON m.id = l.message").fetchall())


def _index(db, path: Path, now: float) -> index.FileReport:
    reports = []
    summary = index.run(db, [path], OWNER, now=now, on_file=reports.append, workers=1)
    assert summary.error == 0 and summary.partial == 0
    return reports[0]


@STORE
@pytest.mark.parametrize("block", [4096, 50])
def test_each_edit_rereads_only_what_changed_and_equals_a_full_reread(tmp_path, name, block, monkeypatch):
    """Also with nodes in blocks of 50 (spilled to a file, merged against the index's
    versions block by block), as a store of a million items is read."""
    monkeypatch.setattr(pst_nodes, "BLOCK", block)
    path = tmp_path / name
    write(path, BASE)
    incremental = store.connect(tmp_path / "incremental.db")
    full = store.connect(tmp_path / "full.db")
    first = _index(incremental, path, now=1000.0)
    _index(full, path, now=1000.0)
    assert first.read == BASE
    for step, (name, edit) in enumerate(EDITS, 1):
        write(path, **edit)
        before = {r[0]: r for r in _state(incremental)}
        report = _index(incremental, path, now=1000.0 + step)
        full.execute("DELETE FROM store_items")  # forget the versions: this store is read whole
        full.execute("DELETE FROM store_folders")
        assert _index(full, path, now=1000.0 + step).read == report.messages
        after = _state(incremental)
        assert after == _state(full), name
        # Read: exactly the messages that are new or now in another folder (moved, renamed).
        relocated = [r for r in after if r[0] not in before or before[r[0]][1] != r[1]]
        assert report.read == len(relocated) < report.messages, name
        assert report.messages == len(after), name


@STORE
def test_an_unchanged_store_is_not_read_and_a_touched_one_reads_nothing(tmp_path, name):
    path = tmp_path / name
    write(path, BASE)
    db = store.connect(tmp_path / "store.db")
    _index(db, path, now=1.0)
    assert _index(db, path, now=2.0).changed is False
    write(path, BASE)  # rewritten byte for byte: a new mtime, the same items
    report = _index(db, path, now=3.0)
    assert report.changed and report.read == 0 and report.messages == BASE


@STORE
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_store_damaged_after_a_good_read_falls_back_to_c19_not_to_an_empty_index(tmp_path, damage, name):
    path = tmp_path / name
    write(path, BASE)
    db = store.connect(tmp_path / "store.db")
    _index(db, path, now=1.0)
    good = _state(db)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] if damage == "truncate" else data[:600] + b"\xff" * (len(data) - 600))
    index.run(db, [path], OWNER, now=2.0, workers=1)
    assert _state(db) == good
    stale, = db.execute("SELECT stale FROM sources").fetchone()
    assert stale and stale.startswith(("unreadable since the last good read", "read in part"))
