"""The SQLite store: one plain file, WAL mode, versioned migrations from schema/sql.

Browse it with `sqlite-utils` or datasette; every table is documented in its migration.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from importlib import resources
from pathlib import Path

import sqlite_utils

_MIGRATION = re.compile(r"^(\d{4})_([\w-]+)\.sql$")


class StoreError(Exception):
    """The store cannot be opened or migrated; the text names the file and the reason."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in schema/sql, in order."""
    found = []
    for entry in resources.files("syncengine.schema").joinpath("sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the store at `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = sqlite_utils.Database(conn)
        migrate(db)
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

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb) -> None:
        global _commits
        if kind is not None:
            self.conn.execute("ROLLBACK")
            return
        self.conn.execute("COMMIT")
        pid, count = _commits
        count = count + 1 if pid == os.getpid() else 1
        _commits = (os.getpid(), count)
        limit = os.environ.get(CRASH_ENV)
        if limit and count >= int(limit):
            os._exit(CRASH_EXIT)
