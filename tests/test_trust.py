"""Trust boundaries (N4, N5): inputs stay inside their folder; no peer can stop or
misuse the engine. Real files, real processes, real sockets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from syncengine import endpoints, engine, store

from .conftest import FIXTURES, ROOT, run_cli
from .processes import Proc, free_port_pair, serve
from .test_notify import ALICE, BOB, CAROL, listen, write_deltas

DEMO = FIXTURES / "scenarios" / "demo"
SECRET = b"TOP-SECRET-NOT-MAIL\n"


def _entry(n: int, content: str | None) -> dict:
    entry = {"id": f"e{n}", "received": "2026-03-02T08:00:00Z", "headerDate": "2026-03-02T08:00:00Z",
             "from": {"emailAddress": "x@example.org"}, "subject": f"Message {n}",
             "mimeMessageId": f"<m{n}@example.org>"}
    if content is not None:
        entry["content"] = content
    return entry


def _snapshot(folder: Path, entries: list[dict], address: str = ALICE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "snapshot.json").write_text(json.dumps(
        {"meta": {"status": 200, "snapshot": {"address": address, "kind": "mailbox"}}, "data": entries, "fail": []}))
    return folder


# --- N4: inputs stay in their folder ----------------------------------------------------------

def test_n4_snapshot_content_outside_its_folder_or_not_a_regular_file_is_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    snap = tmp_path / "snap"
    messages = snap / "messages"
    messages.mkdir(parents=True)
    (messages / "real.eml").write_bytes(b"Message-ID: <m0@example.org>\r\nSubject: real\r\n\r\nbody\r\n")
    (messages / "inner.eml").symlink_to(messages / "real.eml")  # a symlink that stays inside is fine
    (messages / "outer.eml").symlink_to(secret)
    (snap / "linked").symlink_to(tmp_path)                       # a symlinked folder that leads out
    os.mkfifo(messages / "fifo.eml")                             # would hang a reader that opens it
    names = ["messages/real.eml", "messages/inner.eml", f"../{'../' * 8}{secret}", str(secret),
             "/proc/self/environ", "messages/outer.eml", "linked/secret.txt", "messages/fifo.eml",
             "messages/" + "x" * 5000, "messages/\x1b[31mred.eml"]
    _snapshot(snap, [_entry(n, name) for n, name in enumerate(names)])
    db = tmp_path / "store.db"
    added = run_cli("snapshot", "add", str(snap), "--db", str(db))
    assert added.returncode == 0, added.stderr
    assert "10 entries" in added.stdout
    assert added.stderr.count("delivered without content") == 8
    assert "climbs out with '..'" in added.stderr and "is absolute" in added.stderr
    assert "leads outside" in added.stderr and "not a regular file" in added.stderr
    assert "\x1b" not in added.stderr  # the escape is shown escaped, not sent to the terminal
    database = store.connect(db)
    stored = [row[0] for row in database.execute("SELECT content FROM entries ORDER BY position")]
    assert stored[0] and stored[0] == stored[1]   # the same bytes, stored once
    assert stored[2:] == [None] * 8
    for path in (Path(f"{db}.d") / "content").iterdir():
        assert SECRET not in path.read_bytes()


def _scenario(folder: Path, timeline: list[dict], mailbox: str = ALICE) -> Path:
    (folder / "mail" / "Inbox").mkdir(parents=True, exist_ok=True)
    (folder / "late.eml").write_bytes(b"Message-ID: <late@example.org>\r\nSubject: late\r\n\r\nbody\r\n")
    (folder / "scenario.json").write_text(json.dumps({
        "name": "hostile", "mailboxes": [{"address": mailbox, "export": "mail"}],
        "timeline": [{"at": "2026-03-02T09:00:00Z", **step} for step in timeline],
        "until": "2026-03-02T09:10:00Z"}))
    return folder


@pytest.mark.parametrize("step", [
    {"do": "exchange_deliver", "mailbox": ALICE, "folder": "../../../escaped", "path": "late.eml"},
    {"do": "exchange_deliver", "mailbox": ALICE, "folder": "/tmp/escaped-abs", "path": "late.eml"},
    {"do": "exchange_deliver", "mailbox": "../../escaped@x", "folder": "Inbox", "path": "late.eml"},
    {"do": "exchange_deliver", "mailbox": ALICE, "folder": "Inbox", "path": "../../../etc/passwd"},
    {"do": "exchange_remove", "mailbox": ALICE, "path": "/etc/hostname"},
    {"do": "snapshot", "path": "/etc"},
], ids=["folder-dotdot", "folder-absolute", "mailbox-dotdot", "path-dotdot", "remove-absolute", "snapshot-absolute"])
def test_n4_scenario_paths_stay_inside_the_scenario_and_the_store(tmp_path, step):
    scenario = _scenario(tmp_path / "scenario", [step])
    db = tmp_path / "run" / "replay.db"
    result = run_cli("replay", str(scenario), "--db", str(db))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "scenario.json" in result.stderr and "$.timeline[0]" in result.stderr
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not db.exists()  # refused before anything ran


def test_n4_exchange_remove_removes_only_the_file_its_own_step_added(tmp_path):
    scenario = _scenario(tmp_path / "scenario", [
        {"do": "exchange_deliver", "mailbox": ALICE, "folder": "Inbox", "path": "late.eml"},
        {"do": "exchange_deliver", "mailbox": ALICE, "folder": "Archive", "path": "late.eml"}])
    steps = json.loads((scenario / "scenario.json").read_text())
    steps["timeline"].append({"at": "2026-03-02T09:05:00Z", "do": "exchange_remove", "mailbox": ALICE,
                              "path": "late.eml"})
    (scenario / "scenario.json").write_text(json.dumps(steps))
    db = tmp_path / "replay.db"
    run_cli("replay", str(scenario), "--db", str(db), check=True)
    overlay = Path(f"{db}.d") / "overlay" / ALICE
    assert (overlay / "Inbox" / "late.eml").exists()          # the earlier copy stays
    assert not (overlay / "Archive" / "late.eml").exists()    # the latest step's copy is gone


def _modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_n4_store_and_everything_in_its_folder_are_owner_only_under_umask_022(tmp_path):
    db = tmp_path / "store.db"

    def cli(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "syncengine", *args], capture_output=True, text=True,
                                preexec_fn=lambda: os.umask(0o022), timeout=120)
        assert result.returncode in (0, 3), result.stderr

    cli("index", str(DEMO / "mailbox" / "alice"), "--db", str(db), "--mailbox", ALICE)
    cli("snapshot", "add", str(DEMO / "snapshots" / "alice-0859"), "--db", str(db))
    cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db))
    cli("replay", str(DEMO), "--db", str(tmp_path / "replay.db"), "-q")
    old = os.umask(0o022)
    try:
        server = serve(db)
        server.stop()
    finally:
        os.umask(old)
    modes = {**_modes(db), **_modes(Path(f"{db}.d")), **_modes(tmp_path / "replay.db"),
             **_modes(Path(f"{tmp_path / 'replay.db'}.d"))}
    assert len(modes) > 8
    loose = {path: oct(mode) for path, mode in modes.items() if mode & 0o077}
    assert loose == {}


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a folder owned by another user")
def test_n4_ipc_fallback_folder_made_by_another_user_is_refused(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    planted = runtime / "syncengine"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "store.db"
    with pytest.raises(endpoints.EndpointError, match="owned by uid 12345"):
        endpoints.for_store(deep)


def test_n4_ipc_path_of_exactly_the_limit_is_used_as_it_is(tmp_path):
    base = str(tmp_path / "s") + ".db"
    pad = endpoints.IPC_LIMIT - len(os.fsencode(base + ".d/run/router.ipc.pub"))
    db = Path(str(tmp_path / ("s" + "x" * pad)) + ".db")
    assert len(os.fsencode(f"{db}.d/run/router.ipc.pub")) == endpoints.IPC_LIMIT
    assert endpoints.for_store(db).router == f"ipc://{db}.d/run/router.ipc"


# --- N5: no peer can stop or misuse the engine ------------------------------------------------

def _ask(where: endpoints.Endpoints, body: bytes, curve: tuple | None = None, timeout_ms: int = 10_000) -> list:
    """Send one raw request; every reply frame until caught_up or a single reply."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve:
        dealer.curve_serverkey, dealer.curve_publickey, dealer.curve_secretkey = curve
    try:
        dealer.connect(where.router)
        dealer.send(body)
        replies = []
        while dealer.poll(timeout_ms):
            reply = json.loads(dealer.recv())
            replies.append(reply)
            if reply.get("op") not in (None,):
                break
        return replies
    finally:
        dealer.close()
        context.term()


