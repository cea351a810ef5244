"""Incremental indexing of mailbox exports into the store.

Finding files, parsing them (readers/) and writing them (this module) are separate
steps: MSG and EML files are parsed in worker processes while this process is the
one SQLite writer; a PST is streamed through a staging table so memory stays flat
however many messages it holds.

A source is re-read only when its size or mtime changed. Its records are merged by
set operations against its current locations, so unchanged locations keep their
`seen_at`, and a message that moved (same identity, same mailbox) keeps the time it
first appeared: the continuity engine must not mistake a move for a new arrival.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import folders, normalise
from .readers import eml, msg, pst
from .record import ReadError, Record, SourceResult
from .store import transaction

TREE_SUFFIXES = {".msg": "msg", ".eml": "eml", ".pst": "pst", ".ost": "pst"}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
BATCH_ROWS = 5000       # staged rows per merge (and per transaction)
PARALLEL_FROM = 200     # fewer small files than this are parsed in-process
CHUNK = 64              # files per worker task
POOL_STORE_BYTES = 64 << 20  # stores up to this size are parsed whole in a worker


@dataclass(frozen=True, slots=True)
class Task:
    path: Path      # absolute
    root: Path      # the PATH argument it came from
    kind: str       # pst | msg | eml
    locator: str    # for msg/eml: the path relative to the root
    folder: str     # for msg/eml: the mailbox folder
    role: str


@dataclass
class FileReport:
    path: str
    status: str               # ok | partial | error
    messages: int
    errors: list[ReadError] = field(default_factory=list)
    skipped: int = 0
    changed: bool = True      # False: unchanged since the last run, not re-read

    def as_json(self) -> dict:
        return {"path": self.path, "status": self.status, "messages": self.messages,
                "errors": [{"where": e.where, "reason": e.reason} for e in self.errors],
                "skipped": self.skipped, "changed": self.changed}


@dataclass
class Summary:
    files: int = 0
    unchanged: int = 0
    ok: int = 0
    partial: int = 0
    error: int = 0
    removed: int = 0
    messages: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict:
        return {"summary": dict(self.__dict__)}


Progress = Callable[[int], None]


def sniff(path: Path) -> str | None:
    """The kind of an explicitly named file: by suffix, else by its first bytes."""
    kind = TREE_SUFFIXES.get(path.suffix.lower())
    if kind:
        return kind
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    if head.startswith(b"!BDN"):
        return "pst"
    if head.startswith(OLE_MAGIC):
        return "msg"
    first = head.split(b"\n", 1)[0]
    if b":" in first and first.split(b":", 1)[0].strip().replace(b"-", b"").isalnum():
        return "eml"
    return None


def discover(paths: Iterable[Path]) -> tuple[list[Task], list[FileReport], list[Path]]:
    """Tasks for every export under `paths`, reports for paths that are not usable,
    and the folder roots whose vanished files must be dropped."""
    tasks: list[Task] = []
    problems: list[FileReport] = []
    roots: list[Path] = []
    for given in paths:
        path = Path(given).absolute()
        if path.is_dir():
            roots.append(path)
            for file in sorted(_walk(path)):
                kind = TREE_SUFFIXES[file.suffix.lower()]
                rel = file.relative_to(path)
                folder = rel.parent.as_posix() if rel.parent != Path(".") else ""
                tasks.append(Task(file, path, kind, rel.as_posix(), folder, folders.tree_role(folder)))
        elif path.is_file():
            kind = sniff(path)
            if kind is None:
                problems.append(_problem(path, "not a PST, OST, MSG or EML file"))
                continue
            folder = path.parent.name
            tasks.append(Task(path, path, kind, path.name, folder, folders.tree_role(folder)))
        else:
            problems.append(_problem(path, "no such file or folder"))
    return tasks, problems, roots


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if Path(name).suffix.lower() in TREE_SUFFIXES and not name.startswith("."):
                yield Path(dirpath) / name


def _problem(path: Path, reason: str) -> FileReport:
    return FileReport(str(path), "error", 0, [ReadError(str(path), reason)])


def read_file(task: Task) -> tuple[Task, SourceResult]:
    """Parse one MSG or EML file (runs in a worker process)."""
    result = SourceResult()
    reader = msg.read if task.kind == "msg" else eml.read
    try:
        result.records.append(reader(task.path, task.locator, task.folder, task.role))
    except (msg.MsgError, eml.EmlError) as exc:
        result.fatal = True
        result.errors.append(ReadError(str(task.path), str(exc)))
    except OSError as exc:
        result.fatal = True
        result.errors.append(ReadError(str(task.path), f"cannot read: {exc.strerror or exc}"))
    return task, result


def read_store(task: Task) -> tuple[Task, SourceResult]:
    """Parse a whole PST/OST (runs in a worker process; only for stores of bounded size)."""
    result = SourceResult()
    result.records = list(pst.read(task.path, result))
    return task, result


def _read_chunk(chunk: list[Task]) -> list[tuple[Task, SourceResult]]:
    return [read_file(task) for task in chunk]


def run(db: sqlite_utils.Database, paths: Iterable[Path], mailbox: str, *,
        now: float | None = None, progress: Progress | None = None,
        on_file: Callable[[FileReport], None] | None = None,
        on_tasks: Callable[[list[Task]], None] | None = None,
        workers: int | None = None) -> Summary:
    """Index `paths` for `mailbox`; `now` is the engine clock for `seen_at` (replay passes
    its virtual clock). `on_tasks` gets the files found before any is read (to size a
    progress bar); `on_file` gets each source's report as soon as it is written."""
    started = time.monotonic()
    now = time.time() if now is None else now
    mailbox = normalise.mailbox(mailbox)  # ValueError: the caller names no mailbox
    summary = Summary()
    writer = Writer(db, mailbox, now)

    def report(rep: FileReport) -> None:
        summary.files += 1
        if not rep.changed:
            summary.unchanged += 1
        setattr(summary, rep.status, getattr(summary, rep.status) + 1)
        summary.messages += rep.messages
        if on_file:
            on_file(rep)

    tasks, problems, roots = discover(paths)
    if on_tasks:
        on_tasks(tasks)
    for rep in problems:
        summary.removed += writer.drop_sources([rep.path])
        report(rep)

    changed = []
    known = writer.known_sources()
    for task in tasks:
        try:
            stat = task.path.stat()
        except OSError as exc:
            report(_problem(task.path, f"cannot read: {exc.strerror or exc}"))
            continue
        previous = known.get(str(task.path))
        if previous and previous["size"] == stat.st_size and previous["mtime_ns"] == stat.st_mtime_ns \
                and previous["mailbox"] == mailbox and previous["root"] == str(task.root):
            report(writer.previous_report(previous))
            if progress:
                progress(previous["messages"] if task.kind == "pst" else 1)
            continue
        changed.append((task, stat.st_size, stat.st_mtime_ns))

    present = {str(t.path) for t in tasks}
    for root in roots:
        gone = [path for path, row in known.items() if row["root"] == str(root) and path not in present]
        summary.removed += writer.drop_sources(gone)

    stores = [c for c in changed if c[0].kind == "pst"]
    files = [c for c in changed if c[0].kind != "pst"]
    for rep in writer.write_stores(stores, progress, workers):
        report(rep)
    for rep in writer.write_files(files, progress, workers):
        report(rep)
    writer.collect_garbage()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def count_messages(tasks: list[Task]) -> int:
    """Expected work for the progress bar, from cheap folder counts (as libratom does)."""
    return sum(pst.count_messages(t.path) if t.kind == "pst" else 1 for t in tasks)


