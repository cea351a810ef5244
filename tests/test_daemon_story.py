"""The daemon's log and `status` tell the story (issue 23): one line per action worth
knowing, with structured fields in JSON mode; bulk indexing summarised; a rejected page
said before what was applied; when the next poll comes and when an event closes; how
far a first index has got; a configured export that is not there. The real daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from email.utils import formatdate
from pathlib import Path

from .conftest import FIXTURES, ROOT, run_cli
from .processes import Proc

ALICE = "alice@acme.example"
BASE = 1_772_438_400


def _mail(root: Path, count: int) -> None:
    (root / "Inbox").mkdir(parents=True)
    for n in range(count):
        (root / "Inbox" / f"m{n:03d}.eml").write_bytes(
            f"Message-ID: <own-{n}@acme.example>\r\nDate: {formatdate(BASE - 3600 + n)}\r\nFrom: p@example.org\r\n"
            f"To: {ALICE}\r\nSubject: own {n}\r\n\r\nbody\r\n".encode())


def _config(tmp_path: Path, exports: list[str], window: int = 0) -> Path:
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    config = tmp_path / "syncengine.toml"
    config.write_text(f'db = "store.db"\npoll_interval = 1\npost_event_window = {window}\n[[mailbox]]\n'
                      f'address = "{ALICE}"\nexports = {json.dumps(exports)}\n')
    return config


def _json_lines(proc: Proc) -> list[dict]:
    return [json.loads(line) for line in list(proc.err) if line.startswith("{")]


def _logged(message: str):
    return lambda p: any(message in line.get("message", "") for line in _json_lines(p))


def test_json_log_lines_carry_what_happened_as_fields_and_bulk_indexing_is_one_summary(tmp_path):
    _mail(tmp_path / "mail", 60)
    config = _config(tmp_path, ["mail"])
    daemon = Proc("--config", str(config), "daemon", "--log-format", "json")
    try:
        daemon.wait_for(_logged(f"index of {ALICE}"), what="the first index")
        summary = next(line for line in _json_lines(daemon) if line["message"].startswith(f"index of {ALICE}"))
        assert summary["mailbox"] == ALICE and summary["files"] == 60 and summary["messages"] == 60
        assert not any(line["message"].startswith("indexed ") for line in _json_lines(daemon))  # no line per file
        started = run_cli("--config", str(config), "event", "start", "outage", check=True)
        assert "reconcile wrote 0 deltas" in started.stdout
        daemon.wait_for(_logged("event outage started"), what="the event's start")
        line = next(line for line in _json_lines(daemon) if line["message"].startswith("event outage started"))
        assert line["event"] == "outage" and line["mailboxes"] == [ALICE] and line["deltas"] == 0
        # a snapshot with a rejected page: the rejection first, then what was applied and when it is decided
        bad = tmp_path / "staging"
        shutil.copytree(FIXTURES / "scenarios" / "n3-bad-input-goes-on" / "snapshots" / "alice-0859", bad)
        bad.rename(tmp_path / "snapshots" / "alice-0859")
        daemon.wait_for(_logged("applied snapshot"), what="the snapshot applied")
        lines = _json_lines(daemon)
        applied = next(n for n, line in enumerate(lines) if line["message"].startswith("applied snapshot"))
        rejected = [n for n, line in enumerate(lines) if line["message"].startswith("rejected page")]
        assert rejected and max(rejected) < applied
        assert lines[applied]["rejected"] == len(rejected) and lines[applied]["entries"] > 0
        assert lines[applied]["next_poll"].endswith("Z")
        daemon.wait_for(_logged("poll of outage"), what="the poll that decides it")
        poll = next(line for line in _json_lines(daemon) if line["message"].startswith("poll of outage"))
        assert poll["event"] == "outage" and poll["deltas"] > 0 and poll["next_poll"].endswith("Z")
        run_cli("--config", str(config), "event", "end", "outage", check=True)
        daemon.wait_for(_logged("event outage closed"), what="the event to close")  # window 0: at the next poll
        closed = next(line for line in _json_lines(daemon) if line["message"].startswith("event outage closed"))
        assert closed["phase"] == "closed"
        shown = run_cli("--config", str(config), "sync", check=True)
        assert "0 deltas" in shown.stdout
        daemon.wait_for(_logged("sync from the command line"), what="the forwarded sync in the log")
    finally:
        assert daemon.stop() == 0


def test_status_shows_how_far_a_first_index_has_got_and_a_configured_export_that_is_missing(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), "--messages", "30000", "--format", "pst",
                    "--seed", "3", str(tmp_path / "big.pst")], check=True, capture_output=True, timeout=300)
    config = _config(tmp_path, ["big.pst", "gone.pst"])
    daemon = Proc("--config", str(config), "daemon", "--log-format", "json")
    try:
        daemon.wait_for(_logged("first read of"), what="the first read to begin")
        os.kill(daemon.popen.pid, signal.SIGSTOP)  # held mid-read (30,000 messages take over a second)
        try:
            status = json.loads(run_cli("--config", str(config), "status", "--json", check=True).stdout)
            text = run_cli("--config", str(config), "status", check=True).stdout
        finally:
            os.kill(daemon.popen.pid, signal.SIGCONT)
        assert status["indexing"]["mailbox"] == ALICE and status["indexing"]["since"].endswith("Z")
        assert f"indexing {ALICE}: " in text
        assert status["missing_exports"] == [{"mailbox": ALICE, "export": str(tmp_path / "gone.pst")}]
        assert f"missing export: {tmp_path / 'gone.pst'} ({ALICE})" in text
        daemon.wait_for(_logged(f"index of {ALICE}"), timeout=120, what="the index to finish")
        assert json.loads(run_cli("--config", str(config), "status", "--json", check=True).stdout)["indexing"] is None
    finally:
        assert daemon.stop() == 0


def test_n2_an_exchange_copy_that_is_not_purged_is_named_with_its_reason_in_the_report(tmp_path):
    db = tmp_path / "store.db"
    run_cli("replay", str(FIXTURES / "scenarios" / "c14-c15-n2-post-event-window"), "--db", str(db), "-q",
            check=True)
    event = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)["events"][0]
    assert [(k["message_id"], k["folder"]) for k in event["kept"]] == [("<undated-copy@mail.example>", "Inbox")]
    assert "N2" in event["kept"][0]["reason"] and "no submit time" in event["kept"][0]["reason"]
    assert event["report"][ALICE]["purged"] == 2  # the certain ones were purged; the counts are C14's own
    text = run_cli("status", "--db", str(db), check=True).stdout
    assert "not purged: <undated-copy@mail.example> in Inbox" in text


def test_the_daemon_tells_systemd_it_is_ready_once_every_mailbox_has_read_and_when_it_stops(tmp_path):
    """Type=notify: `systemctl --user start` returns when status would say the index is whole."""
    _mail(tmp_path / "mail", 40)
    config = _config(tmp_path, ["mail"])
    folder = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # a unix socket path must be short
    supervisor = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    supervisor.bind(str(folder / "notify"))
    supervisor.settimeout(60)
    daemon = Proc("--config", str(config), "daemon", "--log-format", "json",
                  env={"NOTIFY_SOCKET": str(folder / "notify")})
    try:
        ready = supervisor.recv(4096).decode()
        assert ready.startswith("READY=1")
        daemon.wait_for(_logged("ready: every mailbox"), what="the ready line, logged just before READY=1")
        said = [line["message"] for line in _json_lines(daemon)]
        first_index = next(n for n, m in enumerate(said) if m.startswith(f"index of {ALICE}"))
        assert first_index < next(n for n, m in enumerate(said) if m.startswith("ready:"))
        assert daemon.stop() == 0
        assert supervisor.recv(4096) == b"STOPPING=1"
    finally:
        daemon.stop()
        supervisor.close()
        shutil.rmtree(folder)
