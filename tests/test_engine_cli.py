"""The engine's commands as a user runs them, against a real store, in real processes."""

from __future__ import annotations

import json
import os
import shutil
import stat

from syncengine import engine, formats, store

from .conftest import FIXTURES, json_lines, run_cli

SCENARIOS = FIXTURES / "scenarios"
ALICE = "alice@acme.example"


def _db(tmp_path):
    return str(tmp_path / "store.db")


def test_event_lifecycle_from_the_command_line(tmp_path):
    db = _db(tmp_path)
    run_cli("index", str(SCENARIOS / "demo" / "mailbox" / "alice"), "--db", db, "--mailbox", ALICE, check=True)
    added = run_cli("snapshot", "add", str(SCENARIOS / "demo" / "snapshots" / "alice-0859"), "--db", db, check=True)
    assert "4 entries from 1 of 1 page(s)" in added.stdout
    started = run_cli("event", "start", "ev1", "--mailbox", "Alice@Acme.example", "--db", db, check=True)
    assert "reconcile wrote 2 deltas" in started.stdout
    refused = run_cli("event", "start", "ev2", "--mailbox", ALICE, "--db", db)
    assert refused.returncode == 4 and "already in open event 'ev1'" in refused.stderr
    run_cli("snapshot", "add", str(SCENARIOS / "demo" / "snapshots" / "alice-0901"), "--db", db, check=True)
    assert "1 deltas" in run_cli("sync", "--db", db, check=True).stdout
    log = json_lines(run_cli("deltas", "--db", db, "--json", check=True).stdout)
    assert [(d["seq"], d["mailbox_seq"], d["action"]) for d in log] == [(1, 1, "deliver"), (2, 2, "deliver"),
                                                                        (3, 3, "deliver")]
    assert len(json_lines(run_cli("deltas", "--db", db, "--json", "--since", "2", check=True).stdout)) == 1
    run_cli("event", "end", "ev1", "--db", db, check=True)
    status = json.loads(run_cli("status", "--db", db, "--json", check=True).stdout)
    assert status["events"][0]["phase"] == "ending"
    assert status["events"][0]["report"][ALICE]["delivered"] == 3
    assert status["events"][0]["report"][ALICE]["held"] == 1


def test_ending_an_unknown_event_is_refused(tmp_path):
    store.connect(_db(tmp_path)).conn.close()
    result = run_cli("event", "end", "nope", "--db", _db(tmp_path))
    assert result.returncode == 4 and "no event 'nope'" in result.stderr


def test_ending_an_event_in_a_mistyped_store_creates_no_store(tmp_path):
    result = run_cli("event", "end", "nope", "--db", _db(tmp_path))
    assert result.returncode == 1 and "no such store" in result.stderr
    assert not os.path.exists(_db(tmp_path))


def test_rejected_pages_are_shown_and_the_others_apply(tmp_path):
    result = run_cli("snapshot", "add", str(SCENARIOS / "n3-bad-input-goes-on" / "snapshots" / "alice-0859"),
                     "--db", _db(tmp_path))
    assert result.returncode == 3
    assert "2 entries from 2 of 7 page(s)" in result.stdout
    rejected = [line for line in result.stderr.splitlines() if line.startswith("error: rejected page")]
    assert len(rejected) == 5
    assert any("snapshot-0005.json: $.data[0]: object missing required field `from`" in r for r in rejected)
    assert "Traceback" not in result.stderr


def test_an_entry_found_invalid_late_in_its_page_still_rejects_the_page_whole(tmp_path):
    """Entries are decoded as their rows are made (a page's objects are never all held):
    the third entry's bad id rejects its page, rows made before it included."""
    folder = tmp_path / "snap"
    folder.mkdir()
    good = {"id": "e", "received": "2026-03-02T08:00:00Z", "from": {"emailAddress": "x@example.org"}, "subject": "s"}
    meta = {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}}
    pages = [[{**good, "id": "a1"}, {**good, "id": "a2"}, {**good, "id": 3}], [{**good, "id": "b1"}]]
    for number, data in enumerate(pages, start=1):
        (folder / f"snapshot-{number:04d}.json").write_text(json.dumps({"meta": meta, "data": data, "fail": []}))
    result = run_cli("snapshot", "add", str(folder), "--db", _db(tmp_path))
    assert result.returncode == 3 and "snapshot-0001.json: $.data[2].id: expected `str`, got `int`" in result.stderr
    database = store.connect(_db(tmp_path), create=False)
    try:
        assert database.execute("SELECT entry_id FROM entries").fetchall() == [("b1",)]
    finally:
        database.conn.close()


