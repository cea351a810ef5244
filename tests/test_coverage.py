"""Coverage (C19): nothing is decided for a mailbox before its exports have read, and a
first read is a baseline, never purged. The real daemon on real exports (EML trees, a
30,000-message PST), the CLI, and a property test over interleavings.

Every daemon test ends the same way: once the index has read, `sync` (run by the daemon
itself) and the store must hold exactly the deltas a whole index gives, and no purge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

from syncengine import coverage, engine, index, normalise, store

from .conftest import ROOT, run_cli
from .processes import Proc

ALICE = "alice@acme.example"
BASE = 1_772_438_400  # 2026-03-02T08:00:00Z
RECEIVED = {"Inbox", "Archive/2024", "Archive/2023", "Inbox/Projects", "Inbox/Projects/Q4", "Inbox/Newsletters"}


def _entry(entry_id: str, mid: str, when: int, subject: str) -> dict:
    return {"id": entry_id, "received": normalise.iso(when + 5), "headerDate": normalise.iso(when),
            "mimeMessageId": mid, "from": {"emailAddress": "partner@example.org"}, "subject": subject}


def _own_mail(root: Path, count: int, prefix: str = "own") -> list[dict]:
    """`count` messages in a mailbox's Inbox as an exporter writes them, and the entries
    Mimecast lists for them."""
    (root / "Inbox").mkdir(parents=True, exist_ok=True)
    entries = []
    for n in range(count):
        when, mid, subject = BASE - 86_400 + 30 * n, f"<{prefix}-{n}@acme.example>", f"{prefix} {n}"
        (root / "Inbox" / f"{prefix}-{n:05d}.eml").write_bytes(
            f"Message-ID: {mid}\r\nDate: {formatdate(when)}\r\nFrom: partner@example.org\r\nTo: {ALICE}\r\n"
            f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        entries.append(_entry(f"{prefix}-{n}", mid, when, subject))
    return entries


def _new_mail(count: int, prefix: str = "new") -> list[dict]:
    return [_entry(f"{prefix}-{n}", f"<{prefix}-{n}@mail.example>", BASE + n, f"{prefix} {n}") for n in range(count)]


def _pst_entries(pst: Path, count: int) -> list[dict]:
    """Entries for `count` messages of a generated PST, from its ground truth."""
    truth = json.loads(Path(f"{pst}.truth.json").read_text())
    chosen = [t for t in truth.values() if t["folder"] in RECEIVED and t["message_id"] and t["submit_ts"]][:count]
    return [_entry(f"pst-{n}", f"<{t['message_id']}>", t["submit_ts"], t["subject"]) for n, t in enumerate(chosen)]


def _make_pst(path: Path, messages: int, seed: int) -> Path:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), "--messages", str(messages),
                    "--format", "pst", "--seed", str(seed), str(path)], check=True, capture_output=True, timeout=300)
    return path


def _config(tmp_path: Path, exports: list[str], scheduled: bool) -> Path:
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    lines = ['db = "store.db"', 'snapshot_folder = "snapshots"', "poll_interval = 1", "post_event_window = 60",
             "[[mailbox]]", f'address = "{ALICE}"', f"exports = {json.dumps(exports)}"]
    if scheduled:  # an event whose start has passed: the daemon starts it at once
        lines += ["[[event]]", 'name = "outage"', f'mailboxes = ["{ALICE}"]', 'start = "2020-01-01T00:00:00Z"']
    config = tmp_path / "daemon.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _drop(tmp_path: Path, name: str, entries: list[dict]) -> None:
    """One snapshot page into the drop folder, written under a dot-name and renamed."""
    hidden = tmp_path / "snapshots" / f".{name}.json"
    hidden.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}},
                                  "data": entries, "fail": []}))
    hidden.rename(tmp_path / "snapshots" / f"{name}.json")


def _logged(text: str, count: int = 1):
    return lambda p: sum(text in line for line in p.err) >= count


def _daemon(config: Path) -> Proc:
    proc = Proc("daemon", "--config", str(config))
    proc.wait_for(_logged("daemon started"), what="the daemon's start")
    return proc


def _deltas(db: Path) -> list[dict]:
    database = store.connect(db, create=False)
    try:
        return engine.deltas(database)
    finally:
        database.conn.close()


def _settled(daemon: Proc, db: Path, snapshot: str, reads: int = 1) -> list[dict]:
    """Once the daemon has applied `snapshot` and its index has read (`reads` runs logged),
    one poll by the daemon itself; the delta log after it."""
    daemon.wait_for(_logged(f"{snapshot}.json: "), what=f"snapshot {snapshot} applied")
    daemon.wait_for(_logged(f"index of {ALICE}", reads), timeout=120, what="the index to have read")
    run_cli("sync", "--db", str(db), check=True)
    return _deltas(db)


def _assert_whole(deltas: list[dict], new: list[dict]) -> None:
    """Exactly the deliveries a whole index gives (the new mail), and no purge."""
    assert [d for d in deltas if d["action"] == "purge"] == [], "purged the user's own mail"
    delivered = sorted(d["source"] for d in deltas if d["action"] == "deliver")
    assert delivered == sorted(f"mimecast:{e['id']}" for e in new)


@pytest.mark.parametrize("how", ["schedule", "cli"])
def test_c19_a_daemons_first_start_decides_nothing_before_the_export_has_read(tmp_path, how):
    """Issue 17, path 1: a new store, 3,000 EML files, a snapshot listing 300 of them,
    and an event started by the config's schedule or by `event start` at once."""
    own = _own_mail(tmp_path / "mail", 3000)
    new = _new_mail(20)
    config = _config(tmp_path, ["mail"], scheduled=how == "schedule")
    _drop(tmp_path, "alice-1", own[::10] + new)
    daemon = _daemon(config)
    db = tmp_path / "store.db"
    try:
        if how == "cli":
            started = run_cli("event", "start", "outage", "--mailbox", ALICE, "--db", str(db), check=True)
            daemon.wait_for(_logged("event outage started"), what="the event start")
            # The daemon answers with what waited when its reconcile ran (the log's order can
            # lag the index's commit): started while the export was being read, it decided nothing.
            if "waiting for its index" in started.stderr:
                assert "reconcile wrote 0 deltas" in started.stdout and str(tmp_path / "mail") in started.stderr
        _assert_whole(_settled(daemon, db, "alice-1"), new)
    finally:
        assert daemon.stop() == 0