HOSTILE = [
    (b'{"op": "hello", "client": "alice@acme.example", "mailboxes": ["alice@acme.example"], '
     b'"since": {"alice@acme.example": 1e400}}', "$.since"),
    (b'{"op": "ack", "client": "alice@acme.example", "mailbox": "alice@acme.example", '
     b'"mailbox_seq": 100000000000000000000000}', "$.mailbox_seq"),
    (b"[" * 50_000, "Expected `object`"),
    (b'{"op": "hello", "client": "alice@acme.example", "mailboxes": "alice@acme.example"}', "$.mailboxes"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"op": "fly"}', "$.op"),
    (b'{"op": "hello", "client": "", "mailboxes": ["alice@acme.example"]}', "$.client"),
]


def test_n5_hostile_requests_get_an_error_and_the_server_keeps_serving(tmp_path):
    db = tmp_path / "store.db"
    write_deltas(db, ALICE, 3, "ev1")
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        for body, says in HOSTILE:
            replies = _ask(where, body)
            assert len(replies) == 1 and replies[0]["op"] == "error", (body[:60], replies)
            assert says in replies[0]["reason"] and "Traceback" not in replies[0]["reason"]
        assert _ask(where, b"{" + b" " * (200 << 10) + b"}", timeout_ms=1000) == []  # over MAXMSGSIZE: dropped
        hello = _ask(where, json.dumps({"op": "hello", "client": ALICE, "mailboxes": [ALICE, "ALICE@acme.example"],
                                        "since": {"Alice@Acme.Example": 1}}).encode())
        assert [r.get("mailbox_seq") for r in hello[:-1]] == [2, 3]   # one mailbox, once; since keys normalised
        assert hello[-1] == {"op": "caught_up", "mailboxes": {ALICE: 3},
                             "store": store.identity(store.connect(db).conn)}
        assert server.popen.poll() is None
    finally:
        server.stop()


