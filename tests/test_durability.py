"""N1 across power loss: what a committed row names is on disk before the commit, and
every commit is synced. Read from the system calls of real processes (strace), and
from every SQLite connection the project opens."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import FIXTURES, run_cli
from .processes import Proc, serve

DEMO = FIXTURES / "scenarios" / "demo"
ALICE = "alice@acme.example"
STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace not installed (apt-get install strace)")


@dataclass
class Call:
    name: str
    path: str          # the file the call acts on (by fd, resolved from the openat that made it)
    target: str = ""   # rename's new name


_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")


def traced(*args: str, cwd: Path) -> list[Call]:
    """Run the CLI under strace; the file calls in order, each naming its file."""
    log = cwd / f"trace-{len(list(cwd.glob('trace-*')))}.txt"
    subprocess.run([STRACE, "-f", "-qq", "-o", str(log), "-e",
                    "trace=fsync,fdatasync,rename,renameat,renameat2,openat,pwrite64,write,close",
                    sys.executable, "-m", "syncengine", *args], check=True, capture_output=True, cwd=cwd,
                   timeout=120)
    calls, fds = [], {}
    for line in log.read_text().splitlines():
        match = _LINE.match(line)
        if not match or int(match["ret"]) < 0:
            continue
        pid, name, arguments = match["pid"], match["name"], match["args"]
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', arguments)
        if name == "openat":
            fds[(pid, match["ret"])] = strings[0]
        elif name in ("fsync", "fdatasync", "pwrite64", "write", "close"):
            fd = arguments.split(",", 1)[0]
            path = fds.get((pid, fd), f"fd {fd}")
            if name == "close":
                fds.pop((pid, fd), None)
            else:
                calls.append(Call(name, path))
        elif name.startswith("rename"):
            calls.append(Call("rename", strings[0], strings[-1]))
    return calls


def first(calls: list[Call], predicate, after: int = -1) -> int:
    for number, call in enumerate(calls):
        if number > after and predicate(call):
            return number
    raise AssertionError("no such call in the trace")


class held_open:
    """A reader on the store for the length of a traced command: the command's connection
    is then not the last one, so closing it does not checkpoint, and a WAL sync seen in
    the trace can only be the commit's own (under synchronous=NORMAL there is none)."""

    def __init__(self, db: Path):
        self.conn = sqlite3.connect(db)

    def __enter__(self):
        self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return self

    def __exit__(self, *exc):
        self.conn.close()


def wal_is_synced_after_its_last_write(calls: list[Call], wal: str) -> bool:
    last_write = max(n for n, c in enumerate(calls) if c.path == wal and c.name in ("pwrite64", "write"))
    return any(c.path == wal and c.name in ("fsync", "fdatasync") for c in calls[last_write + 1:])


@needs_strace
def test_n1_content_file_and_folder_are_synced_before_the_commit_that_names_them(tmp_path):
    db = tmp_path / "store.db"
    wal = f"{db}-wal"
    run_cli("index", str(DEMO / "mailbox" / "alice"), "--db", str(db), "--mailbox", ALICE, check=True)
    with held_open(db):
        calls = traced("snapshot", "add", str(DEMO / "snapshots" / "alice-0859"), "--db", str(db), cwd=tmp_path)
    content = Path(f"{db}.d") / "content"
    stored = sorted(content.iterdir())
    assert stored, "the snapshot's content was stored"
    for path in stored:
        renamed = first(calls, lambda c: c.name == "rename" and c.target == str(path))
        part = calls[renamed].path
        synced = first(calls, lambda c: c.name in ("fsync", "fdatasync") and c.path == part)
        assert synced < renamed, f"{part} renamed before it was synced"
        folder_synced = first(calls, lambda c: c.name == "fsync" and c.path == str(content), after=renamed)
        commit_writes = [n for n, c in enumerate(calls) if c.path == wal and c.name == "pwrite64" and n > renamed]
        assert commit_writes, "the entries were written to the WAL after the content"
        assert folder_synced < min(commit_writes), "the WAL was written before the content's folder was synced"
    assert wal_is_synced_after_its_last_write(calls, wal)


