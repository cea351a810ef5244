"""Index health (C19): an export that flickers never floods duplicates nor purges the
user's own mail; a mailbox is decided for only once its index is whole."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from syncengine import engine, index, normalise, store

from .conftest import CORPUS, FIXTURES, needs_corpus, run_cli

ALICE = "alice@acme.example"
OST = CORPUS / "pst" / "aspose-email-net__SampleOstFile.ost"
OST_BOX = "saqib.razzaq@ex2010.local"
TREE = FIXTURES / "mailboxes" / "alice"


def _page(address: str, entries: list[dict]) -> dict:
    return {"meta": {"status": 200, "snapshot": {"address": address, "kind": "mailbox"}}, "data": entries, "fail": []}


def _inbox_snapshot(db_path, folder):
    """A snapshot listing every message of the indexed Inbox, as Mimecast would."""
    db = store.connect(db_path)
    rows = db.execute("SELECT m.message_id, m.submit_ts, m.subject FROM locations l JOIN messages m"
                      " ON m.id = l.message WHERE l.role = 'inbox' AND m.message_id IS NOT NULL").fetchall()
    db.conn.close()
    entries = [{"id": f"i{n}", "received": "2026-03-02T08:00:00Z", "mimeMessageId": f"<{mid}>",
                "headerDate": None if ts is None else normalise.iso(ts),
                "from": {"emailAddress": "someone@example.org"}, "subject": subject}
               for n, (mid, ts, subject) in enumerate(rows)]
    folder.mkdir()
    (folder / "snapshot.json").write_text(json.dumps(_page(OST_BOX, entries)))
    return len(entries)


@needs_corpus()
def test_c19_a_truncated_ost_keeps_its_locations_so_the_event_delivers_no_duplicates_and_purges_nothing(tmp_path):
    """The issue's own steps, on the corpus Exchange OST."""
    ost, db = tmp_path / "alice.ost", tmp_path / "a.db"
    shutil.copy(OST, ost)
    run_cli("index", str(ost), "--db", str(db), "--mailbox", OST_BOX, check=True)
    listed = _inbox_snapshot(db, tmp_path / "snap")
    assert listed >= 10
    run_cli("snapshot", "add", str(tmp_path / "snap"), "--db", str(db), check=True)
    before = store.connect(db).execute("SELECT count(*) FROM locations").fetchone()[0]
    os.truncate(ost, 2_000_000)  # a copy still in progress
    again = run_cli("index", str(ost), "--db", str(db), "--mailbox", OST_BOX, "--json")
    assert again.returncode == 3
    report = json.loads(again.stdout.splitlines()[0])
    assert report["status"] == "error" and report["stale"].startswith("unreadable since the last good read")
    assert store.connect(db).execute("SELECT count(*) FROM locations").fetchone()[0] == before
    started = run_cli("event", "start", "ev1", "--mailbox", OST_BOX, "--db", str(db), check=True)
    assert "reconcile wrote 0 deltas" in started.stdout
    status = run_cli("status", "--db", str(db), check=True).stdout
    assert "stale:" in status and "alice.ost" in status
    shutil.copy(OST, ost)  # restored: a newer mtime, so it is read again
    os.utime(ost, ns=(ost.stat().st_atime_ns, ost.stat().st_mtime_ns + 5_000_000_000))
    run_cli("index", str(ost), "--db", str(db), "--mailbox", OST_BOX, check=True)
    synced = run_cli("sync", "--db", str(db), check=True)
    assert synced.stdout.strip() == "0 deltas"  # no purge of the user's own pre-existing mail
    database = store.connect(db)
    assert database.execute("SELECT count(*) FROM deltas").fetchone()[0] == 0
    assert database.execute("SELECT count(*) FROM sources WHERE stale IS NOT NULL").fetchone()[0] == 0