def test_n5_ack_beyond_the_latest_mailbox_seq_or_below_zero_is_refused(tmp_path):
    db = tmp_path / "store.db"
    write_deltas(db, ALICE, 3, "ev1")
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        for seq in (4, -1, 10**6):
            reply = _ask(where, json.dumps({"op": "ack", "client": ALICE, "mailbox": ALICE,
                                            "mailbox_seq": seq}).encode())
            assert reply[0]["op"] == "error", reply
        assert _ask(where, json.dumps({"op": "ack", "client": ALICE, "mailbox": ALICE, "mailbox_seq": 3}).encode()) \
            == [{"op": "acked", "mailbox": ALICE, "mailbox_seq": 3}]
        acked = store.connect(db).execute("SELECT mailbox_seq FROM client_acks").fetchall()
        assert acked == [(3,)]
    finally:
        server.stop()


def test_n5_end_event_and_status_are_authorised_per_mailbox(tmp_path):
    db = tmp_path / "store.db"
    write_deltas(db, ALICE, 2, "ev-alice")
    write_deltas(db, BOB, 2, "ev-bob")
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        refused = _ask(where, json.dumps({"op": "end_event", "client": CAROL, "event": "ev-alice"}).encode())
        assert refused[0]["op"] == "error" and "may not see mailbox alice@acme.example" in refused[0]["reason"]
        status = _ask(where, json.dumps({"op": "status", "client": BOB}).encode())[0]
        assert [e["event"] for e in status["events"]] == ["ev-bob"]
        assert "deltas" not in status and "published" not in status
        ended = _ask(where, json.dumps({"op": "end_event", "client": ALICE, "event": "ev-alice"}).encode())
        assert ended == [{"op": "event_ending", "event": "ev-alice"}]
    finally:
        server.stop()


def test_n5_aliases_stand_for_their_primary_in_authorisation_and_a_hello_for_an_alias_says_whose_it_is(tmp_path):
    db = tmp_path / "store.db"
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps({"synced": "2026-03-02T06:00:00Z",
                                     "users": [{"emailAddress": ALICE, "aliases": ["a.smith@acme.example"]}]}))
    run_cli("directory", "add", str(directory), "--db", str(db), check=True)
    write_deltas(db, ALICE, 2, "ev-alice")
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        mine = _ask(where, json.dumps({"op": "hello", "client": "a.smith@acme.example/outlook",
                                       "mailboxes": [ALICE]}).encode())
        assert [r.get("mailbox_seq") for r in mine[:-1]] == [1, 2] and mine[-1]["op"] == "caught_up"
        alias = _ask(where, json.dumps({"op": "hello", "client": ALICE, "mailboxes": ["A.Smith@acme.example"]}).encode())
        assert alias == [{"op": "error", "reason": f"a.smith@acme.example is an alias of {ALICE}; follow {ALICE}"}]
    finally:
        server.stop()


def test_n5_a_delegate_of_several_busy_mailboxes_always_gets_caught_up(tmp_path):
    db = tmp_path / "store.db"
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps({"synced": "2026-03-02T06:00:00Z", "delegates": [
        {"mailbox": BOB, "delegate": ALICE}, {"mailbox": CAROL, "delegate": ALICE}]}))
    run_cli("directory", "add", str(directory), "--db", str(db), check=True)
    for mailbox in (ALICE, BOB, CAROL):
        write_deltas(db, mailbox, 9_000, f"ev-{mailbox}")
    server = serve(db)
    where = endpoints.for_store(db)
    try:
        since = {ALICE: 0, BOB: 0, CAROL: 0}
        rounds = 0
        while True:
            replies = _ask(where, json.dumps({"op": "hello", "client": ALICE, "mailboxes": [ALICE, BOB, CAROL],
                                              "since": since}).encode())
            assert replies[-1]["op"] == "caught_up", f"round {rounds}: {len(replies)} replies, no caught_up"
            deltas = replies[:-1]
            if not deltas:
                break
            for delta in deltas:
                assert delta["mailbox_seq"] == since[delta["mailbox"]] + 1
                since[delta["mailbox"]] = delta["mailbox_seq"]
            rounds += 1
        assert since == {ALICE: 9_000, BOB: 9_000, CAROL: 9_000}
    finally:
        server.stop()


def _curve_setup(tmp_path: Path, db: Path):
    keys = tmp_path / "keys"
    run_cli("keys", "generate", str(keys), check=True)
    run_cli("keys", "generate", str(keys), "--client", ALICE, check=True)
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    server = serve(db, "--endpoint", endpoint, "--keys", str(keys))
    public, secret = endpoints.load_secret(keys / "clients" / f"{ALICE}.key_secret")
    curve = (endpoints.load_public(keys / "server.key"), public, secret)
    return server, endpoints.for_store(db, endpoint), curve


