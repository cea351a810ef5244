"""The live loop end to end (issue 18): the contract Mimecast server (the one stand-in,
for Mimecast's cloud), the real daemon, a standalone poller, the apply client, all real
processes on real files. Each test waits for what it expects with a deadline."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from syncengine import engine, store

from . import mimecast_contract as contract_mod
from .conftest import run_cli
from .processes import Proc, wait_until

ALICE, BOB, SALES = "alice@acme.example", "bob@acme.example", "sales@acme.example"


def _raw(name: str, to: str = ALICE) -> bytes:
    return (f"Message-ID: <{name}@mail.example>\r\nDate: Sat, 28 Nov 2026 08:59:02 +0000\r\nFrom: bob@example.org\r\n"
            f"To: {to}\r\nSubject: About {name}\r\n\r\nBody of {name}\r\n").encode()


def _message(name: str, mailbox: str = ALICE, received: float | None = None) -> contract_mod.Message:
    message = contract_mod.Message(name, mailbox, _raw(name, mailbox), subject=f"About {name}",
                                   message_id=f"<{name}@mail.example>")
    if received is not None:
        message.received = contract_mod.mimecast_time(received)
    return message


@pytest.fixture
def contract():
    made = contract_mod.Contract()
    server, made.url = contract_mod.serve(made)
    yield made
    server.shutdown()


def _mimecast_table(tmp_path: Path, contract, mailboxes: list[str], **extra: str) -> str:
    (tmp_path / "secret").write_text(contract_mod.CLIENT_SECRET)
    os.chmod(tmp_path / "secret", 0o600)
    keys = {"base_url": f'"{contract.url}"', "auth": '"oauth2"', "client_id": f'"{contract_mod.CLIENT_ID}"',
            "client_secret_file": '"secret"', "mailboxes": json.dumps(mailboxes), "interval_s": "1", **extra}
    return "[mimecast]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def _daemon_config(tmp_path: Path, mailboxes: list[str], mimecast: str = "") -> Path:
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    lines = ['db = "store.db"', 'snapshot_folder = "snapshots"', "poll_interval = 1", "post_event_window = 60"]
    for address in mailboxes:
        lines += ["[[mailbox]]", f'address = "{address}"', "no_local_mail = true"]
    config = tmp_path / "daemon.toml"
    config.write_text("\n".join(lines) + "\n" + mimecast)
    return config


def _daemon(config: Path) -> Proc:
    proc = Proc("daemon", "--config", str(config))
    proc.wait_for(lambda p: any("daemon started" in line for line in p.err), what="the daemon's start")
    return proc


def _deliveries(db: Path) -> list[dict]:
    database = store.connect(db, create=False)
    try:
        return [d for d in engine.deltas(database) if d["action"] == "deliver"]
    finally:
        database.conn.close()


def test_c8a_mail_the_archive_lists_20_minutes_and_3_hours_late_is_delivered_once(tmp_path, contract):
    config = _daemon_config(tmp_path, [ALICE], _mimecast_table(tmp_path, contract, [ALICE]))
    db = tmp_path / "store.db"
    daemon = _daemon(config)
    try:
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
        wait_until(lambda: len(contract.listings) >= 3, what="the poller's first passes")
        now = time.time()  # listed from now on, received this long ago
        for name, lag in (("lag-0", 0), ("lag-20m", 20 * 60), ("lag-3h", 3 * 3600)):
            contract.messages.append(_message(name, received=now - lag))
        wait_until(lambda: len(_deliveries(db)) >= 3, timeout=90, what="the three deliveries")
        # the ladder lists the widest window again, and nothing is delivered twice
        seen = len(contract.listings)
        wait_until(lambda: any(end - start >= 4 * 3600 for start, end in contract.listings[seen:]), timeout=90,
                   what="a 4-hour listing after the deliveries")
        run_cli("sync", "--db", str(db), check=True)
        assert sorted(d["message_id"] for d in _deliveries(db)) == \
            ["<lag-0@mail.example>", "<lag-20m@mail.example>", "<lag-3h@mail.example>"]
    finally:
        assert daemon.stop() == 0


def test_one_applier_a_3000_message_burst_from_a_standalone_poller_into_a_daemons_drop_folder_arrives_whole(
        tmp_path, contract):
    received = time.time() - 3600
    contract.messages = [_message(f"burst-{n}", received=received + n) for n in range(3000)]
    config = _daemon_config(tmp_path, [ALICE])
    poller_config = tmp_path / "poller.toml"
    poller_config.write_text(_mimecast_table(tmp_path, contract, [ALICE], snapshot_folder='"snapshots"'))
    db, mail = tmp_path / "store.db", tmp_path / "mail"
    daemon = _daemon(config)
    poller = applier = None
    try:
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
        applier = Proc("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db))
        poller = Proc("mimecast", "poll", "--config", str(poller_config), "--db", str(db))
        wait_until(lambda: (mail / "Inbox").is_dir() and len(os.listdir(mail / "Inbox")) >= 3000, timeout=240,
                   what="3,000 messages in the client's Inbox")
        deliveries = _deliveries(db)
        assert len(deliveries) == 3000 and len({d["message_id"] for d in deliveries}) == 3000
        assert [d for d in deliveries if d["content"] is None] == []
        assert contract.calls["/api/archive/get-message-part"] == 3000  # each fetched once
        assert sorted(os.listdir(tmp_path / "snapshots")) == []           # each applied once, then removed
    finally:
        for proc in (poller, applier):
            if proc is not None:
                proc.stop()
        assert daemon.stop() == 0


def test_n1_a_part_mimecast_cannot_give_is_not_acked_unread_and_lands_when_it_comes(tmp_path, contract):
    contract.messages = [_message(f"part-{n}") for n in range(3)]
    contract.faults = {"/api/archive/get-message-part": [("fail", "err_unavailable", False)]}
    config = _daemon_config(tmp_path, [ALICE], _mimecast_table(tmp_path, contract, [ALICE]))
    db, mail = tmp_path / "store.db", tmp_path / "mail"
    daemon = _daemon(config)
    applier = Proc("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db))
    try:
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
        wait_until(lambda: (mail / "Inbox").is_dir() and len(os.listdir(mail / "Inbox")) == 3, timeout=90,
                   what="all three in the Inbox")
        assert sum(d["content"] is None for d in _deliveries(db)) == 1  # it went out before its part came
        assert any("pending" in line for line in applier.err)
        status = wait_until(lambda: (s := json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout))
                            and s["clients"] and s["clients"][0]["acked"] == 3 and s, what="the last acknowledgement")
        assert status["clients"][0]["latest"] == 3
        texts = sorted(p.read_bytes() for p in (mail / "Inbox").iterdir())
        assert all(text.split(b"\r\n", 1)[1] in {_raw(f"part-{n}") for n in range(3)} for text in texts)
    finally:
        applier.stop()
        assert daemon.stop() == 0


def test_c16_list_mail_through_the_live_loop_reaches_the_members_and_no_one_else(tmp_path, contract):
    contract.groups = {SALES: [(ALICE, "user")]}
    contract.messages = [_message("to-the-list", SALES), _message("to-bob", BOB)]
    table = _mimecast_table(tmp_path, contract, [ALICE, BOB], groups=json.dumps([SALES]))
    config = _daemon_config(tmp_path, [ALICE, BOB], table)
    db = tmp_path / "store.db"
    daemon = _daemon(config)
    try:
        daemon.wait_for(lambda p: any("applied directory sync" in line for line in p.err), what="the directory")
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--mailbox", BOB, "--expand-distribution-lists",
                "--db", str(db), check=True)
        wait_until(lambda: len(_deliveries(db)) >= 2, timeout=60, what="the list's and bob's mail")
        seen = len(contract.listings)
        wait_until(lambda: len(contract.listings) >= seen + 6, what="more passes")
        run_cli("sync", "--db", str(db), check=True)
        got = sorted((d["mailbox"], d["message_id"]) for d in _deliveries(db))
        assert got == [(ALICE, "<to-the-list@mail.example>"), (BOB, "<to-bob@mail.example>")]
        kinds = store.connect(db).execute("SELECT address, kind FROM entries ORDER BY address").fetchall()
        assert kinds == [(BOB, "mailbox"), (SALES, "group")]
    finally:
        assert daemon.stop() == 0


def test_a_standalone_poller_outlives_a_daemon_that_stops_answering_and_applies_its_folder_itself(tmp_path, contract):
    """Found by the soak (seed 7): the daemon stopped while a forwarded folder waited for
    its answer, and the standalone poller exited 1. A poller's folder is applied once
    whoever applies it, so the poller applies it itself and goes on."""
    contract.messages = [_message("before")]
    config = _daemon_config(tmp_path, [ALICE])
    poller_config = tmp_path / "poller.toml"
    poller_config.write_text(_mimecast_table(tmp_path, contract, [ALICE], snapshot_folder='"snapshots"'))
    db = tmp_path / "store.db"
    daemon = _daemon(config)
    poller = Proc("mimecast", "poll", "--config", str(poller_config), "--db", str(db))
    try:
        wait_until(lambda: store.connect(db).execute("SELECT count(*) FROM entries").fetchone()[0] == 1,
                   what="the first folder, applied by the daemon")
        daemon.popen.send_signal(signal.SIGSTOP)  # alive, holding the store, answering nothing
        contract.messages.append(_message("while-frozen"))
        wait_until(lambda: store.connect(db).execute("SELECT count(*) FROM entries").fetchone()[0] == 2,
                   timeout=60, what="the poller to apply the next folder itself")
        assert poller.popen.poll() is None
    finally:
        daemon.popen.send_signal(signal.SIGCONT)
        assert poller.stop() == 0
        assert daemon.stop() == 0


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="prlimit on a running process: Linux")
def test_a_standalone_poller_outlives_a_daemon_whose_disk_is_full_and_its_mail_lands_with_room(tmp_path, contract):
    """Found by the soak (seed 6203): the daemon's disk filled (RLIMIT_FSIZE 0) while a
    standalone poller forwarded its pass, the daemon answered `error`, and the poller
    exited 1. A pass the daemon cannot take is a failed pass: a line, a backoff, and the
    mail lands once the daemon has room again."""
    import resource

    contract.messages = [_message("before")]
    config = _daemon_config(tmp_path, [ALICE])
    poller_config = tmp_path / "poller.toml"
    poller_config.write_text(_mimecast_table(tmp_path, contract, [ALICE], snapshot_folder='"snapshots"'))
    db = tmp_path / "store.db"

    def ids() -> int:
        database = store.connect(db, create=False)
        try:
            return database.execute("SELECT count(DISTINCT entry_id) FROM entries").fetchone()[0]
        finally:
            database.conn.close()
    daemon = _daemon(config)
    poller = Proc("mimecast", "poll", "--config", str(poller_config), "--db", str(db))
    try:
        wait_until(lambda: ids() == 1, what="the first folder, applied by the daemon")
        resource.prlimit(daemon.popen.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        contract.messages.append(_message("while-full"))
        poller.wait_for(lambda p: any("the store could not be written" in line for line in p.err), timeout=60,
                        what="the poller hearing the daemon's full disk")
        resource.prlimit(daemon.popen.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_until(lambda: ids() == 2, timeout=90, what="the mail fetched meanwhile, applied with room")
        assert poller.popen.poll() is None and not any("Traceback" in line for line in poller.err + daemon.err)
    finally:
        assert poller.stop() == 0
        assert daemon.stop() == 0