def test_c19_a_location_keeps_its_first_seen_time_across_a_failed_and_a_good_reread(db, tmp_path):
    tree = tmp_path / "alice"
    shutil.copytree(TREE, tree)
    index.run(db, [tree], ALICE, now=100.0)
    plain = tree / "Inbox" / "plain.msg"
    good = plain.read_bytes()
    plain.write_bytes(good[:300])  # half-written by a sync tool
    index.run(db, [tree], ALICE, now=200.0)
    row = db.execute("SELECT seen_at, s.stale FROM locations l JOIN sources s ON s.id = l.source_id"
                     " WHERE l.locator = 'Inbox/plain.msg'").fetchone()
    assert row[0] == 100.0 and row[1].startswith("unreadable since the last good read")
    plain.write_bytes(good)
    os.utime(plain, ns=(plain.stat().st_atime_ns, plain.stat().st_mtime_ns + 5_000_000_000))
    index.run(db, [tree], ALICE, now=300.0)
    row = db.execute("SELECT seen_at, s.stale FROM locations l JOIN sources s ON s.id = l.source_id"
                     " WHERE l.locator = 'Inbox/plain.msg'").fetchone()
    assert row == (100.0, None)


def test_c19_a_vanished_source_is_kept_while_an_event_covers_its_mailbox_and_dropped_after(db, tmp_path):
    tree = tmp_path / "alice"
    shutil.copytree(TREE, tree)
    index.run(db, [tree], ALICE, now=100.0)
    engine.start_event(db, "ev1", [ALICE], False, 150.0)
    moved = tree.parent / "plain.eml.bak"
    (tree / "Inbox" / "plain.eml").rename(moved)  # a network drive dropped it for a minute
    summary = index.run(db, [tree], ALICE, now=200.0)
    assert summary.removed == 0
    row = db.execute("SELECT l.seen_at, s.stale FROM locations l JOIN sources s ON s.id = l.source_id"
                     " WHERE l.locator = 'Inbox/plain.eml'").fetchone()
    assert row[0] == 100.0 and row[1].startswith("missing")
    moved.rename(tree / "Inbox" / "plain.eml")
    index.run(db, [tree], ALICE, now=250.0)
    assert db.execute("SELECT seen_at FROM locations WHERE locator = 'Inbox/plain.eml'").fetchone() == (100.0,)
    assert engine.poll(db, 260.0) == []  # back again: not an Exchange copy
    (tree / "Inbox" / "plain.eml").unlink()
    engine.end_event(db, "ev1", 300.0)
    engine.poll(db, 300.0 + 600)  # the post-event window closes the event
    assert index.run(db, [tree], ALICE, now=1000.0).removed == 1


def test_c19_a_mailbox_whose_export_never_read_waits_then_reconciles_when_it_does(tmp_path):
    db, export = tmp_path / "store.db", tmp_path / "alice.msg"
    export.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100)  # Outlook still writing it
    assert run_cli("index", str(export), "--db", str(db), "--mailbox", ALICE).returncode == 3
    demo = FIXTURES / "scenarios" / "demo"
    run_cli("snapshot", "add", str(demo / "snapshots" / "alice-0859"), "--db", str(db), check=True)
    started = run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
    assert "reconcile wrote 0 deltas" in started.stdout and "waiting for its index" in started.stderr
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert [(w["mailbox"], w["export"]) for w in status["waiting"]] == [(ALICE, str(export))]
    assert run_cli("sync", "--db", str(db), check=True).stdout.strip() == "0 deltas"
    run_cli("index", str(demo / "mailbox" / "alice"), "--db", str(db), "--mailbox", ALICE, check=True)
    assert run_cli("sync", "--db", str(db), check=True).stdout.strip() == "0 deltas"  # one export still unread
    shutil.copy(FIXTURES / "mailboxes" / "alice" / "Inbox" / "plain.msg", export)
    run_cli("index", str(export), "--db", str(db), "--mailbox", ALICE, check=True)
    synced = run_cli("sync", "--db", str(db), check=True)
    assert synced.stdout.strip() == "2 deltas"  # reconciled now, against the whole index
    deltas = [json.loads(line) for line in run_cli("deltas", "--db", str(db), "--json", check=True).stdout.splitlines()]
    assert {d["message_id"] for d in deltas} == {"<to-self@mail.example>", "<invoice-88@mail.example>"}
    reconciled = store.connect(db).execute("SELECT reconciled_at FROM event_mailboxes").fetchone()[0]
    assert all(d["at"] == normalise.iso(reconciled) for d in deltas)


