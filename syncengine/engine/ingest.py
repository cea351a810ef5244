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
    """A snapshot read and its content stored (durably), ready to be inserted."""
    path: Path
    loaded: snapshot.Loaded


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
    """The file work of add_snapshot, outside any transaction: pages read and checked,
    content copied into the store and synced (N1) before the commit that names it."""
    if once:
        path = Path(path).absolute()
        if db.execute("SELECT 1 FROM snapshots WHERE path = ?", (str(path),)).fetchone():
            return None
    loaded = snapshot.load(path)
    content_dir = files.private_dir(store_dir(db) / "content")
    for row in loaded.entries:
        data = None
        if row.content:
            try:
                row.content, data = snapshot.store_content(row.content, content_dir)
            except OSError as exc:  # vanished or swapped since it was checked
                loaded.warnings.append((row.content, f"cannot read ({exc.strerror or exc}); delivered without content"))
                row.content = None
        if row.message_class is None:
            row.message_class, warning = snapshot.content_class(data)
            if warning:
                loaded.warnings.append((str(path), f"entry {files.shown(row.entry_id)}: {warning}"))
    return Prepared(Path(path), loaded)


def insert_snapshot(conn: sqlite3.Connection, prepared: Prepared, now: float,
                    once: bool = False) -> SnapshotResult | None:
    """The rows of a prepared snapshot, inside the caller's transaction."""
    path, loaded = prepared.path, prepared.loaded
    if once and conn.execute("SELECT 1 FROM snapshots WHERE path = ?", (str(path),)).fetchone():
        return None  # another process applied it while this one read it
    cursor = conn.execute("INSERT INTO snapshots (path, visible_at, pages, rejected_pages, entries)"
                          " VALUES (?, ?, ?, ?, ?)",
                          (str(path), now, loaded.pages, len(loaded.rejected), len(loaded.entries)))
    snapshot_id = cursor.lastrowid
    conn.executemany("INSERT INTO snapshot_errors VALUES (?, ?, ?)",
                     [(snapshot_id, file, reason) for file, reason in loaded.rejected + loaded.warnings])
    conn.executemany(
        "INSERT INTO entries (snapshot_id, page, position, entry_id, address, kind, visible_at, message_id,"
        " header_ts, received_ts, sender, recipients, subject, subject_norm, status, expired, message_class,"
        " resent_key, content, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(snapshot_id, r.page, r.position, r.entry_id, r.address, r.kind, now, r.message_id, r.header_ts,
          r.received_ts, r.sender, r.recipients, r.subject, r.subject_norm, r.status, int(r.expired),
          r.message_class, r.resent_key, r.content, r.fingerprint) for r in loaded.entries])
    return SnapshotResult(str(path), loaded.pages, len(loaded.entries), loaded.rejected, loaded.warnings)


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
