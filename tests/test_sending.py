"""The apply client sends and files mail as a mail program must (issue 20): real relays
(aiosmtpd) that log the envelope and the bytes they receive, refuse recipients past a
limit, greylist once, refuse some recipients for good, or speak TLS with a certificate
the test makes; a real engine and notification server; real files."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from email.utils import formatdate
from pathlib import Path

import pytest

from syncengine import engine, index, store

from .conftest import FIXTURES, run_cli
from .processes import serve
from .relay import Relay

ALICE = "alice@acme.example"
DEMO = FIXTURES / "scenarios" / "demo"


def _item(name: str, to: list[str], cc=(), bcc=(), extra: str = "") -> bytes:
    """An Outbox item as a mail program saves it, Bcc included (it is in the file)."""
    fields = [f"Message-ID: <{name}@acme.example>", f"Date: {formatdate(1_772_438_400)}", f"From: {ALICE}",
              "To: " + ",\r\n ".join(to)]  # folded, one address a line
    if cc:
        fields.append(f"Cc: {', '.join(cc)}")
    if bcc:  # folded, as clients fold long fields
        fields.append(f"Bcc: {bcc[0]}" + "".join(f",\r\n {b}" for b in bcc[1:]))
    return ("\r\n".join(fields) + extra + f"\r\nSubject: {name}\r\n\r\nHello from {name}\r\n").encode()


def _setup(tmp_path: Path, items: dict[str, bytes], sent: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """A mailbox folder with these Outbox items (and Sent Items files), indexed; an event
    started: one send delta per item."""
    mail, db = tmp_path / "mail", tmp_path / "store.db"
    shutil.copytree(DEMO / "mailbox" / "alice", mail)
    (mail / "Outbox").mkdir()
    for name, data in items.items():
        (mail / "Outbox" / name).write_bytes(data)
    for name, data in (sent or {}).items():
        (mail / "Sent Items").mkdir(exist_ok=True)
        (mail / "Sent Items" / name).write_bytes(data)
    database = store.connect(db)
    index.run(database, [mail], ALICE)
    engine.start_event(database, "ev1", [ALICE], False, engine.wall_clock())
    assert [d["action"] for d in engine.deltas(database)] == ["send"] * len(items)
    database.conn.close()
    return mail, db


def _apply(mail: Path, db: Path, relay: Relay, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--db", str(db), "--once",
                   "--smtp", f"127.0.0.1:{relay.port}", *extra)


def _acked(db: Path) -> int:
    rows = store.connect(db).execute("SELECT mailbox_seq FROM client_acks").fetchall()
    return rows[0][0] if rows else 0


@pytest.fixture
def relays():
    made = []

    def start(**options) -> Relay:
        made.append(Relay(**options))
        return made[-1]
    yield start
    for relay in made:
        relay.stop()


def test_bcc_goes_in_the_envelope_and_never_in_the_bytes(tmp_path, relays):
    relay = relays()
    plain = _item("memo", ["bob@example.org"], cc=["carol@example.org"], bcc=["dave@example.org", "erin@example.org"])
    resent = _item("forwarded", ["bob@example.org"], extra=f"\r\nResent-Date: {formatdate(1_772_438_500)}\r\n"
                   f"Resent-From: {ALICE}\r\nResent-To: frank@example.org\r\nResent-Bcc: grace@example.org")
    mail, db = _setup(tmp_path, {"memo.eml": plain, "forwarded.eml": resent})
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
        assert "sent 2" in result.stdout, result.stdout + result.stderr
    finally:
        server.stop()
    by_id = {data.split(b"\r\n", 1)[0]: (sender, rcpts, data) for sender, rcpts, data in relay.transactions}
    sender, rcpts, data = by_id[b"Message-ID: <memo@acme.example>"]
    assert sender == ALICE and sorted(rcpts) == ["bob@example.org", "carol@example.org", "dave@example.org",
                                                 "erin@example.org"]
    assert b"bcc" not in data.lower() and b"erin" not in data
    assert data == plain.replace(b"Bcc: dave@example.org,\r\n erin@example.org\r\n", b"")  # nothing else changed
    sender, rcpts, data = by_id[b"Message-ID: <forwarded@acme.example>"]
    assert sorted(rcpts) == ["frank@example.org", "grace@example.org"]  # a resend goes to its Resent- recipients
    assert b"grace" not in data and b"Resent-To: frank@example.org" in data


def test_a_relay_that_takes_100_of_150_recipients_gets_the_rest_in_a_later_transaction(tmp_path, relays):
    relay = relays(limit=100)
    everyone = [f"person{n:03d}@example.org" for n in range(150)]
    mail, db = _setup(tmp_path, {"all-hands.eml": _item("all-hands", everyone)})
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
    finally:
        server.stop()
    assert "sent 1" in result.stdout, result.stdout + result.stderr
    assert [len(rcpts) for _, rcpts, _ in relay.transactions] == [100, 50]
    assert sorted(r for _, rcpts, _ in relay.transactions for r in rcpts) == everyone
    assert relay.transactions[0][2] == relay.transactions[1][2]  # the same bytes
    assert (mail / "Sent Items" / "all-hands.eml").exists() and not (mail / "Outbox" / "all-hands.eml").exists()
    assert _acked(db) == 1


def test_a_relay_that_greylists_gets_the_recipients_again_and_the_send_completes(tmp_path, relays):
    relay = relays(greylist=True)
    mail, db = _setup(tmp_path, {"note.eml": _item("note", ["bob@example.org", "carol@example.org"])})
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
    finally:
        server.stop()
    assert "sent 1" in result.stdout and "pending" not in result.stdout, result.stdout + result.stderr
    assert [sorted(rcpts) for _, rcpts, _ in relay.transactions] == [["bob@example.org", "carol@example.org"]]
    assert "greylisted" in result.stderr  # said while it waited


def test_refused_recipients_make_a_partial_or_failed_send_named_and_listed_later(tmp_path, relays):
    relay = relays(refused=frozenset({"nobody@example.org", "ghost@example.org"}))
    mail, db = _setup(tmp_path, {"half.eml": _item("half", ["bob@example.org", "nobody@example.org"]),
                                 "none.eml": _item("none", ["ghost@example.org"])})
    server = serve(db)
    try:
        result = _apply(mail, db, relay)
    finally:
        server.stop()
    assert "failed 1" in result.stdout and "partial 1" in result.stdout
    assert "nobody@example.org refused: 550 5.1.1 no such user here" in result.stdout
    assert [rcpts for _, rcpts, _ in relay.transactions] == [["bob@example.org"]]
    assert (mail / "Sent Items" / "half.eml").exists()          # it went to some
    assert (mail / "Outbox" / "none.eml").exists()              # "not sent": it stays
    assert _acked(db) == 2                                       # decided, and said so
    listed = run_cli("apply", "--mailbox", ALICE, "--mailbox-dir", str(mail), "--status", check=True).stdout
    assert "partial: <half@acme.example> half (local:Outbox/half.eml)" in listed
    assert "nobody@example.org: refused, 550 no such user here" in listed.replace("5.1.1 ", "")
    assert "failed: <none@acme.example> none" in listed and "ghost@example.org: refused" in listed
    assert "bob@example.org" not in listed


def test_a_sent_item_never_replaces_a_file_already_in_sent_items(tmp_path, relays):
    relay = relays()
    older = b"Message-ID: <older@acme.example>\r\nSubject: older\r\n\r\nkept\r\n"
    mail, db = _setup(tmp_path, {"1.eml": _item("one", ["bob@example.org"])}, sent={"1.eml": older})
    server = serve(db)
    try:
        assert "sent 1" in _apply(mail, db, relay).stdout
    finally:
        server.stop()
    assert (mail / "Sent Items" / "1.eml").read_bytes() == older
    assert b"<one@acme.example>" in (mail / "Sent Items" / "1-1.eml").read_bytes()


def test_a_rebuilt_stores_deltas_are_applied_never_taken_for_the_old_stores(tmp_path, relays):
    """The journal keys on the store's id: a new store numbers from 1 again."""
    mail, db = tmp_path / "mail", tmp_path / "store.db"
    shutil.copytree(DEMO / "mailbox" / "alice", mail)

    def store_with(names: list[str]) -> None:
        database = store.connect(db)
        page = tmp_path / f"{names[0]}.json"
        page.write_text(json.dumps({"meta": {"status": 200, "snapshot": {"address": ALICE, "kind": "mailbox"}},
                                    "fail": [], "data": [{"id": n, "received": "2026-03-02T08:00:00Z",
                                                          "mimeMessageId": f"<{n}@mail.example>", "subject": n,
                                                          "from": {"emailAddress": "x@example.org"},
                                                          "content": f"{n}.eml"} for n in names]}))
        for name in names:
            (tmp_path / f"{name}.eml").write_bytes(f"Message-ID: <{name}@mail.example>\r\nSubject: {name}\r\n\r\n"
                                                   "x\r\n".encode())
        engine.add_snapshot(database, page, engine.wall_clock())
        engine.start_event(database, "ev1", [ALICE], False, engine.wall_clock(), no_local_mail=[ALICE])
        database.conn.close()

    store_with(["old-1", "old-2"])
    server = serve(db)
    try:
        assert "delivered 2" in _apply(mail, db, relays()).stdout
    finally:
        server.stop()
    for leftover in tmp_path.glob("store.db*"):  # the store is lost and made again under the same name
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    store_with(["new-1", "new-2", "new-3"])
    server = serve(db)
    try:
        again = _apply(mail, db, relays())
    finally:
        server.stop()
    assert "delivered 3" in again.stdout, again.stdout + again.stderr
    assert "is another one (rebuilt, or a new db): its deltas are applied as its own" in again.stderr
    inbox = sorted(p.name for p in (mail / "Inbox").glob("syncengine-*"))
    assert len(inbox) == 5 and {b"<new-3@mail.example>" in p.read_bytes() for p in (mail / "Inbox").iterdir()} \
        == {True, False}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no test certificate for the TLS relays")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=relay",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_to_the_relay_with_its_ca_and_a_refused_certificate_names_the_host(tmp_path, relays, certificate, mode):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = relays(**({"tls_context": context, "require_starttls": True} if mode == "starttls"
                      else {"ssl_context": context}))
    mail, db = _setup(tmp_path, {"secret.eml": _item("secret", ["bob@example.org"])})
    server = serve(db)
    try:
        untrusted = _apply(mail, db, relay, f"--{mode}")
        assert "pending" in untrusted.stdout and relay.transactions == []
        assert f"TLS to 127.0.0.1:{relay.port}: the relay's certificate is not trusted" in untrusted.stdout
        assert "--smtp-ca-file" in untrusted.stdout
        trusted = _apply(mail, db, relay, f"--{mode}", "--smtp-ca-file", str(cert))
        assert "sent 1" in trusted.stdout, trusted.stdout + trusted.stderr
    finally:
        server.stop()
    assert len(relay.transactions) == 1 and relay.transactions[0][1] == ["bob@example.org"]


def test_a_sent_item_filed_by_apply_is_a_move_and_leaves_no_stale_warning(tmp_path, relays):
    """The Outbox file apply moves into Sent Items is the same message, moved: the next
    index run keeps nothing "missing" for it (status stays clean while the event runs)
    and the engine neither sends nor delivers it again."""
    relay = relays()
    mail, db = _setup(tmp_path, {"memo.eml": _item("memo", ["bob@example.org"])})
    server = serve(db)
    try:
        assert "sent 1" in _apply(mail, db, relay).stdout
    finally:
        server.stop()
    assert not (mail / "Outbox" / "memo.eml").exists()
    database = store.connect(db)
    index.run(database, [mail], ALICE)
    assert engine.status(database)["stale"] == []
    folders = database.execute("SELECT l.folder FROM locations l JOIN messages m ON m.id = l.message"
                               " WHERE m.message_id LIKE '%memo@acme.example%'").fetchall()
    assert folders == [("Sent Items",)]
    assert engine.poll(database, engine.wall_clock()) == []
    database.conn.close()