def test_c19_exports_indexed_under_an_alias_belong_to_the_primary(tmp_path):
    outcome = run_cli("replay", str(FIXTURES / "scenarios" / "c19-export-under-an-alias"), "-q")
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert "1 deltas" in outcome.stdout


@pytest.mark.parametrize("directory, says", [
    ({"users": [{"emailAddress": "alice@acme.example"}, {"emailAddress": "bob@acme.example",
                                                         "aliases": ["alice@acme.example"]}]},
     "$.users[1].aliases[0]: alice@acme.example is already alice@acme.example's"),
    ({"users": [{"emailAddress": "alice@acme.example", "aliases": ["boss@acme.example"]},
                {"emailAddress": "bob@acme.example", "aliases": ["Boss@acme.example"]}]},
     "$.users[1].aliases[0]: boss@acme.example is already alice@acme.example's"),
    ({"users": [{"emailAddress": ""}]}, "$.users[0].emailAddress: empty address"),
    ({"delegates": [{"mailbox": " ", "delegate": "alice@acme.example"}]}, "$.delegates[0].mailbox: empty address"),
])
def test_c19_a_directory_sync_that_would_merge_two_people_is_rejected_whole(tmp_path, directory, says):
    path = tmp_path / "directory.json"
    path.write_text(json.dumps({"synced": "2026-03-02T06:00:00Z", **directory}))
    result = run_cli("directory", "add", str(path), "--db", str(tmp_path / "store.db"))
    assert result.returncode == 4 and says in result.stderr, result.stderr
    assert store.connect(tmp_path / "store.db").execute("SELECT count(*) FROM directory_syncs").fetchone()[0] == 0


def test_c19_an_export_indexed_for_one_mailbox_is_refused_for_another(tmp_path):
    db = str(tmp_path / "store.db")
    run_cli("index", str(TREE), "--db", db, "--mailbox", ALICE, check=True)
    other = run_cli("index", str(TREE), "--db", db, "--mailbox", "bob@acme.example")
    assert other.returncode == 3 and "already indexed for mailbox alice@acme.example" in other.stderr
    mailboxes = store.connect(db).execute("SELECT DISTINCT mailbox FROM locations").fetchall()
    assert mailboxes == [(ALICE,)]