def _sub(context: zmq.Context, where: endpoints.Endpoints, curve: tuple, *topics: bytes) -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = curve
    sub.connect(where.pub)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    return sub


def _receive(sub: zmq.Socket, predicate, limit: int = 200) -> list:
    seen = []
    for _ in range(limit):
        assert sub.poll(10_000), f"nothing arrived; saw {[f[0] for f in seen][-5:]}"
        frames = sub.recv_multipart()
        seen.append(frames)
        if predicate(frames):
            return seen
    raise AssertionError("the expected message never came")


def test_n5_curve_server_outlives_a_subscriber_leaving_and_publishes_live(tmp_path):
    """The deltas must come over the PUB socket here: a SUB has no ROUTER to fall back on."""
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    server, where, curve = _curve_setup(tmp_path, db)
    context = zmq.Context()
    try:
        leaving = _sub(context, where, curve, b"heartbeat")
        _receive(leaving, lambda f: f[0] == b"heartbeat")
        leaving.close()  # libzmq sends the server an unsubscribe frame with no User-Id
        staying = _sub(context, where, curve, b"heartbeat", f"delta.{ALICE}".encode() + b"\0",
                       f"beat.{ALICE}".encode() + b"\0")
        beats = _receive(staying, lambda f: f[0] == b"heartbeat")
        beats += _receive(staying, lambda f: f[0] == b"heartbeat")  # a beat after the leave was handled
        assert server.popen.poll() is None
        write_deltas(db, ALICE, 2, "ev1")
        seen = _receive(staying, lambda f: f[0].startswith(b"delta.") and json.loads(f[1])["mailbox_seq"] == 2)
        assert [json.loads(f[1])["mailbox_seq"] for f in seen if f[0].startswith(b"delta.")] == [1, 2]
        for frames in beats + seen:  # heartbeats reveal no other mailbox's counter under CURVE
            if frames[0] == b"heartbeat":
                assert json.loads(frames[1])["mailboxes"] == {}
        write_deltas(db, BOB, 1, "ev-bob")
        own = _receive(staying, lambda f: f[0].startswith(b"beat.") and json.loads(f[1])["mailboxes"].get(ALICE) == 2)
        assert all(BOB not in frames[1].decode() for frames in own)
        assert server.popen.poll() is None
    finally:
        context.destroy(linger=0)
        server.stop()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=20)
requests = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"op": st.sampled_from(["hello", "ack", "status", "start_event", "end_event", "content"])},
                          optional={"client": json_values | st.just(ALICE), "mailboxes": json_values,
                                    "mailbox": json_values, "mailbox_seq": json_values, "since": json_values,
                                    "event": json_values}).map(lambda v: json.dumps(v).encode()))


@pytest.mark.parametrize("transport", ["ipc", "curve"])
def test_n5_fuzzed_requests_never_stop_the_server_or_cost_a_good_client_a_delta(tmp_path, transport):
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    if transport == "curve":
        server, where, curve = _curve_setup(tmp_path, db)
        keys = tmp_path / "keys"
        good = listen(db, ALICE, "--endpoint", where.router, "--key", str(keys / "clients" / f"{ALICE}.key_secret"),
                      "--server-key", str(keys / "server.key"))
    else:
        server, where, curve = serve(db), endpoints.for_store(db), None
        good = listen(db, ALICE)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve:
        dealer.curve_serverkey, dealer.curve_publickey, dealer.curve_secretkey = curve
    dealer.connect(where.router)
    sent = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=requests)
    def fuzz(body: bytes) -> None:
        dealer.send(body)
        sent.append(body)
        if len(sent) % 50 == 0:
            write_deltas(db, ALICE, 10, "fuzz", start=len(sent))

    try:
        fuzz()
        for _ in iter(lambda: dealer.poll(0), 0):  # drain what it answered
            dealer.recv_multipart()
        write_deltas(db, ALICE, 10, "fuzz", start=10_000)
        expected = len(engine.deltas(store.connect(db)))
        good.wait_for(lambda p: len(p.out) >= expected, timeout=60, what=f"all {expected} deltas")
        assert [d["mailbox_seq"] for d in good.deltas()] == list(range(1, expected + 1))
        assert server.popen.poll() is None
        assert not any("Traceback" in line for line in server.err)
    finally:
        dealer.close()
        context.term()
        good.stop()
        server.stop()


def test_n3_deltas_and_listen_print_control_characters_escaped(tmp_path):
    db = tmp_path / "store.db"
    snap = _snapshot(tmp_path / "snap", [{**_entry(1, None), "subject": "evil\x1b]0;pwned\x07\nforged: line",
                                          "mimeMessageId": None}])
    run_cli("snapshot", "add", str(snap), "--db", str(db), check=True)
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--no-local-mail", ALICE, "--db", str(db), check=True)
    printed = run_cli("deltas", "--db", str(db), check=True).stdout
    assert "\x1b" not in printed and "\x07" not in printed and printed.count("\n") == 1
    assert "evil\\x1b]0;pwned\\x07\\nforged: line" in printed
    server = serve(db)
    listener = Proc("listen", "--db", str(db), "--mailbox", ALICE)
    try:
        listener.wait_for(lambda p: len(p.out) >= 1, what="the delta")
        assert "\x1b" not in listener.out[0] and "\\x1b" in listener.out[0] and len(listener.out) == 1
    finally:
        listener.stop()
        server.stop()