def test_c19_kill_9_during_the_first_read_of_a_30000_message_pst_then_restart_gives_the_whole_index_outcome(tmp_path):
    pst = _make_pst(tmp_path / "alice.pst", 30_000, seed=3)
    own, new = _pst_entries(pst, 300), _new_mail(20)
    assert len(own) == 300
    config = _config(tmp_path, ["alice.pst"], scheduled=True)
    _drop(tmp_path, "alice-1", own + new)
    daemon = _daemon(config)
    daemon.wait_for(_logged("first read of"), what="the first read to begin")
    daemon.kill()
    db = tmp_path / "store.db"
    assert [d for d in _deltas(db) if d["action"] == "deliver" and d["source"].startswith("mimecast:pst-")] == []
    daemon = _daemon(config)
    try:
        _assert_whole(_settled(daemon, db, "alice-1"), new)
        database = store.connect(db, create=False)
        counts = database.execute("SELECT count(*), sum(baseline) FROM locations").fetchone()
        assert counts[0] > 29_000 and counts[0] == counts[1]  # every location of the first read is baseline
    finally:
        assert daemon.stop() == 0


def test_c19_an_export_added_mid_event_waits_reads_as_a_baseline_and_floods_nothing(tmp_path):
    """Issue 17, path 2: an archive PST added to the config while the daemon was stopped
    during an event; then a folder added while it runs."""
    _own_mail(tmp_path / "mail", 50)
    config = _config(tmp_path, ["mail"], scheduled=False)
    db = tmp_path / "store.db"
    daemon = _daemon(config)
    try:
        daemon.wait_for(_logged(f"index of {ALICE}"), what="the first index")
        run_cli("event", "start", "outage", "--mailbox", ALICE, "--db", str(db), check=True)
    finally:
        assert daemon.stop() == 0
    archive = _make_pst(tmp_path / "archive.pst", 2000, seed=5)
    config.write_text(config.read_text().replace('exports = ["mail"]', 'exports = ["mail", "archive.pst"]'))
    archived, new = _pst_entries(archive, 100), _new_mail(5)
    _drop(tmp_path, "alice-1", archived + new)
    daemon = _daemon(config)
    try:
        daemon.wait_for(_logged("first read of"), what="the archive's first read")
        deltas = _settled(daemon, db, "alice-1")
        _assert_whole(deltas, new)
        status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
        assert status["waiting"] == []
        # while it runs: a folder of 1,500 messages added to the config, then listed
        more = _own_mail(tmp_path / "more", 1500, prefix="more")
        config.write_text(config.read_text().replace('"archive.pst"]', '"archive.pst", "more"]'))
        daemon.wait_for(_logged(f"config: {ALICE} now also has"), what="the config change")
        later = _new_mail(3, prefix="later")
        _drop(tmp_path, "alice-2", more[::30] + later)
        # the added folder's read, not a count of index runs: whether the watcher's note of the
        # folder's creation lands in the same tick as the config change (a third run) is timing
        daemon.wait_for(_logged(f"index of {ALICE}: 1500 file(s) read"), timeout=120, what="the added folder read")
        _assert_whole(_settled(daemon, db, "alice-2"), new + later)
    finally:
        assert daemon.stop() == 0