def test_n3_one_bad_file_never_ends_an_index_run(tmp_path):
    """1,000-level nested MIME, a name that is not UTF-8, and a FIFO in the tree."""
    tree = tmp_path / "alice"
    shutil.copytree(TREE, tree)
    nested = b"Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
    for n in range(1000):
        nested = b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n%s\r\n--b%d--\r\n' % (n, n, nested, n)
    nested = b"Message-ID: <deep@example.org>\r\nSubject: deep\r\n" + nested
    (tree / "Inbox" / "deep.eml").write_bytes(nested)
    shutil.copy(tree / "Inbox" / "plain.eml", os.fsencode(tree / "Inbox") + b"/caf\xe9.eml")
    os.mkfifo(tree / "Inbox" / "pipe.eml")
    result = subprocess.run([sys.executable, "-m", "syncengine", "index", str(tree), "--db", str(tmp_path / "s.db"),
                             "--mailbox", ALICE], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr
    assert result.returncode == 3 and "deep.eml" in result.stderr
    locators = {r[0] for r in store.connect(tmp_path / "s.db").execute("SELECT locator FROM locations")}
    assert "Inbox/caf\\xe9.eml" in locators and "Inbox/plain.eml" in locators
    assert not any("pipe" in locator for locator in locators)


def test_c19_parsing_a_store_does_not_hold_the_write_lock(db, tmp_path):
    """While a PST's records are staged, another process can still write: only the
    merge takes the lock."""
    other = sqlite3.connect(db.execute("PRAGMA database_list").fetchone()[2], timeout=0, isolation_level=None)
    writes = []

    def records():
        from syncengine.record import Record
        for n in range(3):
            other.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the index held it
            other.execute("INSERT INTO settings VALUES (?, '1') ON CONFLICT DO NOTHING", (f"probe{n}",))
            other.execute("COMMIT")
            writes.append(n)
            yield Record(str(n), "Inbox", "inbox", f"m{n}@x", "mapi", 1000, "s", "a@x", "", None, "IPM.Note", None)

    from syncengine.record import SourceResult
    task = index.Task(tmp_path / "x.pst", tmp_path / "x.pst", "pst", "x.pst", "", "other")
    writer = index.Writer(db, ALICE, 100.0)
    writer.write_store(task, 1, 1, records(), SourceResult(), None)
    assert writes == [0, 1, 2]
    assert db.execute("SELECT count(*) FROM locations").fetchone()[0] == 3


def test_c19_a_store_held_by_another_writer_is_waited_for_then_refused_clearly(tmp_path):
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = subprocess.run([sys.executable, "-m", "syncengine", "sync", "--db", str(db)], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "SYNCENGINE_BUSY_WAIT": "2"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "waiting for another process to finish writing" in result.stderr
    assert "held the store's write lock for 2 s; nothing was changed" in result.stderr


def test_c19_a_store_of_a_newer_schema_is_refused_naming_the_versions(tmp_path):
    db = tmp_path / "store.db"
    store.connect(db).execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    result = run_cli("status", "--db", str(db))
    assert result.returncode == 1 and "schema version 99" in result.stderr and f"up to {max(v for v, _, _ in store.migrations())}" in result.stderr


def test_c19_read_only_commands_do_not_create_a_store_and_empty_names_are_refused(tmp_path):
    missing = tmp_path / "typo.db"
    for args in (["status", "--db", str(missing)], ["deltas", "--db", str(missing)]):
        result = run_cli(*args)
        assert result.returncode == 1 and "no such store" in result.stderr
    assert not missing.exists()
    db = str(tmp_path / "store.db")
    assert run_cli("index", str(TREE), "--db", db, "--mailbox", "").returncode == 2
    refused = run_cli("event", "start", "", "--mailbox", ALICE, "--db", db)
    assert refused.returncode == 4 and "not an event name" in refused.stderr
    refused = run_cli("event", "start", "ev1", "--mailbox", " ", "--db", db)
    assert refused.returncode == 4 and "empty mailbox address" in refused.stderr


STEPS = ["truncate", "remove", "restore", "index", "snapshot", "resnapshot", "poll", "start"]


@needs_corpus()
def test_c19_property_no_flicker_of_a_real_store_delivers_what_it_holds_or_purges_older_mail(tmp_path_factory):
    """Hypothesis: any interleaving of index runs over good, truncated, missing and
    restored copies of the corpus OST with snapshot adds and polls, during an event."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(st.sampled_from(STEPS), min_size=3, max_size=12))
    def check(steps: list[str]) -> None:
        folder = tmp_path_factory.mktemp("flicker")
        ost, db = folder / "alice.ost", store.connect(folder / "store.db")
        shutil.copy(OST, ost)
        clock = 1_000.0
        index.run(db, [ost], OST_BOX, now=clock, workers=1)
        held = {r[0] for r in db.execute("SELECT m.message_id FROM locations l JOIN messages m ON m.id = l.message"
                                          " WHERE l.received = 1 AND m.message_id IS NOT NULL")}
        listed = _inbox_snapshot(folder / "store.db", folder / "snap-0")
        engine.add_snapshot(db, folder / "snap-0", clock)
        started = False
        for number, step in enumerate(steps + ["start", "restore", "index", "poll"]):
            clock += 60
            if step == "truncate" and ost.exists():
                os.truncate(ost, 2_000_000)
            elif step == "remove" and ost.exists():
                ost.unlink()
            elif step == "restore":
                shutil.copy(OST, ost)
                os.utime(ost, (clock, clock))
            elif step == "index":
                index.run(db, [ost], OST_BOX, now=clock, workers=1)
            elif step == "snapshot":
                snap = folder / f"snap-{number + 1}"
                snap.mkdir()
                (snap / "snapshot.json").write_text(json.dumps(_page(OST_BOX, [{
                    "id": f"new-{number}", "received": "2026-03-02T08:00:00Z", "mimeMessageId": f"<new-{number}@x>",
                    "from": {"emailAddress": "partner@example.org"}, "subject": f"New {number}"}])))
                engine.add_snapshot(db, snap, clock)
            elif step == "resnapshot":  # Mimecast lists the same messages again, under new ids
                snap = folder / f"snap-{number + 1}"
                shutil.copytree(folder / "snap-0", snap)
                page = json.loads((snap / "snapshot.json").read_text())
                for entry in page["data"]:
                    entry["id"] += f"-again-{number}"
                (snap / "snapshot.json").write_text(json.dumps(page))
                engine.add_snapshot(db, snap, clock)
            elif step == "start" and not started:
                engine.start_event(db, "ev1", [OST_BOX], False, clock)
                started = True
            elif step == "poll" and started:
                engine.poll(db, clock)
        deltas = engine.deltas(db)
        delivered = {d["message_id"].strip("<>") for d in deltas if d["action"] == "deliver"}
        assert listed and not delivered & held, f"{steps}: delivered what the export holds"
        assert [d for d in deltas if d["action"] == "purge"] == [], f"{steps}: purged the user's own mail"
        db.conn.close()

    check()


def test_c19_an_export_gone_outside_an_event_keeps_its_mailbox_waiting_until_it_returns_or_is_forgotten(tmp_path):
    db, pst = tmp_path / "store.db", tmp_path / "alice.msg"
    shutil.copy(TREE / "Inbox" / "plain.msg", pst)
    run_cli("index", str(pst), "--db", str(db), "--mailbox", ALICE, check=True)
    pst.unlink()
    assert run_cli("index", str(pst), "--db", str(db), "--mailbox", ALICE).returncode == 3
    demo = FIXTURES / "scenarios" / "demo"
    run_cli("snapshot", "add", str(demo / "snapshots" / "alice-0859"), "--db", str(db), check=True)
    started = run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
    assert "reconcile wrote 0 deltas" in started.stdout and "no such file or folder" in started.stderr
    forgot = run_cli("forget", str(pst), "--db", str(db), check=True)
    assert "forgot" in forgot.stdout
    # no export at all: still waiting, until the user says the mailbox has no local mail (C19)
    assert run_cli("sync", "--db", str(db), check=True).stdout.strip() == "0 deltas"
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert [(w["export"], w["why"].split(":")[0]) for w in status["waiting"]] == [(None, "no export declared")]
    run_cli("index", "--mailbox", ALICE, "--no-local-mail", "--db", str(db), check=True)
    assert run_cli("sync", "--db", str(db), check=True).stdout.strip() == "3 deltas"  # an empty index, now whole
    assert run_cli("forget", str(pst), "--db", str(db)).returncode == 4


@needs_corpus()
def test_c5_a_first_read_store_fingerprints_items_without_message_id_by_their_own_identity(db, tmp_path):
    """Staging a new store before its source row exists must not leave a placeholder in
    the fingerprint of its items without Message-ID (C5: each its own identity)."""
    ost = tmp_path / "alice.ost"
    shutil.copy(OST, ost)
    index.run(db, [ost], OST_BOX, now=100.0, workers=1)
    rows = db.execute("SELECT identity, fingerprint FROM messages WHERE identity LIKE 'nomid:%'").fetchall()
    assert rows and all(not identity.startswith("nomid:0:") for identity, _ in rows)
    assert [(i, f) for i, f in rows if f != normalise.fingerprint(i)] == []
