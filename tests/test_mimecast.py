"""The Mimecast poller against a contract server of the documented API (the one test
double allowed: Mimecast's cloud), in real processes with real files and stores."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from syncengine import engine, store

from . import mimecast_contract as contract_mod
from .conftest import run_cli
from .processes import Proc

ALICE = "alice@acme.example"


def _raw(n: int) -> bytes:
    return (f"Message-ID: <mc-{n}@mail.example>\r\nDate: Sat, 28 Nov 2026 08:59:02 +0000\r\n"
            f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: Note {n}\r\n\r\nBody {n}\r\n").encode()


def _message(n: int) -> contract_mod.Message:
    return contract_mod.Message(f"id/{n}+x=", ALICE, _raw(n), subject=f"Note {n}", message_id=f"<mc-{n}@mail.example>")


@pytest.fixture
def contract():
    made = contract_mod.Contract(messages=[_message(n) for n in range(7)])
    server, url = contract_mod.serve(made)
    made.url = url
    yield made
    server.shutdown()


def _config(tmp_path: Path, contract, auth: str = "oauth2", **extra) -> Path:
    secret = tmp_path / "mimecast-secret"
    secret.write_text(contract_mod.CLIENT_SECRET if auth == "oauth2" else contract_mod.SECRET_KEY)
    os.chmod(secret, 0o600)
    keys = {"base_url": f'"{contract.url}"', "auth": f'"{auth}"', "mailboxes": f'["{ALICE}"]', "page_size": 3,
            **({"client_id": f'"{contract_mod.CLIENT_ID}"', "client_secret_file": '"mimecast-secret"'}
               if auth == "oauth2" else
               {"app_id": f'"{contract_mod.APP_ID}"', "app_key": f'"{contract_mod.APP_KEY}"',
                "access_key": f'"{contract_mod.ACCESS_KEY}"', "secret_key_file": '"mimecast-secret"'}),
            **extra}
    config = tmp_path / "mimecast.toml"
    config.write_text("[mimecast]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    return config


def _poll(config: Path, db: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("mimecast", "poll", "--config", str(config), "--db", str(db), "--once", *extra)


def _folders(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "snapshots").iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("auth", ["oauth2", "hmac"])
def test_a_pass_pages_through_the_list_and_writes_one_complete_snapshot_applied_to_the_store(tmp_path, contract, auth):
    contract.auth = auth
    db = tmp_path / "store.db"
    result = _poll(_config(tmp_path, contract, auth), db)
    assert result.returncode == 0, result.stderr
    assert "7 new message(s)" in result.stdout
    assert contract.calls["/api/archive/get-message-list"] == 3  # pages of 3: 3 + 3 + 1
    database = store.connect(db)
    rows = database.execute("SELECT e.address, e.kind, e.message_id, e.content, s.path FROM entries e"
                            " JOIN snapshots s ON s.id = e.snapshot_id ORDER BY e.id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(ALICE, "mailbox")] * 7
    assert rows[0][2] == "mc-0@mail.example" and Path(rows[0][3]).read_bytes() == _raw(0)
    assert database.execute("SELECT count(*) FROM mimecast_fetched").fetchone()[0] == 7
    assert _folders(tmp_path) == [] and not Path(rows[0][4]).exists()  # applied, its content in the store


def test_a_second_pass_fetches_only_new_ids_one_list_call_per_page_and_two_per_new_message(tmp_path, contract):
    config, db = _config(tmp_path, contract), tmp_path / "store.db"
    assert _poll(config, db).returncode == 0
    before = contract.calls.copy()
    contract.messages.append(_message(7))
    second = _poll(config, db)
    assert "1 new message(s)" in second.stdout
    delta = contract.calls - before
    assert delta["/api/archive/get-message-list"] == 3
    assert delta["/api/archive/get-message-detail"] == 1 and delta["/api/archive/get-message-part"] == 1
    third = _poll(config, db)
    assert "0 new message(s)" in third.stdout
    assert store.connect(db).execute("SELECT count(*) FROM snapshots").fetchone()[0] == 2


def test_end_to_end_poll_then_event_delivers_the_bytes_the_server_served(tmp_path, contract):
    contract.presigned = True  # an API 2.0 tenant answering parts with a download url
    config, db = _config(tmp_path, contract), tmp_path / "store.db"
    assert _poll(config, db).returncode == 0
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--no-local-mail", ALICE, "--db", str(db), check=True)
    deltas = engine.deltas(store.connect(db))
    assert len(deltas) == 7 and all(d["action"] == "deliver" for d in deltas)
    served = {m.message_id: m.raw for m in contract.messages}
    for delta in deltas:
        assert Path(delta["content"]).read_bytes() == served[delta["message_id"]]


def test_rate_limits_and_retryable_failures_are_waited_out(tmp_path, contract):
    contract.faults = {"/api/archive/get-message-list": [("status", 429, {"X-RateLimit-Reset": "50"})],
                       "/api/archive/get-message-detail": [("fail", "err_busy", True)]}
    result = _poll(_config(tmp_path, contract), tmp_path / "store.db")
    assert result.returncode == 0, result.stderr
    assert "rate limited" in result.stderr and "7 new message(s)" in result.stdout


def test_a_part_that_cannot_be_fetched_is_written_without_content_and_still_delivered(tmp_path, contract):
    contract.faults = {"/api/archive/get-message-part": [("fail", "err_gone", False)]}
    db = tmp_path / "store.db"
    result = _poll(_config(tmp_path, contract), db)
    assert result.returncode == 3 and "without content" in result.stderr
    run_cli("event", "start", "ev1", "--mailbox", ALICE, "--no-local-mail", ALICE, "--db", str(db), check=True)
    deltas = engine.deltas(store.connect(db))
    assert len(deltas) == 7 and sum(d["content"] is None for d in deltas) == 1


@pytest.mark.parametrize("status, says", [(418, "binding has expired"), (403, "forbidden"), (401, "unauthorised")])
def test_credentials_refused_stop_the_pass_with_nothing_half_written(tmp_path, contract, status, says):
    contract.faults = {"/api/archive/get-message-detail": [("status", status)] * 2}
    db = tmp_path / "store.db"
    result = _poll(_config(tmp_path, contract), db)
    assert result.returncode == 1 and says in result.stderr and "Traceback" not in result.stderr
    assert "/api/archive/get-message-detail" in result.stderr
    assert list((tmp_path / "snapshots").iterdir()) == []
    assert store.connect(db).execute("SELECT count(*) FROM mimecast_fetched").fetchone()[0] == 0


def test_a_token_that_expires_is_fetched_again_on_401(tmp_path, contract):
    contract.faults = {"/api/archive/get-message-list": [("status", 401)]}
    result = _poll(_config(tmp_path, contract), tmp_path / "store.db")
    assert result.returncode == 0, result.stderr
    assert contract.calls["/oauth/token"] == 2


def test_network_loss_fails_a_single_pass_and_earlier_snapshots_stand(tmp_path, contract):
    config, db = _config(tmp_path, contract), tmp_path / "store.db"
    assert _poll(config, db).returncode == 0
    contract.messages.append(_message(7))
    contract.faults = {"/api/archive/get-message-list": [("drop",)] * 10}
    result = _poll(config, db)
    assert result.returncode == 3 and "network" in result.stderr and "1 failed" in result.stdout
    database = store.connect(db)
    assert database.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1
    health = database.execute("SELECT address, failures, last_error FROM mimecast_health").fetchall()
    assert [(a, n) for a, n, _ in health] == [(ALICE, 1)] and "network" in health[0][2]


def test_a_poller_killed_mid_pass_leaves_only_complete_snapshot_folders(tmp_path, contract):
    contract.gate = threading.Event()  # parts wait: the poller is stuck mid-pass
    config, db = _config(tmp_path, contract), tmp_path / "store.db"
    poller = Proc("mimecast", "poll", "--config", str(config), "--db", str(db), "--once")
    try:
        deadline_calls = lambda: contract.calls["/api/archive/get-message-part"] >= 1  # noqa: E731
        poller.wait_for(lambda p: deadline_calls(), what="the first part request")
        poller.kill()
    finally:
        contract.gate.set()
    assert _folders(tmp_path) == []  # the one being built is under a dot-name
    contract.gate = None
    assert _poll(config, db).returncode == 0
    assert store.connect(db).execute("SELECT count(*), count(DISTINCT snapshot_id) FROM entries").fetchone() == (7, 1)
    assert list((tmp_path / "snapshots").iterdir()) == []  # nothing half-written, nothing left over


@pytest.mark.parametrize("change, says", [
    ({"base_url": '"http://mimecast.example.com"'}, "http is refused except for loopback hosts"),
    ({"page_sise": 3}, "unknown field `page_sise`"),
    ({"page_size": 0}, "$.page_size: expected `int` >= 1"),
], ids=["plain-http", "unknown-key", "bad-value"])
def test_a_bad_config_is_refused_naming_the_key(tmp_path, contract, change, says):
    result = _poll(_config(tmp_path, contract, **change), tmp_path / "store.db")
    assert result.returncode == 2 and says in result.stderr


def test_a_secret_file_others_can_read_is_refused_and_never_printed(tmp_path, contract):
    config = _config(tmp_path, contract)
    os.chmod(tmp_path / "mimecast-secret", 0o644)
    result = _poll(config, tmp_path / "store.db")
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert contract_mod.CLIENT_SECRET not in result.stderr + result.stdout


def test_directory_follows_nested_groups_and_ends_cycles(tmp_path, contract):
    contract.groups = {"sales@acme.example": [(ALICE, "user"), ("emea@acme.example", "group"),
                                              ("carol@acme.example", "user")],
                       "emea@acme.example": [("bob@acme.example", "user"), ("sales@acme.example", "group")]}
    config = _config(tmp_path, contract, groups='["sales@acme.example"]')
    db = tmp_path / "store.db"
    result = run_cli("mimecast", "directory", "--config", str(config), "--db", str(db))
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "directory.json").read_text())
    groups = {g["emailAddress"]: g["groupMembers"] for g in written["groups"]}
    assert set(groups) == {"sales@acme.example", "emea@acme.example"}
    assert {m["emailAddress"] for m in groups["emea@acme.example"]} == {"bob@acme.example", "sales@acme.example"}
    view = engine.directory_at(store.connect(db).conn, 1e12)
    assert view.groups("bob@acme.example") == {"emea@acme.example", "sales@acme.example"}