@needs_strace
def test_n1_event_start_and_a_poll_sync_the_wal_at_the_commit_of_their_deltas(tmp_path):
    db = tmp_path / "store.db"
    wal = f"{db}-wal"
    run_cli("index", str(DEMO / "mailbox" / "alice"), "--db", str(db), "--mailbox", ALICE, check=True)
    run_cli("snapshot", "add", str(DEMO / "snapshots" / "alice-0859"), "--db", str(db), check=True)
    with held_open(db):
        calls = traced("event", "start", "ev1", "--mailbox", ALICE, "--db", str(db), cwd=tmp_path)
    assert wal_is_synced_after_its_last_write(calls, wal)
    run_cli("snapshot", "add", str(DEMO / "snapshots" / "alice-0901"), "--db", str(db), check=True)
    with held_open(db):
        calls = traced("sync", "--db", str(db), cwd=tmp_path)
    assert wal_is_synced_after_its_last_write(calls, wal)
    deltas = [json.loads(line) for line in run_cli("deltas", "--db", str(db), "--json", check=True).stdout.splitlines()]
    named = [d["content"] for d in deltas if d["content"]]
    assert len(named) >= 3 and all(Path(p).stat().st_size > 0 for p in named)


RECORDER = textwrap.dedent('''
    """Test harness: every SQLite connection records PRAGMA synchronous at each BEGIN and COMMIT."""
    import os, sqlite3
    _connect, _log = sqlite3.connect, os.environ["SYNCENGINE_SYNC_LOG"]

    class Recording(sqlite3.Connection):
        def execute(self, sql, *args):
            if sql.split(None, 1)[:1] in (["BEGIN"], ["COMMIT"]):
                value = sqlite3.Connection.execute(self, "PRAGMA synchronous").fetchone()[0]
                with open(_log, "a") as handle:
                    handle.write(f"{os.getpid()} {sql.split()[0]} {value}\\n")
            return sqlite3.Connection.execute(self, sql, *args)

    def connect(*args, **kwargs):
        kwargs.setdefault("factory", Recording)
        return _connect(*args, **kwargs)

    sqlite3.connect = connect
''')


def test_n1_every_connection_the_project_opens_is_synchronous_full(tmp_path):
    """CLI commands, the notification server (acks) and replay; 2 is FULL."""
    (tmp_path / "sitecustomize.py").write_text(RECORDER)
    log = tmp_path / "sync.log"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SYNCENGINE_SYNC_LOG": str(log)}
    db = str(tmp_path / "store.db")

    def cli(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "syncengine", *args], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=120)
        assert result.returncode in (0, 3), result.stderr

    runs = {}
    for name, args in {
        "index": ("index", str(DEMO / "mailbox" / "alice"), "--db", db, "--mailbox", ALICE),
        "snapshot": ("snapshot", "add", str(DEMO / "snapshots" / "alice-0859"), "--db", db),
        "event": ("event", "start", "ev1", "--mailbox", ALICE, "--db", db),
        "sync": ("sync", "--db", db),
        "replay": ("replay", str(DEMO), "--db", str(tmp_path / "replay.db"), "-q"),
    }.items():
        before = log.read_text().count("\n") if log.exists() else 0
        cli(*args)
        runs[name] = log.read_text().splitlines()[before:]
    server = serve(Path(db), env=env)
    listener = Proc("listen", "--db", db, "--mailbox", ALICE, "--json", "--ack", env=env)
    try:
        listener.wait_for(lambda p: len(p.out) >= 2, what="the reconcile deltas")
        before = log.read_text().count("\n")
        server.stop()  # acks were committed by the server; wait until it has gone
        listener.stop()
    finally:
        server.stop()
        listener.stop()
    server_pid = str(server.popen.pid)
    runs["serve (acks)"] = [line for line in log.read_text().splitlines() if line.startswith(server_pid + " ")]
    mail = tmp_path / "daemon" / "mail"
    shutil.copytree(DEMO / "mailbox" / "alice", mail)
    config = tmp_path / "daemon" / "daemon.toml"
    config.write_text(f'db = "store.db"\npoll_interval = 1\n[[mailbox]]\naddress = "{ALICE}"\nexports = ["mail"]\n'
                      '[[event]]\nname = "scheduled"\nmailboxes = ["alice@acme.example"]\n'
                      'start = "2020-01-01T00:00:00Z"\n')
    daemon = Proc("daemon", "--config", str(config), env=env)
    try:
        daemon.wait_for(lambda p: any("event scheduled started" in e for e in p.err), what="the scheduled event")
    finally:
        daemon.stop()
    daemon_pid = str(daemon.popen.pid)
    runs["daemon"] = [line for line in log.read_text().splitlines() if line.startswith(daemon_pid + " ")]
    assert before > 0
    for name, lines in runs.items():
        assert lines, f"{name} committed nothing"
        assert {line.split()[2] for line in lines} == {"2"}, f"{name}: {lines[:5]}"
