"""The SQLite store: one plain file, WAL mode, versioned migrations from schema/sql.

Browse it with `sqlite-utils` or datasette; every table is documented in its migration.

Durable at commit (N1): WAL with `synchronous=FULL`, so the WAL is fsynced at every
commit and a delta a client has seen cannot roll back after a power loss (under NORMAL
SQLite may lose the last transactions on an OS crash). The cost is one fsync per
transaction, which is why the index merges in batches, never row by row.
Owner only (N4): the file is created 0600 whatever the umask; SQLite gives its -wal
and -shm files the same mode.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import sqlite_utils

from . import files, normalise

_MIGRATION = re.compile(r"^(\d{4})_([\w-]+)\.sql$")
SYNCHRONOUS = "FULL"
# How long a writer waits for another before it gives up (SYNCENGINE_BUSY_WAIT overrides).
BUSY_WAIT_SECONDS = float(os.environ.get("SYNCENGINE_BUSY_WAIT", "60"))
BUSY_STEP_MS = 1000      # each attempt's own wait inside SQLite

log = logging.getLogger("syncengine.store")


class StoreError(Exception):
    """The store cannot be opened or migrated; the text names the file and the reason."""


class StoreBusy(StoreError):
    """Another process held the write lock for longer than we wait."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in schema/sql, in order."""
    found = []
    for entry in resources.files("syncengine.schema").joinpath("sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def connect(path: Path | str, create: bool = True) -> sqlite_utils.Database:
    """Open and migrate the store at `path`; with `create`, make it if it is missing
    (read-only commands pass False, so a mistyped path is an error, not a new store)."""
    path = Path(path)
    try:
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no such store")
            if not path.parent.exists():
                files.private_dir(path.parent)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif path.stat().st_uid == os.getuid():
            os.chmod(path, 0o600)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_STEP_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.create_function("fingerprint", 1, normalise.fingerprint, deterministic=True)
        db = sqlite_utils.Database(conn)
        migrate(db)
    except StoreError:
        raise
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable syncengine store ({exc})") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open ({exc.strerror or exc})") from None
    return db


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply the migrations this store has not seen, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
               "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    known = [version for version, _, _ in migrations()]
    if done and max(done) > max(known):
        raise StoreError(f"{db_path(db)}: written by a newer syncengine (schema version {max(done)}); "
                         f"this one knows versions up to {max(known)}. Upgrade syncengine to open it.")
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        with transaction(db.conn):
            for statement in _statements(sql):
                db.conn.execute(statement)
            db.conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            (version, name, time.time()))
        applied.append(version)
    return applied


def in_parts(values: list, size: int = 500) -> Iterator[tuple[list, str]]:
    """`values` `size` at a time, each part with its "?, ?, ..." for an IN list: one
    statement takes a bounded number of parameters."""
    for start in range(0, len(values), size):
        part = values[start:start + size]
        yield part, ", ".join("?" * len(part))


def identity(conn) -> str:
    """The store's random id, made at its creation (0009_store_identity)."""
    return conn.execute("SELECT id FROM store_identity").fetchone()[0]


def db_path(db: sqlite_utils.Database) -> str:
    return db.execute("PRAGMA database_list").fetchone()[2]


def _statements(sql: str) -> list[str]:
    # executescript would commit on its own; splitting keeps each migration atomic.
    statements, current = [], []
    for line in sql.splitlines():
        current.append(line)
        if sqlite3.complete_statement("\n".join(current)):
            text = "\n".join(current).strip()
            if text.strip(";").strip():
                statements.append(text)
            current = []
    return statements


CRASH_ENV = "SYNCENGINE_CRASH_AFTER_COMMITS"
CRASH_EXIT = 77
_commits = (os.getpid(), 0)  # commits made by this process: a forked child starts at 0


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    Every write of the engine goes through here, which makes it the one place for
    the crash harness (as in mbsync's tests): with SYNCENGINE_CRASH_AFTER_COMMITS=k
    the process stops hard, with no clean-up, right after its k-th commit."""

    def __init__(self, conn: sqlite3.Connection, busy_wait: float = BUSY_WAIT_SECONDS):
        self.conn = conn
        self.busy_wait = busy_wait

    def __enter__(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.busy_wait
        told = False
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return self.conn
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                where = self.conn.execute("PRAGMA database_list").fetchone()[2]
                if time.monotonic() >= deadline:
                    raise StoreBusy(f"{where}: another process has held the store's write lock for "
                                    f"{self.busy_wait:g} s; nothing was changed, try again") from None
                if not told:
                    log.warning("%s: waiting for another process to finish writing", where)
                    told = True

    def __exit__(self, kind, value, tb) -> None:
        global _commits
        if kind is not None:
            if self.conn.in_transaction:  # SQLite rolls back on its own after a full disk or an I/O error
                self.conn.execute("ROLLBACK")
            return
        self.conn.execute("COMMIT")
        pid, count = _commits
        count = count + 1 if pid == os.getpid() else 1
        _commits = (os.getpid(), count)
        limit = os.environ.get(CRASH_ENV)
        if limit and count >= int(limit):
            os._exit(CRASH_EXIT)
