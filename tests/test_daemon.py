"""The workstation daemon as a user runs it: the real process on a temporary config, a
real `syncengine listen` client, files dropped and written as Outlook and Mimecast would.
Every wait is for a line or a delta, with a deadline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from syncengine import store

from .conftest import FIXTURES, run_cli
from .processes import Proc

ALICE = "alice@acme.example"
DEMO = FIXTURES / "scenarios" / "demo"


def _config(tmp_path: Path, **extra: str) -> Path:
    shutil.copytree(DEMO / "mailbox" / "alice", tmp_path / "mail")
    (tmp_path / "snapshots").mkdir()
    lines = ['db = "store.db"', 'snapshot_folder = "snapshots"', "poll_interval = 1", "post_event_window = 60",
             *(f"{k} = {v}" for k, v in extra.items()),
             "[[mailbox]]", f'address = "{ALICE}"', 'exports = ["mail"]']
    config = tmp_path / "daemon.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _daemon(config: Path, indexed: bool = True) -> Proc:
    proc = Proc("daemon", "--config", str(config))
    waited = "index of alice@acme.example" if indexed else "daemon started"
    proc.wait_for(lambda p: any(waited in e for e in p.err), what=waited)
    return proc


def _logged(text: str, count: int = 1):
    return lambda p: sum(text in line for line in p.err) >= count


def _drop(tmp_path: Path, name: str, entries: list[dict]) -> None:
    """A snapshot folder built under a dot-name and renamed into place, as a poller does."""
    hidden = tmp_path / "snapshots" / f".{name}"
    (hidden / "messages").mkdir(parents=True)
    for entry in entries:
        (hidden / "messages" / f"{entry['id']}.eml").write_bytes(
            f"Message-ID: {entry['mimeMessageId']}\r\nDate: Mon, 02 Mar 2026 08:00:00 +0000\r\n"
            f"Subject: {entry['subject']}\r\n\r\nbody\r\n".encode())
        entry["content"] = f"messages/{entry['id']}.eml"
    (hidden / "snapshot.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
        "address": ALICE, "kind": "mailbox"}}, "data": entries, "fail": []}))
    hidden.rename(tmp_path / "snapshots" / name)


def _entry(name: str) -> dict:
    return {"id": name, "received": "2026-03-02T08:00:00Z", "headerDate": "2026-03-02T08:00:00Z",
            "mimeMessageId": f"<{name}@mail.example>", "from": {"emailAddress": "bob@example.org"},
            "subject": f"About {name}"}


def test_daemon_delivers_a_dropped_snapshot_and_purges_the_exchange_copy_to_a_listening_client(tmp_path):
    config = _config(tmp_path)
    daemon = _daemon(config)
    listener = Proc("listen", "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json", "--ack")
    try:
        started = run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(tmp_path / "store.db"), check=True)
        assert "reconcile wrote 0 deltas" in started.stdout
        daemon.wait_for(_logged("event ev1 started"), what="the event start, run by the daemon")
        _drop(tmp_path, "alice-1", [_entry("offer")])
        listener.wait_for(lambda p: len(p.deltas()) >= 1, what="the delivery")
        delivery = listener.deltas()[0]
        assert (delivery["action"], delivery["message_id"]) == ("deliver", "<offer@mail.example>")
        assert Path(delivery["content"]).read_bytes().startswith(b"Message-ID: <offer@mail.example>")
        # Exchange comes back and writes its own copy into the export
        copy = tmp_path / "mail" / "Inbox" / "offer.eml"
        copy.write_bytes(Path(delivery["content"]).read_bytes())
        listener.wait_for(lambda p: len(p.deltas()) >= 2, what="the purge of the Exchange copy")
        purge = listener.deltas()[1]
        assert (purge["action"], purge["source"], purge["reason"]) == \
            ("purge", "local:Inbox/offer.eml", "exchange-duplicate")
        ended = run_cli("event", "end", "ev1", "--db", str(tmp_path / "store.db"), check=True)
        assert "event ev1 ending" in ended.stdout
        daemon.wait_for(_logged("event ev1 ending"), what="the event end, run by the daemon")
        assert daemon.popen.poll() is None
    finally:
        listener.stop()
        assert daemon.stop() == 0
    assert any("daemon stopped" in line for line in daemon.err)


def test_daemon_records_a_corrupt_file_and_keeps_serving(tmp_path):
    config = _config(tmp_path)
    daemon = _daemon(config)
    try:
        (tmp_path / "mail" / "Inbox" / "broken.msg").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 64)
        daemon.wait_for(_logged("broken.msg"), what="the error for the corrupt MSG")
        (tmp_path / "snapshots" / "bad.json").write_text("{not json")
        daemon.wait_for(_logged("bad.json: not valid JSON"), what="the rejected snapshot page")
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(tmp_path / "store.db"), check=True)
        _drop(tmp_path, "alice-1", [_entry("after")])
        daemon.wait_for(_logged("poll of ev1: 1 delta(s) written"), what="a delivery after the bad files")
        status = json.loads(run_cli("status", "--config", str(config), "--json", check=True).stdout)
        assert status["daemon"].startswith("pid ") and any("broken.msg" in e["file"] for e in status["last_errors"])
    finally:
        assert daemon.stop() == 0


def test_a_second_daemon_on_the_store_refuses_naming_the_first(tmp_path):
    config = _config(tmp_path)
    daemon = _daemon(config)
    try:
        second = run_cli("daemon", "--config", str(config))
        assert second.returncode == 1 and f"pid {daemon.popen.pid}" in second.stderr
    finally:
        daemon.stop()


@pytest.mark.parametrize("line, says", [
    ("pol_interval = 5", "unknown field `pol_interval`"),
    ("poll_interval = 0", "$.poll_interval: expected `int` >= 1"),
    ('calendar_items = "yes"', "$.calendar_items: expected `bool`"),
])
def test_a_config_with_an_unknown_key_or_a_bad_value_is_refused_naming_it(tmp_path, line, says):
    config = tmp_path / "daemon.toml"
    config.write_text(f"{line}\n[[mailbox]]\naddress = \"{ALICE}\"\nexports = [\"mail\"]\n")
    result = run_cli("daemon", "--config", str(config))
    assert result.returncode == 2 and says in result.stderr and str(config) in result.stderr


def test_init_writes_a_starter_config_that_the_daemon_accepts(tmp_path):
    config = tmp_path / "syncengine.toml"
    run_cli("init", "--config", str(config), "--mailbox", ALICE, "--export", "mail", check=True)
    assert "[[mailbox]]" in config.read_text() and run_cli("init", "--config", str(config)).returncode == 2
    (tmp_path / "mail").mkdir()
    daemon = _daemon(config, indexed=False)
    try:
        assert daemon.popen.poll() is None
    finally:
        assert daemon.stop() == 0


def test_daemon_killed_during_a_burst_of_snapshot_drops_resumes_to_the_same_log(tmp_path):
    """kill -9 mid-burst, restart: every message delivered once, none lost (N1, C8)."""
    names = [f"m{n}" for n in range(40)]

    def run(folder: Path, kill_after: int | None) -> list[tuple]:
        config = _config(folder)
        daemon = _daemon(config)
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(folder / "store.db"), check=True)
        for n in range(0, len(names), 4):
            _drop(folder, f"snap-{n:02d}", [_entry(name) for name in names[n:n + 4]])
            if kill_after is not None and n // 4 == kill_after:
                daemon.wait_for(_logged("applied snapshot", 2), what="two snapshots applied")
                daemon.kill()
                daemon = _daemon(config, indexed=False)
        listener = Proc("listen", "--db", str(folder / "store.db"), "--mailbox", ALICE, "--json")
        try:
            listener.wait_for(lambda p: len(p.deltas()) >= len(names), timeout=60, what="every delivery")
        finally:
            listener.stop()
            daemon.stop()
        db = store.connect(folder / "store.db")
        rows = db.execute("SELECT seq, mailbox_seq, action, message_id, source FROM deltas ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        return sorted(r[2:] for r in rows)

    steady = run(tmp_path / "steady", None)
    killed = run(tmp_path / "killed", 3)
    assert len(steady) == len(names) and killed == steady


def test_sigterm_stops_the_daemon_cleanly_with_everything_committed(tmp_path):
    config = _config(tmp_path)
    daemon = _daemon(config)
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(tmp_path / "store.db"), check=True)
    _drop(tmp_path, "alice-1", [_entry("last")])
    daemon.wait_for(_logged("poll of ev1: 1 delta(s) written"), what="the delivery")
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.popen.wait(10) == 0
    assert any("daemon stopped" in line for line in daemon.err)
    db = store.connect(tmp_path / "store.db", create=False)
    assert db.execute("SELECT count(*) FROM deltas").fetchone()[0] == 1
    assert not os.path.exists(tmp_path / "store.db.d" / "run" / "router.ipc") or \
        run_cli("status", "--db", str(tmp_path / "store.db"), check=True).stdout.endswith("daemon: not running\n")


def test_daemon_polls_mimecast_on_its_own_and_the_client_receives_what_the_api_served(tmp_path):
    from . import mimecast_contract as contract_mod

    raw = (f"Message-ID: <api-1@mail.example>\r\nDate: Sat, 28 Nov 2026 08:59:02 +0000\r\nTo: {ALICE}\r\n"
           "Subject: From the archive\r\n\r\nBody\r\n").encode()
    contract = contract_mod.Contract(messages=[contract_mod.Message("arch/1", ALICE, raw,
                                                                    message_id="<api-1@mail.example>")])
    server, url = contract_mod.serve(contract)
    config = _config(tmp_path)
    (tmp_path / "secret").write_text(contract_mod.CLIENT_SECRET)
    os.chmod(tmp_path / "secret", 0o600)
    with open(config, "a") as handle:
        handle.write(f'[mimecast]\nbase_url = "{url}"\nauth = "oauth2"\nclient_id = "{contract_mod.CLIENT_ID}"\n'
                     f'client_secret_file = "secret"\nmailboxes = ["{ALICE}"]\ninterval_s = 1\n')
    daemon = _daemon(config)
    listener = Proc("listen", "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json")
    try:
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(tmp_path / "store.db"), check=True)
        listener.wait_for(lambda p: len(p.deltas()) >= 1, what="the delivery of the archived message")
        delivery = listener.deltas()[0]
        assert delivery["message_id"] == "<api-1@mail.example>" and Path(delivery["content"]).read_bytes() == raw
        assert contract.calls["/api/archive/get-message-part"] == 1  # fetched once, whoever applied it
        entries = store.connect(tmp_path / "store.db").execute("SELECT entry_id FROM entries").fetchall()
        assert entries == [("arch/1",)]
        assert [p for p in (tmp_path / "snapshots").iterdir()] == []  # applied: its content is in the store
    finally:
        listener.stop()
        assert daemon.stop() == 0
        server.shutdown()


def test_events_of_the_config_schedule_start_and_end_at_their_times(tmp_path):
    config = _config(tmp_path)
    with open(config, "a") as handle:
        handle.write('[[event]]\nname = "planned"\nmailboxes = ["alice@acme.example"]\n'
                     'start = "2020-01-01T09:00:00Z"\nend = "2020-01-01T17:00:00Z"\n')
    daemon = _daemon(config, indexed=False)
    try:
        daemon.wait_for(_logged("event planned started"), what="the scheduled start")
        daemon.wait_for(_logged("event planned ending"), what="the scheduled end")
        daemon.stop()
        daemon = _daemon(config, indexed=False)  # a restart neither starts nor ends it again
        daemon.wait_for(_logged("index of alice@acme.example"), what="the first index after the restart")
        assert not any("planned" in line for line in daemon.err)
    finally:
        daemon.stop()


def test_a_daemon_on_a_tcp_endpoint_takes_the_command_line_on_its_local_channel_and_never_hangs_it(tmp_path):
    """The Windows set-up on Linux: a tcp [notify] endpoint with CURVE. The daemon serves the
    store's own ipc socket beside it for its owner's commands; each returns (before, each
    waited up to an hour for an answer on a socket nobody served)."""
    from .processes import free_port_pair

    run_cli("keys", "generate", str(tmp_path / "keys"), check=True)
    config = _config(tmp_path)
    with open(config, "a") as handle:
        handle.write(f'[notify]\nendpoint = "tcp://127.0.0.1:{free_port_pair()}"\nkeys = "keys"\n')
    daemon = _daemon(config)
    db = str(tmp_path / "store.db")
    try:
        started = subprocess.run([sys.executable, "-m", "syncengine", "event", "start", "ev1", "--mailbox", ALICE,
                                  "--db", db], capture_output=True, text=True, timeout=60)
        assert started.returncode == 0 and "reconcile wrote 0 deltas" in started.stdout, started.stderr
        daemon.wait_for(_logged("event ev1 started"), what="the event start, run by the daemon")
        _drop(tmp_path, "alice-1", [_entry("over-tcp")])
        daemon.wait_for(_logged("poll of ev1: 1 delta(s) written"), what="the delivery")
        for args in (["sync", "--db", db], ["event", "end", "ev1", "--db", db]):
            result = subprocess.run([sys.executable, "-m", "syncengine", *args], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0 and "note:" not in result.stderr, result.stderr
        daemon.wait_for(_logged("event ev1 ending"), what="the end, run by the daemon")
    finally:
        assert daemon.stop() == 0