@pytest.mark.parametrize("case", ["header-date-overflow", "non-utf8", "nested"])
def test_n3_malformed_snapshots_are_rejected_with_the_file_and_reason(tmp_path, case):
    snap = tmp_path / "snap"
    if case == "header-date-overflow":
        _snapshot(snap, [{**_entry(1, None), "headerDate": "9999-12-31T23:59:59-23:59"}])
        says = "$.data[0].headerDate: expected an ISO 8601 time"
    elif case == "non-utf8":
        snap.mkdir()
        (snap / "snapshot.json").write_bytes(b'{"meta": "\xff\xfe"}')
        says = "not valid JSON"
    else:
        snap.mkdir()
        (snap / "snapshot.json").write_bytes(b'{"meta": ' + b"[" * 50_000)
        says = "$.meta"
    result = run_cli("snapshot", "add", str(snap), "--db", str(tmp_path / "store.db"))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and says in result.stderr and str(snap) in result.stderr


def test_each_page_of_a_snapshot_is_for_its_own_address_so_an_alias_page_is_not_rejected(tmp_path):
    """formats.md rejects a page only for fail[], meta.status or invalid JSON/schema: pages
    naming the primary and an alias (or two addresses) are each applied for their own."""
    snap = _snapshot(tmp_path / "snap", [_entry(1, None)])
    (snap / "snapshot.json").rename(snap / "snapshot-0001.json")
    (snap / "snapshot-0002.json").write_text(json.dumps(
        {"meta": {"status": 200, "snapshot": {"address": "A.Smith@acme.example", "kind": "mailbox"}},
         "data": [_entry(2, None)], "fail": []}))
    result = run_cli("snapshot", "add", str(snap), "--db", str(tmp_path / "store.db"), check=True)
    assert "2 entries from 2 of 2 page(s)" in result.stdout and result.stderr == ""
    rows = store.connect(tmp_path / "store.db").execute("SELECT entry_id, address FROM entries ORDER BY id").fetchall()
    assert rows == [("e1", ALICE), ("e2", "a.smith@acme.example")]


def test_n3_key_folders_that_are_missing_or_impossible_get_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("")
    made = run_cli("keys", "generate", str(tmp_path / "file" / "keys"))
    assert made.returncode == 1 and "cannot write keys" in made.stderr and "Traceback" not in made.stderr
    port = free_port_pair()
    store.connect(tmp_path / "s.db").conn.close()
    served = run_cli("serve", "--db", str(tmp_path / "s.db"), "--endpoint", f"tcp://127.0.0.1:{port}",
                     "--keys", str(tmp_path / "nokeys"))
    assert served.returncode == 1 and "no such keys folder" in served.stderr and "Traceback" not in served.stderr


def test_n3_a_fifo_in_place_of_the_directory_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "directory.json"
    os.mkfifo(fifo)
    result = run_cli("directory", "add", str(fifo), "--db", str(tmp_path / "store.db"))
    assert result.returncode == 4 and "not a regular file" in result.stderr and "Traceback" not in result.stderr


# --- issue 19: a trusted drop folder, one line instead of a traceback, escaped output ----------

def _daemon_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "mail" / "Inbox").mkdir(parents=True, exist_ok=True)
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    config = tmp_path / "daemon.toml"
    config.write_text(f'db = "store.db"\nsnapshot_folder = "snapshots"\npoll_interval = 1\n{extra}'
                      f'[[mailbox]]\naddress = "{ALICE}"\nexports = ["mail"]\n')
    return config


