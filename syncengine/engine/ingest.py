"""Inputs: Mimecast snapshots and directory syncs become rows the rules read (C8, C16)."""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from .. import directory as directory_mod
from .. import files, formats, snapshot
from ..store import transaction
from .common import store_dir


@dataclass
class SnapshotResult:
    path: str
    pages: int
    entries: int
    rejected: list[tuple[str, str]]
    warnings: list[tuple[str, str]]




@dataclass
class Prepared:
    """A snapshot read, its content stored (durably) and its rows staged in the TEMP table
    `staged_entries` of the connection that read it, ready to be inserted by it."""
    path: Path
    loaded: snapshot.Loaded


_STAGED = ("page, position, entry_id, address, kind, message_id, header_ts, received_ts, sender, recipients,"
           " subject, subject_norm, status, expired, message_class, resent_key, content, fingerprint")


def add_snapshot(db: sqlite_utils.Database, path: Path, now: float, once: bool = False) -> SnapshotResult | None:
    """Make the snapshot at `path` visible at `now`: valid pages are stored with their
    content, rejected pages are recorded with the reason and nothing of them applies.
    With `once`, a snapshot folder applied before (by this process or another watching
    the same drop folder) is not applied again, and None is returned."""
    prepared = prepare_snapshot(db, path, once)
    if prepared is None:
        return None
    with transaction(db.conn) as conn:
        return insert_snapshot(conn, prepared, now, once)


def prepare_snapshot(db: sqlite_utils.Database, path: Path, once: bool = False) -> Prepared | None:
    """The file work of add_snapshot, outside any transaction on the store: pages read and
    checked one at a time, content copied into the store and synced (N1) before the
    commit that names it, rows staged in a TEMP table (which takes no lock on the store).
    Memory holds one page, however many the snapshot has."""
    if once:
        path = Path(path).absolute()
        if db.execute("SELECT 1 FROM snapshots WHERE path = ?", (str(path),)).fetchone():
            return None
    loaded = snapshot.Loaded()
    content_dir = files.private_dir(store_dir(db) / "content")
    conn = db.conn
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS staged_entries ({_STAGED})")
    conn.execute("BEGIN")  # TEMP tables only: the store stays free for other writers (no IMMEDIATE)
    try:
        conn.execute("DELETE FROM staged_entries")
        for number, where, entries in snapshot.rows(Path(path), loaded):
            try:
                staged = conn.executemany(f"INSERT INTO staged_entries VALUES ({', '.join('?' * 18)})",
                                          (_stored(row, content_dir, path, loaded) for row in entries))
                loaded.entries += staged.rowcount
            except formats.FormatError as exc:  # an invalid entry: the page is rejected whole
                conn.execute("DELETE FROM staged_entries WHERE page = ?", (number,))
                loaded.rejected.append((where, str(exc)))
            del entries  # before the next page is read
    except BaseException:
        if conn.in_transaction:  # SQLite rolled back already after a full disk: its error is the one told
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return Prepared(Path(path), loaded)


def _stored(row: snapshot.EntryRow, content_dir: Path, path: Path, loaded: snapshot.Loaded) -> tuple:
    """One entry's row, its content copied into the store and its class derived."""
    data = None
    if row.content:
        try:
            data = files.read_regular(Path(row.content))
        except OSError as exc:  # vanished or swapped since it was checked
            loaded.warnings.append((row.content, f"cannot read ({exc.strerror or exc}); delivered without content"))
            row.content = None
        else:
            try:
                row.content = snapshot.store_content(data, content_dir)
            except OSError as exc:  # a full disk fails the snapshot (tried again whole), never the message
                raise OSError(exc.errno, f"{row.content}: the store cannot keep its copy ({exc.strerror or exc});"
                                         f" nothing of {path} was applied") from exc
    if row.message_class is None:
        row.message_class, warning = snapshot.content_class(data)
        if warning:
            loaded.warnings.append((str(path), f"entry {files.shown(row.entry_id)}: {warning}"))
    return (row.page, row.position, row.entry_id, row.address, row.kind, row.message_id, row.header_ts,
            row.received_ts, row.sender, row.recipients, row.subject, row.subject_norm, row.status, int(row.expired),
            row.message_class, row.resent_key, row.content, row.fingerprint)


