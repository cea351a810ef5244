"""Indexing the generated MSG/EML tree: every fingerprint field, roles and identities."""

from __future__ import annotations

import json

import pytest

from syncengine import index

from .conftest import FIXTURES

TREE = FIXTURES / "mailboxes" / "alice"
EXPECTED = json.loads((FIXTURES / "mailboxes" / "alice.expected.json").read_text())
MAILBOX = "alice@acme.example"


@pytest.fixture
def indexed(db):
    summary = index.run(db, [TREE], MAILBOX, now=1000.0)
    assert summary.error == 0 and summary.partial == 0
    return db


def _rows(db):
    return {row["locator"]: row for row in db.query(
        "SELECT l.*, m.identity, m.message_id, m.submit_ts, m.subject, m.sender, m.recipients,"
        " m.resent_key, m.message_class FROM locations l JOIN messages m ON m.id = l.message")}


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_every_fingerprint_field_round_trips(indexed, path):
    row = _rows(indexed)[path]
    for name, value in EXPECTED[path].items():
        assert row[name] == value, f"{path}: {name}"


def test_folder_paths_use_slashes_and_roles_come_from_names(indexed):
    rows = _rows(indexed)
    assert rows["Inbox/Projects/Q4/nested.eml"]["folder"] == "Inbox/Projects/Q4"
    assert rows["Inbox/Projects/Q4/nested.eml"]["role"] == "other"
    assert {rows[p]["role"] for p in ("Inbox/plain.eml", "Sent Items/self.eml", "Outbox/pending.msg",
                                      "Deleted Items/old.msg", "Calendar/appointment.msg",
                                      "Sync Issues/Conflicts/conflict.msg")} == \
        {"inbox", "sent", "outbox", "deleted", "calendar", "sync"}


def test_received_mail_folders_exclude_sent_outbox_and_sync(indexed):
    rows = _rows(indexed)
    assert rows["Inbox/self.eml"]["received"] == 1
    assert rows["Deleted Items/old.msg"]["received"] == 1
    assert rows["Inbox/Projects/Q4/nested.eml"]["received"] == 1
    for path in ("Sent Items/self.eml", "Outbox/pending.msg", "Sync Issues/Conflicts/conflict.msg"):
        assert rows[path]["received"] == 0, path


def test_c4_send_to_self_is_one_message_with_two_locations(indexed):
    rows = _rows(indexed)
    assert rows["Inbox/self.eml"]["message"] == rows["Sent Items/self.eml"]["message"]


def test_c4_one_id_stamped_on_different_messages_gives_different_identities(indexed):
    rows = _rows(indexed)
    assert rows["Inbox/stamped-1.eml"]["message"] != rows["Inbox/stamped-2.eml"]["message"]


def test_c5_messages_without_message_id_are_never_merged(indexed):
    rows = _rows(indexed)
    assert (TREE / "Inbox/no-mid-1.eml").read_bytes() == (TREE / "Inbox/no-mid-2.eml").read_bytes()
    assert rows["Inbox/no-mid-1.eml"]["message"] != rows["Inbox/no-mid-2.eml"]["message"]
    assert rows["Inbox/no-mid-1.eml"]["identity"].startswith("nomid:")


def test_c7_resent_copies_are_their_own_identities(indexed):
    rows = _rows(indexed)
    ids = {rows[p]["message"] for p in ("Inbox/plain.eml", "Inbox/resent.eml", "Inbox/resent-date.msg")}
    assert len(ids) == 3


def test_c12_delivery_tag_is_read_from_header_and_named_property(indexed):
    rows = _rows(indexed)
    assert rows["Inbox/delivered-header.eml"]["delivery_tag"] == "ev1/17"
    assert rows["Inbox/delivered-named.msg"]["delivery_tag"] == "ev1/18"
    assert rows["Inbox/plain.msg"]["delivery_tag"] is None


def test_seen_at_is_the_engine_clock_given(indexed):
    assert {row["seen_at"] for row in _rows(indexed).values()} == {1000.0}


def test_the_store_is_a_plain_sqlite_file_with_recorded_migrations(indexed):
    assert indexed.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r["version"] for r in indexed.query("SELECT version FROM schema_migrations")][0] == 1
    assert {"sources", "messages", "locations", "source_errors"} <= set(indexed.table_names())
