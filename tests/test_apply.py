"""The reference apply client closing the loop: real engine, real notification server,
real `syncengine apply` processes, a real SMTP relay (aiosmtpd), real files."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from syncengine import engine, index, store

from .conftest import FIXTURES, run_cli
from .processes import Proc, serve

ALICE = "alice@acme.example"
DEMO = FIXTURES / "scenarios" / "demo"


class Relay:
    """An SMTP relay on loopback that keeps every message it accepts."""

    def __init__(self, **options):
        self.messages: list[bytes] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)  # e.g. auth
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def relay():
    made = Relay()
    yield made
    made.stop()


def _message(name: str, sender: str = "bob@example.org", to: str = ALICE) -> bytes:
    return (f"Message-ID: <{name}@mail.example>\r\nDate: Mon, 02 Mar 2026 08:00:00 +0000\r\nFrom: {sender}\r\n"
            f"To: {to}\r\nSubject: About {name}\r\n\r\nBody of {name}\r\n").encode()


def _snapshot(folder: Path, names: list[str]) -> Path:
    (folder / "messages").mkdir(parents=True)
    data = []
    for name in names:
        (folder / "messages" / f"{name}.eml").write_bytes(_message(name))
        data.append({"id": name, "received": "2026-03-02T08:00:00Z", "headerDate": "2026-03-02T08:00:00Z",
                     "mimeMessageId": f"<{name}@mail.example>", "from": {"emailAddress": "bob@example.org"},
                     "subject": f"About {name}", "content": f"messages/{name}.eml"})
    (folder / "snapshot.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
        "address": ALICE, "kind": "mailbox"}}, "data": data, "fail": []}))
    return folder


def _setup(tmp_path: Path, names: list[str], layout: str = "eml", outbox: bool = True) -> tuple[Path, Path]:
    """A mailbox folder (with one Outbox item), indexed; a snapshot; an event started."""
    mail, db = tmp_path / "mail", tmp_path / "store.db"
    if layout == "eml":
        shutil.copytree(DEMO / "mailbox" / "alice", mail)
        if outbox:
            (mail / "Outbox").mkdir()
            (mail / "Outbox" / "reply.eml").write_bytes(_message("reply", sender=ALICE, to="bob@example.org"))
    else:
        for sub in ("cur", "new", "tmp", ".Sent Items/cur", ".Sent Items/new", ".Sent Items/tmp"):
            (mail / sub).mkdir(parents=True)
        (mail / "cur" / "1.kickoff:2,S").write_bytes((DEMO / "mailbox" / "alice" / "Inbox" / "kickoff.eml").read_bytes())
    database = store.connect(db)
    index.run(database, [mail], ALICE)
    engine.add_snapshot(database, _snapshot(tmp_path / "snap", names), engine.wall_clock())
    engine.start_event(database, "ev1", [ALICE], False, engine.wall_clock())
    database.conn.close()
    return mail, db


def _apply(mail: Path, db: Path, relay: Relay | None, *extra: str):
    args = ["apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db), "--once", *extra]
    if relay is not None:
        args += ["--smtp", f"127.0.0.1:{relay.port}"]
    return run_cli(*args)


def _tree(mail: Path, db: Path | None = None) -> dict[str, bytes]:
    """The folder's files; with `db`, its store's id in delivery names shown as STORE, so
    trees applied from two stores compare."""
    own = store.identity(store.connect(db).conn)[:8] if db is not None else None
    return {p.relative_to(mail).as_posix().replace(own or "\0", "STORE"): p.read_bytes()
            for p in sorted(mail.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_deliveries_and_sends_close_the_loop_and_reindexing_changes_nothing_c12(tmp_path, relay):
    mail, db = _setup(tmp_path, ["offer", "agenda"])
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
        assert result.returncode == 0, result.stderr
        assert "delivered 2" in result.stdout and "sent 1" in result.stdout
        delivered = sorted((mail / "Inbox").glob("syncengine-*.eml"))
        assert len(delivered) == 2
        for path in delivered:
            data = path.read_bytes()
            header, rest = data.split(b"\r\n", 1)
            assert header.startswith(b"X-Syncengine-Delivery: ev1/")
            name = rest.split(b"<", 1)[1].split(b"@", 1)[0].decode()
            assert rest == _message(name)  # original headers in order, body byte-equal
        assert relay.messages and len(relay.messages) == 1 and b"<reply@mail.example>" in relay.messages[0]
        assert not (mail / "Outbox" / "reply.eml").exists() and (mail / "Sent Items" / "reply.eml").exists()
        # the daemon would index what the client wrote: nothing is purged or delivered again
        database = store.connect(db)
        index.run(database, [mail], ALICE)
        assert engine.poll(database, engine.wall_clock() + 60) == []
        again = _apply(mail, db, relay)
        assert "nothing to apply" in again.stdout and len(relay.messages) == 1
    finally:
        server.stop()


def test_an_exchange_copy_is_purged_and_a_changed_file_is_not(tmp_path, relay):
    mail, db = _setup(tmp_path, ["offer", "agenda"], outbox=False)
    server = serve(db)
    try:
        assert _apply(mail, db, relay).returncode == 0
        (mail / "Inbox" / "offer.eml").write_bytes(_message("offer"))    # Exchange's own copy
        (mail / "Inbox" / "agenda.eml").write_bytes(_message("agenda"))
        database = store.connect(db)
        index.run(database, [mail], ALICE)
        purges = engine.poll(database, engine.wall_clock() + 60)
        assert sorted(p["source"] for p in purges) == ["local:Inbox/agenda.eml", "local:Inbox/offer.eml"]
        (mail / "Inbox" / "agenda.eml").write_bytes(_message("something-else"))  # replaced since
        result = _apply(mail, db, relay)
        assert "purged 1" in result.stdout and "mismatch 1" in result.stdout
        assert "no longer holds <agenda@mail.example>; nothing removed" in result.stdout
        assert not (mail / "Inbox" / "offer.eml").exists() and (mail / "Inbox" / "agenda.eml").exists()
    finally:
        server.stop()


def test_n1_a_delivery_without_content_is_never_acked_unread_does_not_block_and_lands_when_it_comes(tmp_path, relay):
    mail, db = _setup(tmp_path, ["offer"], outbox=False)
    database = store.connect(db)
    page = tmp_path / "bare.json"
    page.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}},
                                "fail": [], "data": [{"id": "bare", "received": "2026-03-02T08:00:00Z",
                                                      "mimeMessageId": "<bare@mail.example>", "subject": "No body",
                                                      "from": {"emailAddress": "x@example.org"}}]}))
    engine.add_snapshot(database, page, engine.wall_clock())
    engine.poll(database, engine.wall_clock() + 60)
    (tmp_path / "snap2").mkdir()
    engine.add_snapshot(database, _snapshot(tmp_path / "snap2" / "s", ["after"]), engine.wall_clock() + 61)
    engine.poll(database, engine.wall_clock() + 120)
    bare = next(d for d in engine.deltas(database) if d["message_id"] == "<bare@mail.example>")
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
        assert "delivered 2" in result.stdout  # the one before it and the one after it
        assert f"pending #{bare['mailbox_seq']}: <bare@mail.example> No body" in result.stdout
        status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
        assert [(c["client"], c["acked"], c["latest"]) for c in status["clients"]] == \
            [(f"{ALICE}/apply", bare["mailbox_seq"] - 1, bare["mailbox_seq"] + 1)]  # held back, not lost
        # Mimecast gives the part on a later pass: the poller stores it for the entry
        folder = tmp_path / "snapshots" / "retry"
        (folder / "messages").mkdir(parents=True)
        (folder / "messages" / "bare.eml").write_bytes(_message("bare"))
        (folder / "snapshot.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
            "address": ALICE, "kind": "mailbox"}}, "data": [], "fail": []}))
        (folder / "mimecast.json").write_text(json.dumps({"address": ALICE, "kind": "mailbox", "window_end": 0,
                                                          "contents": {"bare": "messages/bare.eml"}}))
        from syncengine.mimecast import poller
        poller.apply_folder(database, folder, engine.wall_clock())
        again = _apply(mail, db, relay)
        assert "delivered 1" in again.stdout and "pending" not in again.stdout
        landed = [p for p in (mail / "Inbox").iterdir() if p.read_bytes().endswith(_message("bare"))]
        assert len(landed) == 1
        status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
        assert [(c["acked"], c["latest"]) for c in status["clients"]] == [(bare["mailbox_seq"] + 1,) * 2]
    finally:
        server.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE, which stands in for a full disk, is POSIX")
def test_n1_a_delivery_the_full_disk_refuses_waits_for_room_and_the_deltas_after_it_go_on(tmp_path, relay):
    """The mailbox folder has no room for a 2 MB message (RLIMIT_FSIZE): that delivery is
    pending, never acked, its partial file gone, and the delivery after it lands (apply
    used to stop there with "error: File too large"). With room it lands, once."""
    import resource

    mail, db = _setup(tmp_path, ["offer", "agenda"], outbox=False)
    folder = _snapshot(tmp_path / "snap2", ["big", "after"])
    body = b"".join(b"%075d\r\n" % n for n in range(27_000))
    (folder / "messages" / "big.eml").write_bytes(_message("big") + body)
    database = store.connect(db)
    engine.add_snapshot(database, folder, engine.wall_clock())
    engine.poll(database, engine.wall_clock() + 60)
    big = next(d for d in engine.deltas(database) if d["message_id"] == "<big@mail.example>")
    database.conn.close()
    server = serve(db)
    try:
        def full_disk() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
        args = [sys.executable, "-m", "syncengine", "apply", "--mailbox", ALICE, "--mailbox-dir", str(mail),
                "--db", str(db), "--once"]
        first = subprocess.run(args, capture_output=True, text=True, timeout=120, preexec_fn=full_disk)
        assert "Traceback" not in first.stderr and "delivered 3" in first.stdout, first.stdout + first.stderr
        assert f"pending #{big['mailbox_seq']}: no room to write it (File too large)" in first.stdout
        assert not list((mail / "Inbox").glob(".*.part"))
        assert not [p for p in (mail / "Inbox").iterdir() if p.read_bytes().endswith(body)]
        status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
        assert [c["acked"] for c in status["clients"]] == [big["mailbox_seq"] - 1]  # held back, not lost
        again = _apply(mail, db, None)
        assert "delivered 1" in again.stdout and "pending" not in again.stdout, again.stdout
        assert len([p for p in (mail / "Inbox").iterdir() if p.read_bytes().endswith(body)]) == 1
        status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
        assert [(c["acked"], c["latest"]) for c in status["clients"]] == [(big["mailbox_seq"] + 1,) * 2]
    finally:
        server.stop()


def test_maildir_layout_delivers_into_new_and_the_index_reads_it_back(tmp_path, relay):
    mail, db = _setup(tmp_path, ["offer"], layout="maildir")
    server = serve(db)
    try:
        result = _apply(mail, db, relay, "--layout", "maildir")
        assert result.returncode == 0 and "delivered 1" in result.stdout
        (written,) = list((mail / "new").iterdir())
        assert written.read_bytes().split(b"\r\n", 1)[1] == _message("offer")
        assert list((mail / "tmp").iterdir()) == []
        database = store.connect(db)
        index.run(database, [mail], ALICE)
        row = database.execute("SELECT folder, role, delivery_tag FROM locations WHERE locator = ?",
                               (f"new/{written.name}",)).fetchone()
        assert row[0] == "Inbox" and row[1] == "inbox" and row[2].startswith("ev1/")
        assert engine.poll(database, engine.wall_clock() + 60) == []
    finally:
        server.stop()


def _highest(proc: Proc) -> int:
    seqs = [int(line.split("#", 1)[1].split()[0]) for line in list(proc.err) if "applied #" in line]
    return max(seqs, default=0)


def test_kill_9_at_random_points_of_2000_deltas_ends_with_the_same_tree_and_relay(tmp_path):
    """No delivery doubled or lost; an in-doubt send reaches the relay at most twice."""
    names = [f"m{n:04d}" for n in range(2000)]

    def run(folder: Path, kills: int) -> tuple[dict, list[bytes]]:
        folder.mkdir()
        relay = Relay()
        try:
            mail, db = _setup(folder, names)
            server = serve(db)
            try:
                targets = sorted(random.Random(kills).sample(range(50, 1950), kills))
                for target in targets:  # kill -9 once the log shows this delta applied
                    proc = Proc("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db),
                                "--smtp", f"127.0.0.1:{relay.port}", "-v")
                    proc.wait_for(lambda p: _highest(p) >= target, timeout=120, what=f"delta {target} applied")
                    proc.kill()
                result = _apply(mail, db, relay)
                assert result.returncode == 0, result.stderr
            finally:
                server.stop()
            return _tree(mail, db), list(relay.messages)
        finally:
            relay.stop()

    steady_tree, steady_relay = run(tmp_path / "steady", 0)
    killed_tree, killed_relay = run(tmp_path / "killed", 3)
    assert len([k for k in steady_tree if k.startswith("Inbox/syncengine-")]) == 2000
    assert killed_tree == steady_tree
    assert len(steady_relay) == 1 and 1 <= len(killed_relay) <= 2 and len(set(killed_relay)) == 1


def test_a_send_in_flight_when_the_client_dies_is_resent_with_identical_bytes_and_counted(tmp_path):
    import asyncio
    import threading

    class Stalling(Relay):
        """Keeps the message, then withholds its answer once: the sender cannot know."""

        def __init__(self):
            self.got = threading.Event()
            self.stalled = False
            super().__init__()

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.original_content or envelope.content)
            self.got.set()
            if not self.stalled:
                self.stalled = True
                await asyncio.sleep(30)
            return "250 OK"

    relay = Stalling()
    try:
        mail, db = _setup(tmp_path, [])
        server = serve(db)
        try:
            proc = Proc("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db),
                        "--smtp", f"127.0.0.1:{relay.port}")
            assert relay.got.wait(30), "the relay never received the send"
            proc.kill()
            result = _apply(mail, db, relay)
            assert result.returncode == 0, result.stderr
            assert "resent-in-doubt 1" in result.stdout and "sent 1" in result.stdout
            assert len(relay.messages) == 2 and relay.messages[0] == relay.messages[1]
            assert (mail / "Sent Items" / "reply.eml").exists() and not (mail / "Outbox" / "reply.eml").exists()
        finally:
            server.stop()
    finally:
        relay.stop()


def test_content_over_the_wire_for_a_client_on_another_machine_is_authorised_like_hello(tmp_path):
    from syncengine import client as client_mod
    from syncengine import endpoints

    from .processes import free_port_pair

    mail, db = _setup(tmp_path, ["offer"], outbox=False)
    keys = tmp_path / "keys"
    run_cli("keys", "generate", str(keys), check=True)
    for who in (ALICE, "carol@acme.example"):
        run_cli("keys", "generate", str(keys), "--client", who, check=True)
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    server = serve(db, "--endpoint", endpoint, "--keys", str(keys))
    try:
        where = endpoints.for_store(db, endpoint)

        def connect(who: str) -> client_mod.Client:
            public, secret = endpoints.load_secret(keys / "clients" / f"{who}.key_secret")
            return client_mod.Client(where, who, [who], curve=(endpoints.load_public(keys / "server.key"), public, secret))

        alice = connect(ALICE)
        try:
            assert alice.fetch_content(ALICE, 1) == _message("offer")
            assert alice.fetch_content(ALICE, 99) is None
        finally:
            alice.close()
        carol = connect("carol@acme.example")
        try:
            assert carol.fetch_content(ALICE, 1) is None  # refused: not hers to see
        finally:
            carol.close()
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # the test relay is loopback-only
def test_smtp_login_comes_from_an_owner_only_password_file(tmp_path):
    import os

    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"alice", b"pw-1")
        logins.append(ok)
        return AuthResult(success=ok)

    relay = Relay(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    try:
        mail, db = _setup(tmp_path, [])
        secret = tmp_path / "smtp-password"
        secret.write_text("pw-1\n")
        os.chmod(secret, 0o644)
        server = serve(db)
        try:
            loose = _apply(mail, db, relay, "--smtp-user", "alice", "--smtp-password-file", str(secret))
            assert loose.returncode == 2 and "chmod 600" in loose.stderr and "pw-1" not in loose.stderr
            os.chmod(secret, 0o600)
            result = _apply(mail, db, relay, "--smtp-user", "alice", "--smtp-password-file", str(secret))
            assert result.returncode == 0 and "sent 1" in result.stdout, result.stdout + result.stderr
            assert logins == [True] and len(relay.messages) == 1
        finally:
            server.stop()
    finally:
        relay.stop()


def test_a_purge_or_send_that_finds_a_fifo_or_a_symlink_out_touches_nothing(tmp_path):
    import os

    from syncengine.apply.mailbox import ApplyError, Layout

    secret = tmp_path / "secret.eml"
    secret.write_bytes(_message("offer"))  # the Message-ID the purge names, but outside the mailbox
    layout = Layout(tmp_path / "mail", False)
    (tmp_path / "mail" / "Inbox").mkdir(parents=True)
    (tmp_path / "mail" / "Inbox" / "link.eml").symlink_to(secret)
    os.mkfifo(tmp_path / "mail" / "Inbox" / "pipe.eml")
    assert layout.purge("Inbox/link.eml", "<offer@mail.example>") == "mismatch"
    assert layout.purge("Inbox/pipe.eml", "<offer@mail.example>") == "mismatch"
    assert secret.exists() and (tmp_path / "mail" / "Inbox" / "link.eml").is_symlink()
    with pytest.raises(ApplyError, match="climbs out"):
        layout.local("../secret.eml")
