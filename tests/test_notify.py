"""The notification fabric with real processes and real sockets (docs/protocol.md)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import zmq

from syncengine import endpoints, engine, store

from .conftest import run_cli
from .processes import Proc, free_port_pair, serve

ALICE, BOB, CAROL = "alice@acme.example", "bob@acme.example", "carol@acme.example"


def write_deltas(db_path: Path, mailbox: str, count: int, event: str, start: int = 0) -> None:
    """`count` deliveries for `mailbox` through the real engine: a snapshot of new mail,
    then an event start (or a poll of the running event) that reconciles it."""
    page = {"meta": {"status": 200, "snapshot": {"address": mailbox, "kind": "mailbox"}}, "fail": [],
            "data": [{"id": f"{mailbox}-{n}", "received": "2026-03-02T08:00:00Z",
                      "headerDate": "2026-03-02T08:00:00Z", "from": {"emailAddress": "x@example.org"},
                      "subject": f"Message {n}", "mimeMessageId": f"<{event}-{mailbox}-{n}@example.org>"}
                     for n in range(start, start + count)]}
    snapshot = db_path.parent / f"snap-{event}-{mailbox}-{start}.json"
    snapshot.write_text(json.dumps(page))
    db = store.connect(db_path)
    try:
        now = float(1_900_000_000 + start)
        engine.add_snapshot(db, snapshot, now)
        if any(e.name == event for e in engine.open_events(db.conn)):
            engine.poll(db, now)
        else:
            engine.start_event(db, event, [mailbox], False, now, no_local_mail=[mailbox])
    finally:
        db.conn.close()


def listen(db: Path, mailbox: str, *extra: str) -> Proc:
    return Proc("listen", "--db", str(db), "--mailbox", mailbox, "--json", "--ack", "-v", *extra)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "store.db"
    store.connect(path).conn.close()
    return path


def test_n1_three_clients_and_one_killed_mid_stream_gets_exactly_what_it_had_not_acked(db):
    server = serve(db)
    clients = {mailbox: listen(db, mailbox) for mailbox in (ALICE, BOB, CAROL)}
    try:
        write_deltas(db, ALICE, 300, f"ev-{ALICE}")  # the rest comes after the kill: it is mid-stream
        for mailbox in (BOB, CAROL):
            write_deltas(db, mailbox, 1500, f"ev-{mailbox}")
        alice = clients[ALICE]
        alice.wait_for(lambda p: len(p.out) >= 100 and any("(durable)" in e for e in p.err),
                       what="100 deltas and an ack the server made durable")
        alice.kill()
        first = alice.deltas()
        write_deltas(db, ALICE, 1200, f"ev-{ALICE}", start=300)
        # The restarted client does not ack, so it starts after the ack in force when it said
        # hello: at most the last ack the killed one sent (acks in flight may land after).
        again = Proc("listen", "--db", str(db), "--mailbox", ALICE, "--json")
        again.wait_for(lambda p: p.out and json.loads(p.out[-1])["mailbox_seq"] == 1500, what="the last delta")
        acked = store.connect(db).execute("SELECT mailbox_seq FROM client_acks WHERE client = ?",
                                          (ALICE,)).fetchone()[0]
        second = again.deltas()
        assert 0 < acked <= max(d["mailbox_seq"] for d in first)
        start = second[0]["mailbox_seq"]
        assert [d["mailbox_seq"] for d in second] == list(range(start, 1501))  # exactly, once, in order
        assert 1 < start <= acked + 1
        assert {d["mailbox_seq"] for d in first} | {d["mailbox_seq"] for d in second} == set(range(1, 1501))
        for mailbox in (BOB, CAROL):
            clients[mailbox].wait_for(lambda p: len(p.out) >= 1500, what=f"all deltas of {mailbox}")
            assert [d["mailbox_seq"] for d in clients[mailbox].deltas()] == list(range(1, 1501))
            assert {d["mailbox"] for d in clients[mailbox].deltas()} == {mailbox}
        again.stop()
    finally:
        for proc in clients.values():
            proc.stop()
        server.stop()


def test_burst_of_50000_deltas_to_a_slow_client_all_arrive_in_order(db):
    server = serve(db)
    # The test reads nothing until the burst is committed: the client blocks on its
    # full stdout pipe, its SUB queue overflows, and it must catch up over the ROUTER.
    client = listen(db, ALICE, "-v")
    try:
        write_deltas(db, ALICE, 50_000, "burst")
        client.wait_for(lambda p: len(p.out) >= 50_000, timeout=180, what="50,000 deltas")
        seqs = [d["mailbox_seq"] for d in client.deltas()]
        assert seqs == list(range(1, 50_001))
        assert any("gap in alice@acme.example" in line for line in client.err)  # the feed did drop
    finally:
        client.stop()
        server.stop()


def test_engine_restart_is_detected_by_heartbeat_and_the_client_catches_up(db):
    server = serve(db)
    client = listen(db, ALICE)
    try:
        write_deltas(db, ALICE, 5, "ev1")
        client.wait_for(lambda p: len(p.out) >= 5, what="the first deltas")
        server.kill()
        write_deltas(db, ALICE, 3, "ev1", start=5)  # committed while no engine serves
        server = serve(db)
        client.wait_for(lambda p: len(p.out) >= 8, timeout=30, what="the deltas written while the engine was down")
        assert [d["mailbox_seq"] for d in client.deltas()] == list(range(1, 9))
    finally:
        client.stop()
        server.stop()


def test_ipc_sockets_are_0600_in_a_0700_folder_and_one_server_per_store(db):
    server = serve(db)
    try:
        where = endpoints.for_store(db)
        for path in where.ipc_paths():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        second = run_cli("serve", "--db", str(db))
        assert second.returncode == 1 and "already served by pid" in second.stderr
    finally:
        server.stop()


def test_long_store_paths_use_a_short_per_user_runtime_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "store.db"
    where = endpoints.for_store(deep)
    assert all(len(str(p)) < endpoints.IPC_LIMIT for p in where.ipc_paths())
    assert stat.S_IMODE(os.stat(where.ipc_paths()[0].parent.parent).st_mode) == 0o700


def test_c18_a_delegate_may_follow_the_mailbox_and_others_are_refused(db, tmp_path):
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps({"synced": "2026-03-02T06:00:00Z", "users": [{"emailAddress": ALICE}],
                                     "delegates": [{"mailbox": BOB, "delegate": ALICE}]}))
    run_cli("directory", "add", str(directory), "--db", str(db), check=True)
    server = serve(db)
    delegate = listen(db, BOB, "--client", f"{ALICE}/outlook")
    try:
        write_deltas(db, BOB, 3, "ev1")
        delegate.wait_for(lambda p: len(p.out) >= 3, what="bob's deltas")
        refused = Proc("listen", "--db", str(db), "--mailbox", BOB, "--client", CAROL, "--json")
        assert refused.popen.wait(20) == 4
        refused.wait_for(lambda p: any("may not see mailbox bob@acme.example" in e for e in p.err),
                         what="the refusal")
        server.wait_for(lambda p: any("refused carol@acme.example access" in e for e in p.err),
                        what="the refusal in the server log")
    finally:
        delegate.stop()
        server.stop()


def test_curve_allowed_key_works_unknown_key_and_plain_tcp_are_refused_and_logged(db, tmp_path):
    keys = tmp_path / "keys"
    run_cli("keys", "generate", str(keys), check=True)
    run_cli("keys", "generate", str(keys), "--client", ALICE, check=True)
    stranger = tmp_path / "stranger"
    run_cli("keys", "generate", str(stranger), "--client", ALICE, check=True)  # not in the allow-list
    assert stat.S_IMODE(os.stat(keys / "server.key_secret").st_mode) == 0o600
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    assert run_cli("serve", "--db", str(db), "--endpoint", endpoint).returncode == 1  # tcp needs CURVE
    server = serve(db, "--endpoint", endpoint, "--keys", str(keys))
    write_deltas(db, ALICE, 4, "ev1")
    server_key = str(keys / "server.key")
    good = listen(db, ALICE, "--endpoint", endpoint, "--key", str(keys / "clients" / f"{ALICE}.key_secret"),
                  "--server-key", server_key)
    unknown = listen(db, ALICE, "--endpoint", endpoint,
                     "--key", str(stranger / "clients" / f"{ALICE}.key_secret"), "--server-key", server_key)
    plain = Proc("listen", "--db", str(db), "--mailbox", ALICE, "--endpoint", endpoint)
    try:
        good.wait_for(lambda p: len(p.out) >= 4, what="deltas over CURVE")
        assert [d["mailbox_seq"] for d in good.deltas()] == [1, 2, 3, 4]
        server.wait_for(lambda p: any("not in the allow-list" in e for e in p.err), what="the unknown key refusal")
        unknown.stop()  # it retries every 100 ms; its refusals would drown the next one
        assert unknown.out == []
        assert plain.popen.wait(20) == 2 and any("need CURVE keys" in e for e in plain.err)
        # a peer that speaks plain tcp anyway is refused at the handshake, and logged
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        refusals = lambda p: sum("refused a connection" in e for e in p.err)  # noqa: E731
        before = refusals(server)
        try:
            raw.connect(endpoint)
            raw.send(json.dumps({"op": "hello", "client": ALICE, "mailboxes": [ALICE]}).encode())
            server.wait_for(lambda p: refusals(p) > before, what="the plain tcp refusal")
            assert raw.poll(500) == 0
        finally:
            raw.close()
            context.term()
    finally:
        for proc in (good, unknown, plain):
            proc.stop()
        server.stop()


def _request(where: endpoints.Endpoints, request: dict, replies: int = 1) -> list[dict]:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(where.router)
        dealer.send(json.dumps(request).encode())
        answers = []
        for _ in range(replies):
            assert dealer.poll(10_000), f"no reply to {request}"
            answers.append(json.loads(dealer.recv()))
        return answers
    finally:
        dealer.close()
        context.term()


def test_c1_events_start_and_end_over_zeromq_and_status_and_errors_answer(db):
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        started = _request(where, {"op": "start_event", "client": ALICE, "event": "zmq-1", "mailboxes": [ALICE]})
        assert started == [{"op": "event_started", "event": "zmq-1", "deltas": 0}]
        again = _request(where, {"op": "start_event", "client": ALICE, "event": "zmq-2", "mailboxes": [ALICE]})
        assert again[0]["op"] == "error" and "already in open event 'zmq-1'" in again[0]["reason"]
        other = _request(where, {"op": "start_event", "client": CAROL, "event": "zmq-3", "mailboxes": [ALICE]})
        assert other[0]["op"] == "error" and "may not see mailbox" in other[0]["reason"]
        assert _request(where, {"op": "end_event", "client": ALICE, "event": "zmq-1"}) == \
            [{"op": "event_ending", "event": "zmq-1"}]
        status = _request(where, {"op": "status"})[0]
        assert status["op"] == "status" and status["events"][0]["phase"] == "ending"
        assert _request(where, {"op": "fly"})[0] == {"op": "error", "reason": "bad request: Invalid value 'fly' - at `$.op`"}
        assert _request(where, {"op": "ack", "client": ALICE})[0]["op"] == "error"  # no mailbox: bad request
    finally:
        server.stop()


def test_client_library_callback_api_acknowledges_what_it_handled(db):
    from syncengine import client as client_mod

    server = serve(db)
    try:
        write_deltas(db, ALICE, 3, "ev1")
        seen = []
        listener = client_mod.Client(endpoints.for_store(db), f"{ALICE}/script", [ALICE])
        try:
            def handle(delta):
                seen.append(delta["mailbox_seq"])
                if len(seen) == 3:
                    raise StopIteration
            with pytest.raises(StopIteration):
                listener.run(handle)
            listener.ack(ALICE, 3)  # run() acks after the callback returns; the last one is ours
            deadline = time.monotonic() + 20
            while listener.acked.get(ALICE, 0) < 3 and time.monotonic() < deadline:
                for _ in listener.deltas(timeout=0.2):  # handles replies; returns when idle
                    pass
            assert listener.acked[ALICE] == 3
        finally:
            listener.close()
        assert seen == [1, 2, 3]
        row = store.connect(db).execute("SELECT mailbox_seq FROM client_acks WHERE client = ?",
                                        (f"{ALICE}/script",)).fetchone()
        assert row == (3,)
    finally:
        server.stop()