@pytest.mark.parametrize("case", ["drop-writable", "drop-foreign", "directory-writable"])
def test_n4_a_drop_folder_or_directory_file_others_could_write_is_refused_at_start(tmp_path, case):
    config = _daemon_config(tmp_path)
    if case == "drop-writable":
        os.chmod(tmp_path / "snapshots", 0o777)
        says = "snapshot_folder: " + str(tmp_path / "snapshots") + " is writable by group or others"
    elif case == "drop-foreign":
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(tmp_path / "snapshots", 65534, 65534)
        says = "is owned by another user (uid 65534)"
    else:
        (tmp_path / "directory.json").write_text("{}")
        os.chmod(tmp_path / "directory.json", 0o666)
        says = "directory_file: " + str(tmp_path / "directory.json") + " is writable by group or others"
    result = run_cli("daemon", "--config", str(config))
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_n4_a_dropped_entry_that_is_not_the_users_own_is_not_applied_and_a_late_page_is_named(tmp_path):
    config = _daemon_config(tmp_path)
    daemon = Proc("daemon", "--config", str(config))
    try:
        daemon.wait_for(lambda p: any(f"index of {ALICE}" in line for line in p.err), what="the start")
        mine = _snapshot(tmp_path / "snapshots" / ".mine", [_entry(1, None)])
        mine.rename(tmp_path / "snapshots" / "mine")
        daemon.wait_for(lambda p: any("applied snapshot" in line for line in p.err), what="the snapshot applied")
        late = tmp_path / "snapshots" / "mine" / "snapshot-0002.json"
        late.write_text((tmp_path / "snapshots" / "mine" / "snapshot.json").read_text())
        daemon.wait_for(lambda p: any(f"{late} appeared in snapshot folder" in line for line in p.err),
                        what="the warning about the late page")
        if os.getuid() == 0:  # a folder another user dropped (possible if the folder was open once)
            forged = _snapshot(tmp_path / "snapshots" / ".forged", [_entry(2, None)])
            os.chown(forged, 65534, 65534)
            forged.rename(tmp_path / "snapshots" / "forged")
            daemon.wait_for(lambda p: any("forged is owned by another user" in line for line in p.err),
                            what="the refusal")
        entries = store.connect(tmp_path / "store.db").execute("SELECT entry_id FROM entries").fetchall()
        assert entries == [("e1",)]
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("case", ["nested-config", "event-mailbox", "event-name", "event-end", "hmac-secret"])
def test_n3_a_config_that_cannot_work_is_one_line_and_exit_2_at_start(tmp_path, case):
    if case == "nested-config":
        config = _daemon_config(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
        says = "nested too deeply"
    elif case == "hmac-secret":
        (tmp_path / "key").write_text("not base64 at all!")
        os.chmod(tmp_path / "key", 0o600)
        config = _daemon_config(tmp_path)
        with open(config, "a") as handle:
            handle.write('[mimecast]\nbase_url = "https://eu-api.mimecast.com"\nauth = "hmac"\napp_id = "a"\n'
                         f'app_key = "k"\naccess_key = "x"\nsecret_key_file = "key"\nmailboxes = ["{ALICE}"]\n')
        says = "the secret key is not base64"
    else:
        event = {"event-mailbox": f'name = "e1"\nmailboxes = ["a/b@x"]\nstart = "2030-01-01T00:00:00Z"\n',
                 "event-name": 'name = "\\u001b[31m"\nmailboxes = ["x@y.z"]\nstart = "2030-01-01T00:00:00Z"\n',
                 "event-end": 'name = "e1"\nmailboxes = ["x@y.z"]\nstart = "2030-01-01T09:00:00Z"\n'
                              'end = "2030-01-01T08:00:00Z"\n'}[case]
        config = _daemon_config(tmp_path)
        with open(config, "a") as handle:
            handle.write("[[event]]\n" + event)
        says = {"event-mailbox": "$.event[0].mailboxes[0]: not a mailbox address",
                "event-name": "$.event[0].name: not an event name",
                "event-end": "$.event[0].end: 2030-01-01T08:00:00Z is not after its start"}[case]
    result = run_cli("daemon", "--config", str(config))
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_n3_a_corrupt_apply_journal_is_one_line_saying_what_moving_it_costs(tmp_path):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / ".syncengine-apply.db").write_bytes(b"not a journal" * 100)
    store.connect(tmp_path / "store.db").conn.close()
    result = run_cli("apply", "--mailbox", ALICE, "--mailbox-dir", str(tmp_path / "mail"), "--db",
                     str(tmp_path / "store.db"), "--once")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a usable apply journal" in result.stderr and "sends in it would go out again" in result.stderr


def test_n3_mail_and_peer_text_reaches_log_lines_escaped(tmp_path):
    config = _daemon_config(tmp_path)
    daemon = Proc("daemon", "--config", str(config))
    try:
        daemon.wait_for(lambda p: any(f"index of {ALICE}" in line for line in p.err), what="the start")
        evil = _snapshot(tmp_path / "snapshots" / ".evil", [_entry(1, None)])
        evil.rename(tmp_path / "snapshots" / "evil\x1b]0;pwned\x07")
        daemon.wait_for(lambda p: any("applied snapshot" in line for line in p.err), what="the snapshot applied")
    finally:
        daemon.stop()
    log = "\n".join(daemon.err)
    assert "\x1b" not in log and "\x07" not in log and "evil\\x1b]0;pwned\\x07" in log


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE, which stands in for a full disk, is POSIX")
def test_n1_a_message_whose_copy_the_store_cannot_keep_fails_its_snapshot_never_goes_out_without_content(tmp_path):
    """The disk has room for the entries' rows but not for the copy of a 2 MB message:
    `snapshot add` fails in one line and applies nothing (it used to apply the entry
    with content null, as if its file had vanished); with room, the entry has its copy."""
    import resource

    snap = _snapshot(tmp_path / "snap", [_entry(1, "big.eml")])
    body = b"".join(b"%075d\r\n" % n for n in range(27_000))
    (snap / "big.eml").write_bytes(b"Message-ID: <m1@example.org>\r\nSubject: big\r\n\r\n" + body)
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    room = db.stat().st_size + 1_000_000  # the rows fit; the 2 MB copy does not

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))
    failed = subprocess.run([sys.executable, "-m", "syncengine", "snapshot", "add", str(snap), "--db", str(db)],
                            capture_output=True, text=True, timeout=120, preexec_fn=full_disk)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"{snap / 'big.eml'}: the store cannot keep its copy (File too large); nothing of {snap}" in failed.stderr
    database = store.connect(db, create=False)
    try:
        assert database.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
    finally:
        database.conn.close()
    run_cli("snapshot", "add", str(snap), "--db", str(db), check=True)
    database = store.connect(db, create=False)
    try:
        (content,) = database.execute("SELECT content FROM entries").fetchone()
    finally:
        database.conn.close()
    assert Path(content).read_bytes().endswith(body)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE stands in for a full disk, and prlimit on a "
                                                 "running process gives it room again: Linux")