def test_stored_content_is_readable_by_the_owner_only_and_outlives_the_snapshot(tmp_path):
    snapshot = tmp_path / "snap"
    shutil.copytree(SCENARIOS / "demo" / "snapshots" / "alice-0859", snapshot)
    db = store.connect(tmp_path / "store.db")
    engine.add_snapshot(db, snapshot, 100.0)
    shutil.rmtree(snapshot)
    paths = [row[0] for row in db.execute("SELECT content FROM entries")]
    assert len(paths) == 4
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert b"Message-ID" in open(path, "rb").read()
    assert stat.S_IMODE(os.stat(os.path.dirname(paths[0])).st_mode) == 0o700


def test_times_with_z_and_mimecast_offsets_are_the_same(tmp_path):
    page = json.loads((SCENARIOS / "demo" / "snapshots" / "alice-0859" / "snapshot.json").read_text())
    for item in page["data"]:
        item.pop("content")
    zulu = json.loads(json.dumps(page).replace("+0000", "Z"))
    (tmp_path / "a.json").write_text(json.dumps(page))
    (tmp_path / "b.json").write_text(json.dumps(zulu))
    db = store.connect(tmp_path / "store.db")
    engine.add_snapshot(db, tmp_path / "a.json", 1.0)
    engine.add_snapshot(db, tmp_path / "b.json", 2.0)
    rows = db.execute("SELECT snapshot_id, header_ts, received_ts FROM entries ORDER BY snapshot_id, position").fetchall()
    assert [r[1:] for r in rows[:4]] == [r[1:] for r in rows[4:]]


def test_class_comes_from_the_calendar_part_when_absent(tmp_path):
    db = store.connect(tmp_path / "store.db")
    engine.add_snapshot(db, SCENARIOS / "c10-classes-calendar-on" / "snapshots" / "alice-0859", 1.0)
    classes = dict(db.execute("SELECT entry_id, message_class FROM entries WHERE entry_id LIKE 'ics%'").fetchall())
    assert classes == {"ics1": "IPM.Schedule.Meeting.Request", "ics2": "IPM.Schedule.Meeting.Resp.Pos"}


def test_directory_nested_groups_cycles_aliases_and_delegates(tmp_path):
    doc = {"synced": "2026-11-28T06:00:00Z",
           "users": [{"emailAddress": "alice@acme.example", "aliases": ["A.Smith@acme.example"]}],
           "groups": [{"emailAddress": "sales@acme.example", "groupMembers": [
                          {"emailAddress": "emea@acme.example", "type": "group"}]},
                      {"emailAddress": "emea@acme.example", "groupMembers": [
                          {"emailAddress": "a.smith@acme.example"}, {"emailAddress": "sales@acme.example",
                                                                     "type": "group"}]}],
           "delegates": [{"mailbox": "bob@acme.example", "delegate": "alice@acme.example"}]}
    (tmp_path / "dir.json").write_text(json.dumps(doc))
    result = run_cli("directory", "add", str(tmp_path / "dir.json"), "--db", _db(tmp_path))
    assert result.returncode == 0 and "1 users, 2 groups, 1 delegations" in result.stdout
    db = store.connect(tmp_path / "store.db")
    view = engine.directory_at(db.conn, 1e12)
    assert view.primary("a.smith@ACME.example") == ALICE
    assert view.groups(ALICE) == {"sales@acme.example", "emea@acme.example"}
    assert view.may_see(ALICE, "bob@acme.example") and not view.may_see("bob@acme.example", ALICE)


def test_directory_with_a_bad_time_names_file_and_path(tmp_path):
    (tmp_path / "dir.json").write_text('{"synced": "tuesday", "users": []}')
    result = run_cli("directory", "add", str(tmp_path / "dir.json"), "--db", _db(tmp_path))
    assert result.returncode == 4
    assert f"{tmp_path / 'dir.json'}: $.synced: expected an ISO 8601 time with a zone" in result.stderr


def test_json_schemas_are_generated_from_the_types(tmp_path):
    written = formats.write_schemas(tmp_path)
    for path in written:
        committed = FIXTURES.parent / "schema" / "json" / path.name
        assert committed.read_text() == path.read_text(), f"run python -m syncengine.formats ({path.name})"