def test_c19_a_mailbox_never_indexed_waits_and_says_so_until_declared_to_have_no_local_mail(tmp_path):
    """Issue 17, path 3."""
    db = str(tmp_path / "store.db")
    new = _new_mail(3)
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}},
                                "data": new, "fail": []}))
    run_cli("snapshot", "add", str(snap), "--db", db, check=True)
    started = run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", db, check=True)
    assert "reconcile wrote 0 deltas" in started.stdout and "no export declared" in started.stderr
    assert "0 deltas" in run_cli("sync", "--db", db, check=True).stdout
    status = run_cli("status", "--db", db, check=True).stdout
    assert f"waiting for index: {ALICE} in ev1: no export declared" in status
    run_cli("index", "--mailbox", ALICE, "--no-local-mail", "--db", db, check=True)
    assert "3 deltas" in run_cli("sync", "--db", db, check=True).stdout
    # or at the start, in one command
    other = str(tmp_path / "other.db")
    run_cli("snapshot", "add", str(snap), "--db", other, check=True)
    started = run_cli("event", "start", "ev1", "--mailbox", ALICE, "--no-local-mail", ALICE, "--db", other, check=True)
    assert "reconcile wrote 3 deltas" in started.stdout and started.stderr == ""


def test_c19_index_declares_its_paths_before_reading_so_a_crash_mid_read_leaves_the_mailbox_waiting(tmp_path):
    """Also: the run returns at once, so no parsing worker outlived it holding its pipes
    (workers.py; before, orphaned workers lived on forever)."""
    tree, db = tmp_path / "mail", tmp_path / "store.db"
    _own_mail(tree, 1200)
    store.connect(db).conn.close()  # migrated: the next commits are the index run's
    crashed = subprocess.run([sys.executable, "-m", "syncengine", "index", str(tree), "--db", str(db),
                              "--mailbox", ALICE], capture_output=True, text=True, timeout=120,
                             env={**os.environ, store.CRASH_ENV: "2"})  # the declaration, then one batch
    assert crashed.returncode == store.CRASH_EXIT
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert [(w["export"], w["why"]) for w in status["waiting"]] == [(str(tree), "not read yet")]