def test_n1_an_ack_the_full_disk_refuses_is_an_error_reply_and_the_server_serves_on(tmp_path):
    """The server cannot record an ack (its WAL cannot grow: RLIMIT_FSIZE): the client
    hears `error` (the ack did not count, protocol.md) and the server goes on serving;
    it used to die with the write, taking every client's notifications with it."""
    import resource

    from .test_notify import _request

    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    write_deltas(db, ALICE, 3, "ev1")
    holder = store.connect(db, create=False)  # a reader keeps the WAL's files in place, the WAL empty
    holder.execute("SELECT count(*) FROM deltas").fetchone()

    def full_disk() -> None:  # the server's own small files fit; a WAL frame (4 KB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    server = Proc("serve", "--db", str(db), "-v", preexec_fn=full_disk)
    try:
        server.wait_for(lambda p: any(line.startswith("serving") for line in p.err), what="the serving line")
        where = endpoints.for_store(db)
        ack = {"op": "ack", "client": ALICE, "mailbox": ALICE, "mailbox_seq": 2}
        refused = _request(where, ack)[0]
        assert refused["op"] == "error" and refused["request"] == "ack", refused
        assert "the store could not be written" in refused["reason"] and "did not count" in refused["reason"]
        assert _request(where, {"op": "status"})[0]["op"] == "status"
        resource.prlimit(server.popen.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert _request(where, ack) == [{"op": "acked", "mailbox": ALICE, "mailbox_seq": 2}]
        assert server.popen.poll() is None and not any("Traceback" in line for line in server.err)
    finally:
        holder.conn.close()
        assert server.stop() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE stands in for a full disk, and prlimit on a "
                                                 "running process gives it room again: Linux")