def insert_snapshot(conn: sqlite3.Connection, prepared: Prepared, now: float,
                    once: bool = False) -> SnapshotResult | None:
    """The staged rows of a prepared snapshot, inside the caller's transaction (on the
    connection that prepared it)."""
    path, loaded = prepared.path, prepared.loaded
    if once and conn.execute("SELECT 1 FROM snapshots WHERE path = ?", (str(path),)).fetchone():
        return None  # another process applied it while this one read it
    cursor = conn.execute("INSERT INTO snapshots (path, visible_at, pages, rejected_pages, entries)"
                          " VALUES (?, ?, ?, ?, ?)",
                          (str(path), now, loaded.pages, len(loaded.rejected), loaded.entries))
    snapshot_id = cursor.lastrowid
    conn.executemany("INSERT INTO snapshot_errors VALUES (?, ?, ?)",
                     [(snapshot_id, file, reason) for file, reason in loaded.rejected + loaded.warnings])
    conn.execute(f"INSERT INTO entries (snapshot_id, visible_at, {_STAGED}) SELECT ?, ?, {_STAGED}"
                 f" FROM staged_entries ORDER BY rowid", (snapshot_id, now))
    conn.execute("DELETE FROM staged_entries")
    return SnapshotResult(str(path), loaded.pages, loaded.entries, loaded.rejected, loaded.warnings)


@dataclass
class DirectorySync:
    """A directory file read and validated, ready to be inserted."""
    path: Path
    data: bytes
    parsed: formats.Directory
    synced: int | None


def add_directory(db: sqlite_utils.Database, path: Path, now: float) -> formats.Directory:
    """A successful directory sync; the latest one added wins from `now` on (C16)."""
    sync = read_directory(path)
    with transaction(db.conn) as conn:
        insert_directory(conn, sync, now)
    return sync.parsed


def read_directory(path: Path) -> DirectorySync:
    """The directory file, validated (FormatError naming the file and the reason)."""
    try:
        data = files.read_regular(Path(path))  # a FIFO or device in its place must not hang the writer
    except OSError as exc:
        raise formats.FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    parsed, view = directory_mod.load(data, str(path))
    return DirectorySync(Path(path), data, parsed, view.synced)


def insert_directory(conn: sqlite3.Connection, sync: DirectorySync, now: float) -> None:
    """A read directory sync, inside the caller's transaction."""
    conn.execute("INSERT INTO directory_syncs (path, synced, added_at, body) VALUES (?, ?, ?, ?)",
                 (str(sync.path), sync.synced, now, sync.data))


def add_directory_if_new(db: sqlite_utils.Database, path: Path, now: float) -> bool:
    """The directory file as a new sync, unless it says what the sync in force says.
    The bytes compared are the bytes inserted: the file is read once."""
    sync = read_directory(path)
    with transaction(db.conn) as conn:
        latest = conn.execute("SELECT body FROM directory_syncs ORDER BY added_at DESC, id DESC LIMIT 1").fetchone()
        if latest and latest[0] == sync.data:
            return False
        insert_directory(conn, sync, now)
    return True


def directory_at(conn: sqlite3.Connection, now: float) -> directory_mod.DirectoryView:
    """The directory sync in force at `now`: the latest one added (C16)."""
    row = conn.execute("SELECT path, body FROM directory_syncs WHERE added_at <= ? ORDER BY added_at DESC, id DESC"
                       " LIMIT 1", (now,)).fetchone()
    return _directory_view(row[0], row[1]) if row else directory_mod.EMPTY


@functools.lru_cache(maxsize=8)
def _directory_view(path: str, body: bytes) -> directory_mod.DirectoryView:
    # The server asks on every hello and subscription; parsing once per sync is enough.
    return directory_mod.load(body, path)[1]