def test_c19_a_first_read_stopped_after_any_commit_is_still_a_baseline_when_resumed(tmp_path):
    """M was delivered before the archive that holds it was declared; the archive's first
    read is stopped hard after its k-th commit, for every k, and resumed: M's location in
    it is baseline every time, never purged (C19: the baseline is left as it is)."""
    home, archive = tmp_path / "mail", tmp_path / "archive"
    _own_mail(home, 3)
    held = _own_mail(archive, 1100, prefix="arch")[-1]  # the last file: read in the last batch
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}},
                                "data": [held], "fail": []}))
    k = 1
    while True:
        db = tmp_path / f"store-{k}.db"
        run_cli("index", str(home), "--db", str(db), "--mailbox", ALICE, check=True)
        run_cli("snapshot", "add", str(snap), "--db", str(db), check=True)
        assert "reconcile wrote 1 deltas" in run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db),
                                                    check=True).stdout
        stopped = subprocess.run([sys.executable, "-m", "syncengine", "index", str(archive), "--db", str(db),
                                  "--mailbox", ALICE], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, store.CRASH_ENV: str(k)})
        run_cli("index", str(archive), "--db", str(db), "--mailbox", ALICE, check=True)
        assert "0 deltas" in run_cli("sync", "--db", str(db), check=True).stdout, f"a purge after commit {k}"
        baseline = store.connect(db).execute("SELECT l.baseline FROM locations l JOIN messages m ON m.id = l.message"
                                             " WHERE m.message_id = 'arch-1099@acme.example'").fetchall()
        assert baseline == [(1,)], f"after commit {k}"
        if stopped.returncode != store.CRASH_EXIT:
            break  # the read finished before the k-th commit: every point was tried
        k += 1
    assert k >= 3  # the declaration, the batches, the record of the read


STEPS = ["declare", "read", "start", "poll", "restart", "forget", "snapshot", "arrive"]


def test_c19_property_no_purge_of_a_baseline_location_and_no_delivery_while_waiting(tmp_path_factory):
    """Hypothesis over interleavings of declaring, reading, forgetting an export, starting
    and polling an event, restarts, snapshots and Exchange copies arriving."""
    from hypothesis import HealthCheck, example, given, settings, strategies as st

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(st.sampled_from(STEPS), min_size=3, max_size=14))
    @example(steps=["read", "snapshot", "start", "arrive", "poll", "forget"])  # a purge, then the export re-read
    def check(steps: list[str]) -> None:
        folder = tmp_path_factory.mktemp("coverage")
        tree, path = folder / "mail", folder / "store.db"
        own = _own_mail(tree, 6)
        new = _new_mail(4)
        db = store.connect(path)
        clock = float(BASE)
        snapshots = iter([own[:3] + new[:2], own[3:] + new[2:]])
        started = False
        for step in steps + ["read", "start", "poll", "arrive", "poll"]:
            clock += 60
            waiting_before = started and bool(engine.waiting(db.conn))
            before = len(engine.deltas(db))
            if step == "declare":
                with store.transaction(db.conn) as conn:
                    coverage.declare_exports(conn, ALICE, [index.text(tree)], clock)
            elif step == "read":
                index.run(db, [tree], ALICE, now=clock, workers=1)
            elif step == "forget" and coverage.exports_of(db.conn, ALICE):
                index.forget(db, tree)
            elif step == "restart":
                db.conn.close()
                db = store.connect(path)
            elif step == "snapshot":
                entries = next(snapshots, None)
                if entries is not None:
                    snap = folder / f"snap-{clock:.0f}.json"
                    snap.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE,
                                                "kind": "mailbox"}}, "data": entries, "fail": []}))
                    engine.add_snapshot(db, snap, clock)
            elif step == "arrive":  # Exchange writes its own copy of new mail into the export
                for entry in new:
                    (tree / "Inbox" / f"{entry['id']}.eml").write_bytes(
                        f"Message-ID: {entry['mimeMessageId']}\r\nDate: {formatdate(BASE + int(entry['id'][4:]))}"
                        f"\r\nFrom: partner@example.org\r\nTo: {ALICE}\r\nSubject: {entry['subject']}\r\n\r\nx\r\n"
                        .encode())
                index.run(db, [tree], ALICE, now=clock, workers=1)
            elif step == "start" and not started:
                engine.start_event(db, "ev1", [ALICE], False, clock)
                started = True
            elif step == "poll" and started:
                engine.poll(db, clock)
            written = engine.deltas(db)[before:]
            if waiting_before and step in ("poll", "snapshot", "restart"):
                assert written == [], f"{steps}: decided while waiting for the index"
            if step == "start" and engine.waiting(db.conn):
                assert written == [], f"{steps}: reconciled a mailbox waiting for its index"
            for purge in (d for d in written if d["action"] == "purge"):  # as the store was when it purged:
                row = db.execute("SELECT l.baseline FROM locations l"  # a later forget and re-read makes
                                 " WHERE 'local:' || l.locator = ?",   # the same file baseline again
                                 (purge["source"],)).fetchone()
                assert row is None or row[0] == 0, f"{steps}: purged a baseline location"
        deltas = engine.deltas(db)
        own_ids = {e["mimeMessageId"] for e in own}
        assert not [d for d in deltas if d["action"] == "deliver" and d["message_id"] in own_ids], steps
        for purge in (d for d in deltas if d["action"] == "purge"):
            assert purge["message_id"] not in own_ids, f"{steps}: purged the user's own mail"
        db.conn.close()
        shutil.rmtree(folder)

    check()


