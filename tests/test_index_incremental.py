"""Running the index again: unchanged, modified, removed and renamed exports."""

from __future__ import annotations

import os
import shutil

import pytest

from syncengine import index

from .conftest import CORPUS, FIXTURES, needs_corpus

MAILBOX = "alice@acme.example"


@pytest.fixture
def tree(tmp_path):
    target = tmp_path / "alice"
    shutil.copytree(FIXTURES / "mailboxes" / "alice", target)
    return target


def _locations(db):
    return {row["locator"]: row for row in db.query("SELECT * FROM locations")}


def _touch_later(path):
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_unchanged_tree_is_not_read_again_and_changes_nothing(db, tree):
    first = index.run(db, [tree], MAILBOX, now=100.0)
    before = _locations(db)
    reports = []
    second = index.run(db, [tree], MAILBOX, now=200.0, on_file=reports.append)
    assert second.unchanged == second.files == first.files
    assert not any(r.changed for r in reports)
    assert _locations(db) == before


def test_modified_file_is_read_again_and_its_new_identity_replaces_the_old(db, tree):
    index.run(db, [tree], MAILBOX, now=100.0)
    target = tree / "Inbox" / "plain.eml"
    target.write_bytes(target.read_bytes().replace(b"<q3@mail.example>", b"<q3-v2@mail.example>"))
    _touch_later(target)
    reports = []
    summary = index.run(db, [tree], MAILBOX, now=200.0, on_file=reports.append)
    assert [r.path for r in reports if r.changed] == [str(target)]
    assert summary.unchanged == summary.files - 1
    row = db.execute("SELECT m.message_id, l.seen_at FROM locations l JOIN messages m ON m.id = l.message"
                     " WHERE l.locator = 'Inbox/plain.eml'").fetchone()
    assert row == ("q3-v2@mail.example", 200.0)


def test_removed_file_drops_its_location_and_orphaned_message(db, tree):
    index.run(db, [tree], MAILBOX, now=100.0)
    (tree / "Deleted Items" / "old.msg").unlink()
    summary = index.run(db, [tree], MAILBOX, now=200.0)
    assert summary.removed == 1
    assert "Deleted Items/old.msg" not in _locations(db)
    assert not db.execute("SELECT count(*) FROM messages WHERE message_id = 'old@mail.example'").fetchone()[0]


def test_renamed_file_moves_the_location_and_keeps_first_seen(db, tree):
    index.run(db, [tree], MAILBOX, now=100.0)
    (tree / "Archive").mkdir()
    (tree / "Inbox" / "plain.msg").rename(tree / "Archive" / "budget.msg")
    index.run(db, [tree], MAILBOX, now=200.0)
    locations = _locations(db)
    assert "Inbox/plain.msg" not in locations
    moved = locations["Archive/budget.msg"]
    assert moved["folder"] == "Archive" and moved["role"] == "other"
    # A move is not a new arrival: C12/C15 must not take it for an Exchange copy.
    assert moved["seen_at"] == 100.0


def test_a_copy_is_a_new_location_of_the_same_message_seen_now(db, tree):
    index.run(db, [tree], MAILBOX, now=100.0)
    shutil.copy(tree / "Inbox" / "plain.msg", tree / "Deleted Items" / "plain-copy.msg")
    index.run(db, [tree], MAILBOX, now=200.0)
    locations = _locations(db)
    assert locations["Deleted Items/plain-copy.msg"]["message"] == locations["Inbox/plain.msg"]["message"]
    assert locations["Deleted Items/plain-copy.msg"]["seen_at"] == 200.0


def test_vanished_explicit_file_is_an_error_and_drops_its_messages(db, tmp_path, tree):
    single = tmp_path / "one.eml"
    shutil.copy(tree / "Inbox" / "plain.eml", single)
    index.run(db, [single], MAILBOX, now=100.0)
    single.unlink()
    reports = []
    summary = index.run(db, [single], MAILBOX, now=200.0, on_file=reports.append)
    assert summary.error == 1 and summary.removed == 1
    assert reports[0].errors[0].reason == "no such file or folder"
    assert not db.execute("SELECT count(*) FROM locations").fetchone()[0]


@needs_corpus()
def test_changed_pst_is_walked_again_and_the_index_follows_it(db, tmp_path):
    pst = tmp_path / "mailbox.pst"
    shutil.copy(CORPUS / "pst" / "aspose-email-net__Outlook.pst", pst)
    index.run(db, [pst], MAILBOX, now=100.0)
    assert db.execute("SELECT count(*) FROM locations").fetchone()[0] == 16
    kept = {r[0] for r in db.execute("SELECT locator FROM locations")}
    # Outlook_1.pst holds the same items as Outlook.pst but under other node ids for
    # some: what stayed keeps its seen_at, what is new is seen now, what went is gone.
    shutil.copy(CORPUS / "pst" / "aspose-email-net__Outlook_1.pst", pst)
    _touch_later(pst)
    index.run(db, [pst], MAILBOX, now=200.0)
    after = {r["locator"]: r["seen_at"] for r in db.query("SELECT locator, seen_at FROM locations")}
    assert len(after) == 16
    for locator, seen in after.items():
        assert seen == (100.0 if locator in kept else 200.0)
    shutil.copy(CORPUS / "pst" / "go-pst__support.pst", pst)
    _touch_later(pst)
    index.run(db, [pst], MAILBOX, now=300.0)
    assert db.execute("SELECT count(*) FROM locations").fetchone()[0] == 17
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 17
