"""One odd message or answer never stops the mail flow (issue 19). The contract server
(the one stand-in, for Mimecast's cloud) in a hostile mode per case; the poller as the
daemon and `mimecast poll` run it (poller.supervise), and the real daemon for the cases
that used to end its poller thread. Each case: the good mail is delivered exactly once,
the odd one is delivered or reported, nothing raises, and status names a failure while
it lasts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from syncengine import engine, store
from syncengine.mimecast import api as api_mod
from syncengine.mimecast import config as config_mod
from syncengine.mimecast import poller

from . import mimecast_contract as contract_mod
from .conftest import run_cli
from .processes import Proc, wait_until

ALICE = "alice@acme.example"
GOOD = [f"good-{n}" for n in range(3)]


def _raw(name: str) -> bytes:
    return (f"Message-ID: <{name}@mail.example>\r\nDate: Sat, 28 Nov 2026 08:59:02 +0000\r\nFrom: bob@example.org\r\n"
            f"To: {ALICE}\r\nSubject: About {name}\r\n\r\nBody of {name}\r\n").encode()


def _contract(*odd: contract_mod.Message) -> contract_mod.Contract:
    messages = [contract_mod.Message(name, ALICE, _raw(name), subject=f"About {name}",
                                     message_id=f"<{name}@mail.example>") for name in GOOD]
    return contract_mod.Contract(messages=messages + list(odd))


@pytest.fixture
def served():
    servers = []

    def start(contract: contract_mod.Contract) -> contract_mod.Contract:
        server, contract.url = contract_mod.serve(contract)
        servers.append(server)
        return contract
    yield start
    for server in servers:
        server.shutdown()


def _settings(tmp_path: Path, contract, **extra) -> config_mod.Mimecast:
    (tmp_path / "secret").write_text(contract_mod.CLIENT_SECRET)
    os.chmod(tmp_path / "secret", 0o600)
    return config_mod.section({"base_url": contract.url, "auth": "oauth2", "client_id": contract_mod.CLIENT_ID,
                               "client_secret_file": "secret", "mailboxes": [ALICE], "request_deadline_s": 2,
                               **extra}, tmp_path / "mimecast.toml")


def _one_pass(tmp_path: Path, contract, **extra) -> tuple[store.sqlite_utils.Database, list, dict]:
    """One supervised pass as the CLI runs it, into a store whose event delivers all."""
    settings = _settings(tmp_path, contract, **extra)
    db = store.connect(tmp_path / "store.db")
    engine.start_event(db, "ev1", [ALICE], False, engine.wall_clock() - 60, no_local_mail=[ALICE])
    outcomes = {}
    api = api_mod.Api(settings)
    try:
        passes = poller.supervise(api, settings, db, threading.Event(),
                                  lambda folder: poller.apply_folder(db, folder, engine.wall_clock()),
                                  lambda found, now: outcomes.update(found), once=True)
    finally:
        api.close()
    engine.poll(db, engine.wall_clock() + 60)
    return db, passes, outcomes


def _delivered(db) -> list[str]:
    return sorted(d["source"][len("mimecast:"):] for d in engine.deltas(db) if d["action"] == "deliver")


def _warnings(db) -> str:
    return "\n".join(r[0] for r in db.execute("SELECT reason FROM snapshot_errors"))


def _deep_mime() -> bytes:
    nested = b"Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    for n in range(1200):
        nested = b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n%s\r\n--b%d--\r\n' % (n, n, nested, n)
    return b"Message-ID: <deep@mail.example>\r\nSubject: deep\r\n" + nested


def _odd(name: str, **fields) -> contract_mod.Message:
    return contract_mod.Message(name, ALICE, fields.pop("raw", _raw(name)), subject=f"About {name}",
                                message_id=f"<{name}@mail.example>", **fields)


def _mutate_item(name: str, change):
    """A list answer with one item changed as a buggy endpoint sends it."""
    def mutate(payload):
        for item in payload["data"]:
            if item.get("id") == name:
                change(item)
        return payload
    return mutate


@pytest.mark.parametrize("case", ["no-subject", "empty-header-date", "lone-surrogate", "deep-mime", "detail-errors-null"])
def test_one_odd_entry_is_delivered_or_reported_and_never_costs_its_window(tmp_path, served, case):
    contract = served(_contract(_odd("odd", raw=_deep_mime() if case == "deep-mime" else _raw("odd"))))
    if case == "no-subject":
        contract.mutate["/api/archive/get-message-list"] = _mutate_item("odd", lambda item: item.pop("subject"))
    elif case == "lone-surrogate":
        contract.mutate["/api/archive/get-message-list"] = _mutate_item("odd", lambda item: item.update(subject="\ud800"))
    elif case == "empty-header-date":
        contract.mutate["/api/archive/get-message-detail"] = lambda p: {
            **p, "data": [{**d, "headerDate": ""} if d.get("id") == "odd" else d for d in p["data"]]}
    elif case == "detail-errors-null":
        contract.mutate["/api/archive/get-message-detail"] = lambda p: (
            {"meta": {"status": 200}, "data": [], "fail": [{"errors": None}]}
            if p["data"] and p["data"][0].get("id") == "odd" else p)
    db, passes, outcomes = _one_pass(tmp_path, contract)
    assert outcomes == {ALICE: None}
    delivered = _delivered(db)
    assert [d for d in delivered if d in GOOD] == GOOD  # each exactly once
    said = _warnings(db)
    if case == "detail-errors-null":  # reported, not written this pass, listed again later
        assert "odd" not in delivered and "'odd'" in said and "not written this pass" in said
        assert db.execute("SELECT count(*) FROM mimecast_fetched WHERE id = 'odd'").fetchone()[0] == 0
    else:
        assert "odd" in delivered and "'odd'" in said
        expected = {"no-subject": "no subject", "empty-header-date": "headerDate", "lone-surrogate": "not valid Unicode",
                    "deep-mime": "more than 200 MIME parts"}[case]
        assert expected in said
    if case == "deep-mime":
        assert db.execute("SELECT message_class FROM entries WHERE entry_id = 'odd'").fetchone() == ("IPM.Note",)


class _Admin:
    """A local admin page that must never be fetched and delivered as mail."""

    def __init__(self):
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"<html>router admin</html>")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]


@pytest.mark.parametrize("case", ["other-port", "plain-http", "too-large"])
def test_a_hostile_download_is_refused_and_the_entry_goes_without_content(tmp_path, served, case, caplog):
    admin = _Admin()
    contract = served(_contract(_odd("odd", raw=b"x" * (2 << 20) if case == "too-large" else _raw("odd"))))
    hostile = {
        "other-port": lambda m, host: f"http://127.0.0.1:{admin.port}/admin?X-Amz-Signature=secret-{m.id}",
        "plain-http": lambda m, host: f"http://files.mimecast.example/{m.id}?X-Amz-Signature=secret",
        "too-large": lambda m, host: f"http://{host}/download/{m.id}?X-Amz-Signature=secret",
    }[case]
    contract.download_url = lambda m, host: hostile(m, host) if m.id == "odd" else f"http://{host}/download/{m.id}"
    with caplog.at_level(logging.DEBUG):
        db, passes, _ = _one_pass(tmp_path, contract, max_message_bytes=1 << 20)
    admin.server.shutdown()
    assert admin.hits == 0
    rows = dict(db.execute("SELECT entry_id, content FROM entries").fetchall())
    assert rows["odd"] is None and all(rows[name] for name in GOOD) and _delivered(db) == sorted(GOOD + ["odd"])
    said = _warnings(db)
    assert {"other-port": "not the API's own address", "plain-http": "plain http",
            "too-large": "too large"}[case] in said and "without content" in said
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("syncengine"))
    assert "X-Amz-Signature" not in said + ours  # a pre-signed URL is a credential
    assert db.execute("SELECT content FROM mimecast_fetched WHERE id = 'odd'").fetchone() == (0,)  # tried again


def test_no_url_reaches_a_log_line_through_the_http_libraries():
    from syncengine import logs
    logs.configure()
    try:  # their INFO lines carry each URL, a pre-signed one with its signature
        assert not any(logging.getLogger(name).isEnabledFor(logging.INFO) for name in ("httpx", "httpcore"))
    finally:
        logging.getLogger().handlers.clear()


def test_a_bounded_client_survives_a_looping_token_a_nan_rate_limit_and_an_odd_token(tmp_path, served):
    contract = served(_contract())
    contract.faults = {"/api/archive/get-message-list": [("status", 429, {"X-RateLimit-Reset": "nan"})]}
    contract.loop_pages = True  # "next" is the same token forever
    db, passes, outcomes = _one_pass(tmp_path, contract, page_size=2)
    assert "pagination token repeats" in outcomes[ALICE]
    assert contract.calls["/api/archive/get-message-list"] == 3  # the 429, the page, the repeat: then it stops
    assert _delivered(db) == GOOD[:2]  # what the listing gave is written
    for number, token in enumerate(("tøken", "a b", "x" * 10_000)):
        other = served(_contract())
        other.token_value = token
        (tmp_path / str(number)).mkdir()
        _, _, outcomes = _one_pass(tmp_path / str(number), other)
        assert "not a usable token" in outcomes[ALICE]


def test_a_trickling_answer_is_cut_at_the_deadline(tmp_path, served):
    contract = served(_contract())
    contract.trickle["/oauth/token"] = 0.3  # well within any per-read timeout, byte by byte
    started = time.monotonic()
    _, _, outcomes = _one_pass(tmp_path, contract)
    assert "network: ReadTimeout" in outcomes[ALICE]
    assert time.monotonic() - started < 30  # 2 s deadline; before, it never ended


def _daemon_config(tmp_path: Path, contract) -> Path:
    (tmp_path / "secret").write_text(contract_mod.CLIENT_SECRET)
    os.chmod(tmp_path / "secret", 0o600)
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    config = tmp_path / "daemon.toml"
    config.write_text(f'db = "store.db"\nsnapshot_folder = "snapshots"\npoll_interval = 1\n[[mailbox]]\n'
                      f'address = "{ALICE}"\nno_local_mail = true\n[mimecast]\nbase_url = "{contract.url}"\n'
                      f'auth = "oauth2"\nclient_id = "{contract_mod.CLIENT_ID}"\nclient_secret_file = "secret"\n'
                      f'mailboxes = ["{ALICE}"]\ninterval_s = 1\nrequest_deadline_s = 2\nsnapshot_folder = "drop"\n')
    return config


def _health(db: Path) -> dict:
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    return {h["address"]: h for h in status["mimecast"]}


@pytest.mark.parametrize("case", ["errors-null", "non-ascii-token", "looping-token", "trickle", "disk"])
def test_the_daemons_poller_outlives_a_hostile_answer_and_status_names_it_while_it_lasts(tmp_path, served, case):
    contract = served(_contract())
    if case == "errors-null":
        contract.mutate["/api/archive/get-message-list"] = lambda p: {"meta": {"status": 200}, "data": [],
                                                                      "fail": [{"errors": None}]}
    elif case == "non-ascii-token":
        contract.token_value = "tøken"
    elif case == "looping-token":
        contract.mutate["/api/archive/get-message-list"] = lambda p: {**p, "data": [],
                                                                      "meta": {"status": 200, "pagination": {"next": "x"}}}
    elif case == "trickle":
        contract.trickle["/oauth/token"] = 0.3
    config = _daemon_config(tmp_path, contract)
    if case == "disk":
        (tmp_path / "drop").write_text("a file where the poller's folder should be")
    db = tmp_path / "store.db"
    daemon = Proc("daemon", "--config", str(config))
    try:
        daemon.wait_for(lambda p: any("daemon started" in line for line in p.err), what="the start")
        run_cli("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), check=True)
        failing = wait_until(lambda: (h := _health(db).get(ALICE)) and h["failures"] >= 1 and h, timeout=60,
                             what="the failure in status")
        assert failing["last_error"] and failing["last_success"] is None
        assert "Traceback" not in "\n".join(daemon.err) and daemon.popen.poll() is None
        # the endpoint mends: the same thread goes on and delivers, once
        contract.mutate.clear()
        contract.trickle.clear()
        contract.token_value = None
        if case == "disk":
            (tmp_path / "drop").unlink()
        wait_until(lambda: len([d for d in engine.deltas(store.connect(db, create=False))
                                if d["action"] == "deliver"]) >= 3, timeout=90, what="the good mail")
        wait_until(lambda: _health(db)[ALICE]["failures"] == 0, timeout=30, what="the health to recover")
        assert sorted(d["message_id"] for d in engine.deltas(store.connect(db, create=False))) == \
            sorted(f"<{name}@mail.example>" for name in GOOD)
    finally:
        assert daemon.stop() == 0


def test_fuzzed_field_shapes_never_raise_and_every_well_formed_message_is_delivered_once(tmp_path_factory, served):
    """Hypothesis: random shapes (missing, null, wrong type, huge, not UTF-8, deep) for the
    fields of list, detail and part answers of some messages; the others are well formed."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    deep = {"a": None}
    for _ in range(500):  # deep, and still something a JSON encoder writes
        deep = {"a": deep}
    shapes = st.sampled_from([None, 7, 1.5e308, float("nan"), True, [], {}, "", "x" * 100_000, "\ud800\udfff\ud800",
                              "\x1b[31m", [None, 3], {"emailAddress": 5}, {"emailAddress": "ok@x.example"}, deep])
    fields_list = st.sampled_from(["subject", "from", "received", "status", "expired", "size"])
    fields_detail = st.sampled_from(["mimeMessageId", "headerDate", "to", "cc", "headers"])
    parts = st.sampled_from([b"", b"\xff\xfe\x00garbage", _deep_mime(), b"Subject: x\r\n\r\n" + b"A" * 50_000])

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                      HealthCheck.function_scoped_fixture])
    @given(changes=st.lists(st.tuples(st.sampled_from(["list", "detail", "part"]), fields_list | fields_detail, shapes,
                                      parts), min_size=1, max_size=4))
    def check(changes) -> None:
        odd = [_odd(f"odd-{n}", raw=part if where == "part" else _raw(f"odd-{n}"))
               for n, (where, _, _, part) in enumerate(changes)]
        contract = served(_contract(*odd))

        def mutate(where: str):
            def apply(payload):
                data = payload.get("data") or []
                for n, (kind, name, value, _) in enumerate(changes):
                    for item in data:
                        if kind == where and isinstance(item, dict) and item.get("id") == f"odd-{n}":
                            item[name] = value
                return payload
            return apply
        contract.mutate["/api/archive/get-message-list"] = mutate("list")
        contract.mutate["/api/archive/get-message-detail"] = mutate("detail")
        folder = tmp_path_factory.mktemp("fuzz")
        db, passes, outcomes = _one_pass(folder, contract)
        assert outcomes == {ALICE: None}, outcomes
        assert [d for d in _delivered(db) if d in GOOD] == GOOD
        written = {r[0] for r in db.execute("SELECT entry_id FROM entries")}
        for message in odd:  # each odd one: written (then decided by the rules: held when expired), or reported
            assert message.id in written or repr(message.id) in _warnings(db), message.id
        db.conn.close()
        shutil.rmtree(folder)

    check()