def test_c19_a_client_starting_an_event_on_the_daemon_gets_the_reply_protocol_md_names(tmp_path):
    """The owner's command line hears what waits for its index; a client gets exactly
    protocol.md's `event_started`, whether or not the first read is still running."""
    from syncengine import endpoints

    from .test_notify import _request

    _own_mail(tmp_path / "mail", 3000)
    daemon = _daemon(_config(tmp_path, ["mail"], scheduled=False))
    try:
        reply = _request(endpoints.for_store(tmp_path / "store.db"),
                         {"op": "start_event", "client": ALICE, "event": "from-a-client", "mailboxes": [ALICE]})
        assert reply[0]["op"] == "event_started" and set(reply[0]) == {"op", "event", "deltas"}, reply
    finally:
        assert daemon.stop() == 0


def test_index_through_the_daemon_answers_with_the_failed_files_only_unless_json(tmp_path):
    """`syncengine index` while a daemon holds the store: the daemon indexes, and its
    answer lists the files that failed (the command line prints only those), not a
    report for each of a tree's thousands of good files; `--json` gets every file."""
    _own_mail(tmp_path / "mail", 5)
    daemon = _daemon(_config(tmp_path, ["mail"], scheduled=False))
    db = tmp_path / "store.db"
    try:
        more = tmp_path / "more"
        _own_mail(more, 300, prefix="more")
        (more / "Inbox" / "broken.msg").write_bytes(b"not an OLE2 file")
        request = {"command": "index", "mailbox": ALICE, "paths": [str(more)]}
        from syncengine import cli
        answered = cli._via_daemon(db, request)
        assert [r["path"] for r in answered["reports"]] == [str(more / "Inbox" / "broken.msg")]
        assert answered["summary"]["files"] == 301 and answered["summary"]["error"] == 1
        every = cli._via_daemon(db, {**request, "every_file": True})
        assert sorted(r["status"] for r in every["reports"]) == ["error"] + ["ok"] * 300
        printed = run_cli("index", str(more), "--db", str(db), "--mailbox", ALICE)
        assert printed.returncode == 3 and "broken.msg" in printed.stderr and "more-00001" not in printed.stderr
    finally:
        assert daemon.stop() == 0