class Writer:
    """The single writer: stages records, merges them per batch in one transaction."""

    def __init__(self, db: sqlite_utils.Database, mailbox: str, now: float):
        self.db = db
        self.conn = db.conn
        self.mailbox = mailbox
        self.now = now
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS walk (source_id INTEGER, identity TEXT, fingerprint TEXT,"
            " subject_norm TEXT, received INTEGER, locator TEXT, folder TEXT, role TEXT,"
            " message_id TEXT, mid_source TEXT, submit_ts INTEGER, subject TEXT, sender TEXT,"
            " recipients TEXT, resent_key TEXT, message_class TEXT, delivery_tag TEXT)")
        # Locations dropped in this run, so that a move keeps its first `seen_at`.
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone (message INTEGER, mailbox TEXT, seen_at REAL)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS temp.walk_key ON walk(source_id, locator)")

    def known_sources(self) -> dict[str, dict]:
        return {row["path"]: row for row in self.db.query("SELECT * FROM sources")}

    def previous_report(self, row: dict) -> FileReport:
        errors = [ReadError(e["where"], e["reason"]) for e in self.db.query(
            'SELECT "where", reason FROM source_errors WHERE source_id = ?', [row["id"]])]
        return FileReport(row["path"], row["status"], row["messages"], errors, row["skipped"], changed=False)

    def drop_sources(self, paths: list[str]) -> int:
        dropped = 0
        with transaction(self.conn):
            for path in paths:
                row = self.conn.execute("SELECT id FROM sources WHERE path = ?", (path,)).fetchone()
                if row is None:
                    continue
                self.conn.execute("INSERT INTO gone SELECT message, mailbox, seen_at FROM locations"
                                  " WHERE source_id = ?", row)
                self.conn.execute("DELETE FROM locations WHERE source_id = ?", row)
                self.conn.execute("DELETE FROM sources WHERE id = ?", row)
                dropped += 1
        return dropped

    def write_stores(self, stores: list[tuple[Task, int, int]], progress: Progress | None,
                     workers: int | None) -> Iterator[FileReport]:
        """Stores up to POOL_STORE_BYTES are parsed whole in worker processes, several at
        once; larger ones stream through this process, so memory stays flat."""
        small = [s for s in stores if s[1] <= POOL_STORE_BYTES]
        if len(small) < 2 or workers == 1:
            small = []
        pooled = {task.path for task, _, _ in small}
        for task, size, mtime_ns in stores:
            if task.path not in pooled:
                result = SourceResult()
                yield self.write_store(task, size, mtime_ns, pst.read(task.path, result), result, progress)
        if small:
            with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
                for (task, size, mtime_ns), (_, result) in zip(small, pool.map(read_store, [s[0] for s in small]),
                                                               strict=True):
                    yield self.write_store(task, size, mtime_ns, result.records, result, progress)

    def write_store(self, task: Task, size: int, mtime_ns: int, records: Iterable[Record],
                    result: SourceResult, progress: Progress | None) -> FileReport:
        """Pass one PST/OST's records through the staging table; merge once at the end so
        that a store's update is one transaction (a crash leaves the previous state whole)."""
        count = 0
        with transaction(self.conn):  # the source row too: nothing of a store commits alone
            source_id = self._source_id(task)
            self.conn.execute("DELETE FROM walk")
            batch: list[tuple] = []
            for record in records:
                count += 1
                batch.append(self._staged(source_id, record))
                if len(batch) >= BATCH_ROWS:
                    self._stage(batch)
                    if progress:
                        progress(len(batch))
                    batch = []
            self._stage(batch)
            if progress and batch:
                progress(len(batch))
            self._merge([source_id])
            self._finish_source(source_id, task, size, mtime_ns, result)
        return FileReport(str(task.path), result.status, count, result.errors, result.skipped)

    def write_files(self, files: list[tuple[Task, int, int]], progress: Progress | None,
                    workers: int | None) -> Iterator[FileReport]:
        if not files:
            return
        stats = {task.path: (size, mtime) for task, size, mtime in files}
        tasks = [task for task, _, _ in files]
        chunks = [tasks[i:i + CHUNK] for i in range(0, len(tasks), CHUNK)]
        if len(tasks) < PARALLEL_FROM or workers == 1:
            results: Iterable[list[tuple[Task, SourceResult]]] = map(_read_chunk, chunks)
            yield from self._write_results(results, stats, progress)
        else:
            with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
                yield from self._write_results(pool.map(_read_chunk, chunks), stats, progress)

    def _write_results(self, chunks, stats, progress) -> Iterator[FileReport]:
        pending: list[tuple[Task, SourceResult]] = []
        for chunk in chunks:
            pending.extend(chunk)
            if len(pending) >= BATCH_ROWS // 10:
                yield from self._write_batch(pending, stats)
                if progress:
                    progress(len(pending))
                pending = []
        if pending:
            yield from self._write_batch(pending, stats)
            if progress:
                progress(len(pending))

    def _write_batch(self, results: list[tuple[Task, SourceResult]], stats) -> list[FileReport]:
        reports = []
        with transaction(self.conn):
            self.conn.execute("DELETE FROM walk")
            ids = [self._source_id(task) for task, _ in results]
            self._stage([self._staged(source_id, record)
                         for source_id, (_, result) in zip(ids, results, strict=True) for record in result.records])
            self._merge(ids)
            for source_id, (task, result) in zip(ids, results, strict=True):
                size, mtime_ns = stats[task.path]
                self._finish_source(source_id, task, size, mtime_ns, result)
                reports.append(FileReport(str(task.path), result.status, len(result.records), result.errors))
        return reports

    def _source_id(self, task: Task) -> int:
        row = self.conn.execute("SELECT id FROM sources WHERE path = ?", (str(task.path),)).fetchone()
        if row:
            return row[0]
        cursor = self.conn.execute(
            "INSERT INTO sources (path, root, kind, mailbox, status, indexed_at) VALUES (?, ?, ?, ?, 'ok', ?)",
            (str(task.path), str(task.root), task.kind, self.mailbox, self.now))
        return cursor.lastrowid

    def _staged(self, source_id: int, record: Record) -> tuple:
        identity = record.identity or f"nomid:{source_id}:{record.locator}"
        return (source_id, identity, normalise.fingerprint(identity), normalise.subject(record.subject),
                int(folders.is_received(record.role))) + record.row()

    def _stage(self, rows: list[tuple]) -> None:
        if rows:
            self.conn.executemany(f"INSERT INTO walk VALUES ({', '.join('?' * 17)})", rows)

    def _merge(self, source_ids: list[int]) -> None:
        """Make the locations of `source_ids` equal to what is staged in `walk`."""
        marks = ", ".join("?" * len(source_ids))
        stale = (f"SELECT l.id FROM locations l JOIN messages m ON m.id = l.message"
                 f" WHERE l.source_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM walk w"
                 f" WHERE w.source_id = l.source_id AND w.locator = l.locator AND w.identity = m.identity)")
        self.conn.execute(f"INSERT INTO gone SELECT message, mailbox, seen_at FROM locations"
                          f" WHERE id IN ({stale})", source_ids)
        self.conn.execute(f"DELETE FROM locations WHERE id IN ({stale})", source_ids)
        self.conn.execute(
            "INSERT OR IGNORE INTO messages (identity, fingerprint, message_id, submit_ts, subject,"
            " subject_norm, sender, recipients, resent_key, message_class)"
            " SELECT identity, fingerprint, message_id, submit_ts, subject, subject_norm, sender,"
            " recipients, resent_key, message_class FROM walk")
        self.conn.execute(
            "INSERT INTO locations (message, source_id, mailbox, locator, folder, role, received,"
            " mid_source, delivery_tag, seen_at)"
            " SELECT m.id, w.source_id, ?, w.locator, w.folder, w.role, w.received, w.mid_source,"
            " w.delivery_tag, COALESCE((SELECT min(g.seen_at) FROM gone g"
            "   WHERE g.message = m.id AND g.mailbox = ?), ?)"
            " FROM walk w JOIN messages m ON m.identity = w.identity"
            " WHERE NOT EXISTS (SELECT 1 FROM locations l WHERE l.source_id = w.source_id"
            "   AND l.locator = w.locator)",
            (self.mailbox, self.mailbox, self.now))
        self.conn.execute(
            "UPDATE locations SET folder = w.folder, role = w.role, received = w.received,"
            " mid_source = w.mid_source, delivery_tag = w.delivery_tag"
            " FROM walk w WHERE locations.source_id = w.source_id AND locations.locator = w.locator"
            " AND (locations.folder IS NOT w.folder OR locations.role IS NOT w.role"
            "   OR locations.delivery_tag IS NOT w.delivery_tag)")

    def _finish_source(self, source_id: int, task: Task, size: int, mtime_ns: int,
                       result: SourceResult) -> None:
        self.conn.execute("DELETE FROM source_errors WHERE source_id = ?", (source_id,))
        self.conn.executemany("INSERT INTO source_errors VALUES (?, ?, ?, ?)",
                              [(source_id, str(task.path), e.where, e.reason) for e in result.errors])
        self.conn.execute(
            "UPDATE sources SET root = ?, kind = ?, mailbox = ?, size = ?, mtime_ns = ?, status = ?,"
            " messages = (SELECT count(*) FROM walk WHERE source_id = ?), skipped = ?, indexed_at = ?"
            " WHERE id = ?",
            (str(task.root), task.kind, self.mailbox, size, mtime_ns, result.status, source_id,
             result.skipped, self.now, source_id))

    def collect_garbage(self) -> None:
        """Messages left without any location are gone from every export."""
        with transaction(self.conn):
            self.conn.execute("DELETE FROM messages WHERE NOT EXISTS"
                              " (SELECT 1 FROM locations l WHERE l.message = messages.id)")
            self.conn.execute("DELETE FROM gone")