def test_n1_a_disk_that_fills_under_the_daemon_loses_nothing_and_it_catches_up_once_there_is_room(tmp_path):
    """The daemon's disk is full (RLIMIT_FSIZE) from its start: its first index, a snapshot
    it finds in the drop folder and one the command line hands it each fail in one line,
    the command line is answered (not left waiting), and the daemon lives on; a message
    whose copy the store cannot keep fails its snapshot, never goes out without content.
    Given room, the retry 30 s on (not the rescan, 10 minutes away) indexes every message and
    applies the dropped snapshot, and an event delivers each new entry once, with its content."""
    import resource

    config = _daemon_config(tmp_path)  # the rescan is 10 minutes away: what comes back, comes by retry
    inbox = tmp_path / "mail" / "Inbox"
    for n in range(1500):
        (inbox / f"own-{n}.eml").write_bytes(f"Message-ID: <own-{n}@acme.example>\r\nDate: Mon, 02 Mar 2026 "
                                             f"07:00:00 +0000\r\nSubject: own {n}\r\n\r\nbody\r\n".encode())
    db = tmp_path / "store.db"
    store.connect(db).conn.close()  # migrated: the daemon's own first writes are small
    room = db.stat().st_size + 64_000
    big = _snapshot(tmp_path / "big", [_entry(n, None) for n in range(3000)])  # rows past the room
    dropped = _snapshot(tmp_path / "snapshots" / ".new", [_entry(n, "m.eml") for n in range(5000, 5003)])
    body = b"".join(b"%075d\r\n" % n for n in range(30_000))  # its copy in the store is past the room too
    (dropped / "m.eml").write_bytes(b"Message-ID: <m@example.org>\r\nSubject: new\r\n\r\n" + body)

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    daemon = Proc("daemon", "--config", str(config), preexec_fn=full_disk)
    try:
        daemon.wait_for(lambda p: any(f"{ALICE} was not indexed: the store could not be written" in line
                                      for line in p.err), timeout=60, what="the index failing in one line")
        refused = run_cli("snapshot", "add", str(big), "--db", str(db))
        assert refused.returncode == 1 and "the store could not be written" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        dropped.rename(tmp_path / "snapshots" / "new")
        daemon.wait_for(lambda p: any("new not applied: the store could not be written" in line
                                      and "tried again in 30 s" in line for line in p.err),
                        timeout=60, what="the dropped snapshot failing in one line")
        assert daemon.popen.poll() is None and not any("Traceback" in line for line in daemon.err)
        resource.prlimit(daemon.popen.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        daemon.wait_for(lambda p: any("ready: every mailbox" in line for line in p.err), timeout=120,
                        what="the first read done once there is room")
        daemon.wait_for(lambda p: any("applied snapshot" in line and "new" in line for line in p.err), timeout=60,
                        what="the dropped snapshot applied once there is room")
        run_cli("event", "start", "outage", "--mailbox", ALICE, "--db", str(db), check=True)
    finally:
        assert daemon.stop() == 0
    database = store.connect(db, create=False)
    try:
        assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert database.execute("SELECT count(*) FROM locations").fetchone()[0] == 1500
        delivered = [d for d in engine.deltas(database) if d["action"] == "deliver"]
    finally:
        database.conn.close()
    assert sorted(d["source"] for d in delivered) == ["mimecast:e5000", "mimecast:e5001", "mimecast:e5002"]
    assert all(d["content"] and Path(d["content"]).read_bytes().endswith(body) for d in delivered)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_n5_a_content_flood_that_is_never_read_cannot_grow_the_server(tmp_path):
    """150 requests for a 20 MB message on one socket and 100 more on 100 sockets, none
    read while they queue: one 512 KiB chunk per reply in flight, 32 transfers at most."""
    db = tmp_path / "store.db"
    big = tmp_path / "big"
    (big / "messages").mkdir(parents=True)
    (big / "messages" / "m.eml").write_bytes(b"Message-ID: <big@x>\r\nSubject: big\r\n\r\n" + b"x" * (20 << 20))
    _snapshot(big, [_entry(0, "messages/m.eml")])
    run_cli("snapshot", "add", str(big), "--db", str(db), check=True)
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--no-local-mail", ALICE, "--db", str(db), check=True)
    server = serve(db)
    where = endpoints.for_store(db)
    context = zmq.Context()
    request = json.dumps({"op": "content", "client": ALICE, "mailbox": ALICE, "mailbox_seq": 1}).encode()
    try:
        warm = _ask(where, request)  # one honest fetch first: the baseline includes a chunk read
        assert warm[0]["op"] == "content" and warm[0]["length"] == 512 << 10 and warm[0]["size"] > 20 << 20
        before = _peak_rss_mb(server.popen.pid)
        flood = context.socket(zmq.DEALER)
        flood.connect(where.router)
        for _ in range(150):
            flood.send(request)
        # The flood's first request reaches the server before any of the others: ZeroMQ
        # connects asynchronously, and 32 others served first would leave it no transfer.
        # poll() does not read the reply; nothing on the flood socket is read until below.
        assert flood.poll(10_000)
        others = []
        for _ in range(100):
            other = context.socket(zmq.DEALER)
            other.connect(where.router)
            other.send(request)
            others.append(other)
        replies = []
        while len(replies) < 150 and flood.poll(10_000):
            replies.append(flood.recv_multipart())
        answered = [json.loads(r[0]) for r in replies]
        assert [a["op"] for a in answered].count("content") == 1 and len(answered) == 150
        assert all("one content reply at a time" in a["reason"] for a in answered if a["op"] == "error")
        chunks = sum(1 for other in others if other.poll(10_000) and json.loads(other.recv_multipart()[0])["op"]
                     == "content")
        assert chunks <= 32  # the rest were told to come back
        grown = _peak_rss_mb(server.popen.pid) - before
        assert grown < 48, f"the server grew {grown:.0f} MB under the flood (bound: 33 chunks of 512 KiB)"
    finally:
        context.destroy(linger=0)
        server.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE, which stands in for a full disk, is POSIX")
def test_n1_a_disk_that_fills_mid_index_is_one_clear_line_and_the_next_run_is_whole(tmp_path):
    """The store's disk fills while a Maildir is indexed (RLIMIT_FSIZE: writes past it
    fail as on a full disk): one line, exit 1, no traceback; the store stays usable and
    the next run, with room, indexes every message."""
    import resource

    mail = tmp_path / "mail"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(mail), "--messages", "3000",
                    "--format", "maildir", "--seed", "3"], check=True, capture_output=True, timeout=300)
    files = [p for p in mail.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]
    db = tmp_path / "store.db"
    (tmp_path / "empty").mkdir()  # the store exists (and is migrated) before the disk fills
    run_cli("index", str(tmp_path / "empty"), "--db", str(db), "--mailbox", BOB, check=True)
    room = db.stat().st_size + 200_000

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))
    failed = subprocess.run([sys.executable, "-m", "syncengine", "index", str(mail), "--db", str(db),
                             "--mailbox", ALICE], capture_output=True, text=True, timeout=300, preexec_fn=full_disk)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "the store could not be written" in failed.stderr and "rolled back" in failed.stderr
    again = run_cli("index", str(mail), "--db", str(db), "--mailbox", ALICE, check=True)
    assert "0 failed" in again.stdout
    database = store.connect(db, create=False)
    try:
        assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert database.execute("SELECT count(*) FROM locations").fetchone()[0] == len(files)
    finally:
        database.conn.close()
