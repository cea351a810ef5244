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

import itertools
import os
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import coverage, folders, normalise
from .readers import eml, msg, pst, pst_items, pst_nodes
from .record import ReadError, Record, SourceResult
from .store import in_parts, transaction
from .workers import pool as worker_pool

TREE_SUFFIXES = {".msg": "msg", ".eml": "eml", ".pst": "pst", ".ost": "pst"}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
BATCH_ROWS = 5000       # staged rows per merge (and per transaction)
FILE_BATCH = 2000       # MSG/EML files per transaction: each commit is an fsync (synchronous=FULL)
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
    name: str = field(init=False)       # text(path), asked for several times per file
    root_name: str = field(init=False)  # text(root)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", text(self.path))
        object.__setattr__(self, "root_name", text(self.root))


@dataclass
class FileReport:
    path: str
    status: str               # ok | partial | error
    messages: int
    errors: list[ReadError] = field(default_factory=list)
    skipped: int = 0
    changed: bool = True      # False: unchanged since the last run, not re-read
    stale: str | None = None  # C19: why its locations are those of an earlier read
    read: int = 0             # items parsed this run (a changed store re-reads only what changed)
    reader: str | None = None  # a store's reader this run, and why that one

    def as_json(self) -> dict:
        return {"path": self.path, "status": self.status, "messages": self.messages,
                "errors": [{"where": e.where, "reason": e.reason} for e in self.errors],
                "skipped": self.skipped, "changed": self.changed, "stale": self.stale, "read": self.read,
                "reader": self.reader}


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


def text(path: Path | str) -> str:
    """A path as text SQLite can hold: bytes that are not UTF-8 (a name written by
    another system) are shown as backslash escapes instead of failing the insert."""
    name = os.fspath(path)
    if name.isascii():  # nearly every path, and the same text: called for each file several times
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class Export:
    """A PATH given to `index`, and whether it could be read at all (C19)."""
    path: Path
    problem: str | None = None   # None: found and walked (a tree) or to be read (a file)
    task: Task | None = None     # a single file's task
    tree: str | None = None      # "maildir" or "tree": a folder whose files are walked
    lost: bool = False           # gone, and its locations with it: the index is no longer whole


def discover(paths: Iterable[Path]) -> list[Export]:
    """Each export under `paths`: a single file with its task, a tree to walk, or its
    problem. Only regular files are opened: a FIFO, socket or device in a tree is passed over."""
    exports: list[Export] = []
    for given in paths:
        path = Path(given).absolute()
        export = Export(path)
        exports.append(export)
        if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
            export.tree = "maildir"
        elif path.is_dir():
            export.tree = "tree"
        elif path.is_file():
            kind = sniff(path)
            if kind is None:
                export.problem = "not a PST, OST, MSG or EML file"
                continue
            folder = text(path.parent.name)
            export.task = Task(path, path, kind, text(path.name), folder, folders.tree_role(folder))
        elif path.exists():
            export.problem = "not a regular file or folder"
        else:
            export.problem = "no such file or folder"
    return exports


def walk_tree(export: Export) -> Iterator[tuple[str, str, str, str]]:
    """(path, kind, locator, folder) of every message file in a tree export, unsorted."""
    root = export.path
    base = len(os.path.join(root, ""))
    if export.tree == "maildir":
        for file, folder in _walk_maildir(root):
            yield file, "eml", text(file[base:]), folder
        return
    for file in _walk(root):
        rel = file[base:]
        parent = os.path.dirname(rel)
        yield file, TREE_SUFFIXES[os.path.splitext(file)[1].lower()], text(rel.replace(os.sep, "/")), \
            text(parent.replace(os.sep, "/"))


def _walk(root: Path) -> Iterator[str]:
    stack: list[str | Path] = [root]
    while stack:
        for entry in _entries(stack.pop()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and os.path.splitext(entry.name)[1].lower() in TREE_SUFFIXES:
                yield entry.path


def _walk_maildir(root: Path) -> Iterator[tuple[str, str]]:
    """Maildir++ (as mutt, aerc and notmuch keep it): the root is the Inbox, `.Sent Items`
    and `.Projects.Q4` are folders; messages are the regular files in `new/` and `cur/`."""
    boxes = [(root, "Inbox")]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False) and (Path(entry.path) / "cur").is_dir():
            boxes.append((Path(entry.path), text(entry.name[1:].replace(".", "/"))))
    for box, folder in boxes:
        for sub in ("new", "cur"):
            for entry in _entries(box / sub):
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    yield entry.path, folder


def _entries(folder: str | Path) -> Iterator[os.DirEntry]:
    """A folder's entries as the system lists them, never all at once (a Maildir's cur/
    holds hundreds of thousands); an unreadable folder, or one that fails while it is
    listed, has no more entries (the rest of the tree is still seen)."""
    try:
        with os.scandir(folder) as listing:
            yield from listing
    except OSError:
        return


def _problem(path: Path, reason: str) -> FileReport:
    return FileReport(text(path), "error", 0, [ReadError(text(path), reason)])


def read_file(kind: str, path: str, locator: str, folder: str, role: str) -> SourceResult:
    """Parse one MSG or EML file (runs in a worker process). Whatever a file does to
    its reader, the failure is this file's alone (N3)."""
    result = SourceResult()
    try:
        if kind == "msg":
            result.records.append(msg.read(path, locator, folder, role))
        else:  # a class that cannot be read is IPM.Note and a warning: the message is still indexed
            result.records.append(eml.read(path, locator, folder, role,
                                           lambda why: result.errors.append(ReadError(text(path), why))))
    except (msg.MsgError, eml.EmlError) as exc:
        result.fatal = True
        result.errors.append(ReadError(text(path), str(exc)))
    except OSError as exc:
        result.fatal = True
        result.errors.append(ReadError(text(path), f"cannot read: {exc.strerror or exc}"))
    except RecursionError:
        result.fatal = True
        result.errors.append(ReadError(text(path), "MIME parts nested too deeply to read"))
    except Exception as exc:  # a reader library's own bug on hostile bytes
        result.fatal = True
        result.errors.append(ReadError(text(path), f"unreadable ({type(exc).__name__})"))
    return result


def read_store(task: Task) -> tuple[Task, SourceResult]:
    """Parse a whole PST/OST (runs in a worker process; only for stores of bounded size)."""
    result = SourceResult()
    result.records = list(pst.read(task.path, result))
    return task, result


def _nodes(path: Path) -> pst_nodes.Nodes | None:
    """A store's node B-tree, or None when it cannot serve an incremental re-read."""
    try:
        return pst_nodes.read(path)
    except pst_items.UNREADABLE:
        return None


FileJob = tuple[str, str, str, str, str]  # kind, path, locator, folder, role: what a worker needs of a Task


def _job(task: Task) -> FileJob:
    return task.kind, os.fspath(task.path), task.locator, task.folder, task.role


def _read_chunk(chunk: list[FileJob]) -> list[SourceResult | tuple]:
    """Each file's result, a clean read as its record's row: pickling a Task (two Paths)
    and a result per file cost a Maildir's index more than parsing its small messages."""
    results: list[SourceResult | tuple] = []
    for job in chunk:
        result = read_file(*job)
        clean = not result.errors and not result.fatal and len(result.records) == 1
        results.append(result.records[0].row() if clean else result)
    return results


def _result(sent: SourceResult | tuple) -> SourceResult:
    return sent if isinstance(sent, SourceResult) else SourceResult(records=[Record(*sent)])


def run(db: sqlite_utils.Database, paths: Iterable[Path], mailbox: str, *,
        now: float | None = None, progress: Progress | None = None,
        on_file: Callable[[FileReport], None] | None = None,
        on_tasks: Callable[[Iterable[Task]], None] | None = None,
        workers: int | None = None) -> Summary:
    """Index `paths` for `mailbox`; `now` is the engine clock for `seen_at` (replay passes
    its virtual clock). `on_tasks` gets the files found before any is read, to iterate
    once (to size a progress bar); `on_file` gets each source's report as soon as it is written.

    C19: a source that fails to read keeps the locations of its last good read (marked
    stale); one that vanishes keeps them while an event covers its mailbox."""
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

    exports = discover(paths)
    owned = writer.export_owners([e.path for e in exports])
    refused = {e.path for e in exports if owned.get(text(e.path), mailbox) != mailbox}
    writer.declare([e.path for e in exports if e.path not in refused])  # C19: before anything is read
    for export in exports:
        if export.path in refused:
            report(_problem(export.path, f"already indexed for mailbox {owned[text(export.path)]}; "
                                         "one export belongs to one mailbox"))
        elif export.problem:
            dropped = writer.vanish(writer.sources_under(export.path))
            summary.removed += dropped
            export.lost = dropped > 0
            report(_problem(export.path, export.problem))
    live = [e for e in exports if e.path not in refused and e.problem is None]
    # A tree's files go to a temporary table, not a list: a Maildir of a million messages
    # would hold a million tasks (issue 25). Sources gone from it are dropped before any
    # file is read, so that a moved message finds its old location (and first-seen time).
    writer.record_walk(live)
    for number, export in enumerate(live):
        if export.tree:
            summary.removed += writer.vanish(writer.unwalked(export.path, number))
    if on_tasks:
        on_tasks(writer.tasks(live))

    stores: list[tuple[Task, int, int]] = []

    def changed_files() -> Iterator[tuple[Task, int, int]]:
        """Files that changed since their last read, as they are found; unchanged ones are
        reported, changed stores kept for after (few, each read on its own)."""
        for chunk in _batched(writer.tasks(live), FILE_BATCH):
            known = writer.sources_by_path([task.name for task in chunk])
            for task in chunk:
                try:
                    stat = os.stat(task.path)
                except OSError as exc:
                    report(_problem(task.path, f"cannot read: {exc.strerror or exc}"))
                    continue
                previous = known.get(task.name)
                if previous and previous["size"] == stat.st_size and previous["mtime_ns"] == stat.st_mtime_ns \
                        and previous["mailbox"] == mailbox and previous["root"] == task.root_name \
                        and previous["missing_since"] is None:  # back after going missing: read, so it counts again
                    report(writer.previous_report(previous))
                    if progress:
                        progress(previous["messages"] if task.kind == "pst" else 1)
                elif task.kind == "pst":
                    stores.append((task, stat.st_size, stat.st_mtime_ns))
                else:
                    yield task, stat.st_size, stat.st_mtime_ns

    for rep in writer.write_files(changed_files(), progress, workers):
        report(rep)
    for rep in writer.write_stores(stores, progress, workers):
        report(rep)
    writer.record_exports([e for e in exports if e.path not in refused])
    writer.settle_moves()
    collect_garbage(db.conn)
    db.conn.execute("DELETE FROM temp.gone")  # moves are matched within one run
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def declare_no_local_mail(db: sqlite_utils.Database, mailbox: str, now: float) -> None:
    """C19: `mailbox` has no local mail at all; with no export declared, its index is whole."""
    with transaction(db.conn) as conn:
        coverage.declare_mailbox(conn, normalise.mailbox(mailbox), True, now)


def forget(db: sqlite_utils.Database, path: Path) -> int:
    """An export gone for good: its sources and locations are dropped and it no longer
    holds its mailbox waiting. Returns the number of sources dropped."""
    name = text(Path(path).absolute())
    with transaction(db.conn) as conn:
        if conn.execute("SELECT 1 FROM exports WHERE path = ?", (name,)).fetchone() is None:
            raise ValueError(f"{name}: not a known export (see `syncengine status`)")
        ids = [r[0] for r in conn.execute("SELECT id FROM sources WHERE root = ?", (name,))]
        conn.executemany("DELETE FROM locations WHERE source_id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM sources WHERE id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM store_items WHERE source_id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM store_folders WHERE source_id = ?", [(i,) for i in ids])
        coverage.forget(conn, name)
    collect_garbage(db.conn)
    return len(ids)


def _in_flight(pool, chunks: Iterator[list], window: int) -> Iterator[tuple[list, list]]:
    """(chunk, its results) in order, parsed by `pool` with at most `window` chunks
    submitted ahead (Executor.map would submit every chunk of the tree at once)."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.submit(_read_chunk, [_job(task) for task, _, _ in chunk])))
        if len(pending) >= window:
            chunk, future = pending.popleft()
            yield chunk, future.result()
    while pending:
        chunk, future = pending.popleft()
        yield chunk, future.result()


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def count_messages(tasks: Iterable[Task]) -> int:
    """Expected work for the progress bar, from cheap folder counts (as libratom does)."""
    return sum(pst.count_messages(t.path) if t.kind == "pst" else 1 for t in tasks)


class _StoreChanges:
    """What changed in a store since its last read: its nodes, block by block in node-id
    order, merged against the versions the index holds (read in the same order), so
    neither side is ever held whole (issue 25: a dict of a million versions was 100 MB).
    `nids`/`versions`: new or changed messages; `gone`: messages no longer in a mailbox
    folder; `present`: messages that are."""

    def __init__(self, conn, source_id: int):
        self._known = conn.execute("SELECT nid, version FROM store_items WHERE source_id = ? ORDER BY nid",
                                   (source_id,))
        self._next = self._known.fetchone()
        self.nids, self.versions, self.gone = array("I"), array("q"), array("I")
        self.present = 0

    def _skip_to(self, nid: int) -> tuple[int, int] | None:
        """The indexed version of `nid` if any; nids indexed before it are gone."""
        while self._next is not None and self._next[0] < nid:
            self.gone.append(self._next[0])
            self._next = self._known.fetchone()
        if self._next is not None and self._next[0] == nid:
            found, self._next = self._next, self._known.fetchone()
            return found
        return None

    def compare(self, block: pst_nodes.Block, folders: dict, renamed: set[int]) -> list[int]:
        """The indexes in `block` of messages to read again."""
        changed = []
        for index, (nid, parent, version) in enumerate(zip(block.nids, block.parents, block.versions)):
            known = self._skip_to(nid)
            if parent not in folders:
                if known is not None:
                    self.gone.append(nid)
                continue
            self.present += 1
            if known is None or known[1] != version or parent in renamed:
                changed.append(index)
                self.nids.append(nid)
                self.versions.append(version)
        return changed

    def finish(self) -> None:
        self._skip_to(1 << 32)

    def close(self) -> None:
        self._known.close()


class Writer:
    """The single writer: stages records, merges them per batch in one transaction.

    Staging goes to a TEMP table outside any transaction on the store, so parsing a
    large PST never holds the store's write lock; only the merge does (C19, polls and
    acks are not starved)."""

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
        # Locations dropped in this run, so that a move keeps its first `seen_at` and its baseline.
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone (message INTEGER, mailbox TEXT, seen_at REAL,"
                          " baseline INTEGER)")
        # Every location inserted looks up its message here: unindexed, re-reading 70,000
        # messages of a store took six minutes instead of seconds.
        self.conn.execute("CREATE INDEX IF NOT EXISTS temp.gone_message ON gone(message, mailbox)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS temp.walk_key ON walk(source_id, locator)")
        # The files of the tree exports found by this run (record_walk), with their text path.
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS walked (name TEXT, path BLOB, export INTEGER,"
                          " kind TEXT, locator TEXT, folder TEXT)")

    def sources_by_path(self, paths: list[str]) -> dict[str, dict]:
        return {row["path"]: row for part, marks in in_parts(paths)
                for row in self.db.query(f"SELECT * FROM sources WHERE path IN ({marks})", part)}

    def sources_under(self, export: Path) -> list[str]:
        """The sources found under `export` by earlier runs (itself, for a file)."""
        return [row[0] for row in self.conn.execute("SELECT path FROM sources WHERE root = ?", (text(export),))]

    def record_walk(self, exports: list[Export]) -> None:
        """Every file of the tree exports, into temp.walked (paths as bytes: a name that is
        not UTF-8 is kept as the file system gave it)."""
        self.conn.execute("DROP INDEX IF EXISTS temp.walked_name")
        self.conn.execute("DELETE FROM walked")
        self.conn.execute("BEGIN")  # TEMP only: no lock on the store
        try:
            for number, export in enumerate(exports):
                if export.tree:
                    for rows in _batched(walk_tree(export), BATCH_ROWS):
                        self.conn.executemany("INSERT INTO walked VALUES (?, ?, ?, ?, ?, ?)",
                                              [(text(path), os.fsencode(path), number, kind, locator, folder)
                                               for path, kind, locator, folder in rows])
            # indexed once filled: inserting a million names in listing order into an index
            # was a random walk through a B-tree larger than its cache
            self.conn.execute("CREATE INDEX temp.walked_name ON walked(name)")
        finally:
            self.conn.execute("COMMIT")

    def unwalked(self, export: Path, number: int) -> list[str]:
        """Sources under a tree export that the walk did not find: gone."""
        return [row[0] for row in self.conn.execute(
            "SELECT s.path FROM sources s WHERE s.root = ? AND NOT EXISTS (SELECT 1 FROM walked w"
            " WHERE w.export = ? AND w.name = s.path)", (text(export), number))]

    def tasks(self, exports: list[Export]) -> Iterator[Task]:
        """The tasks of `exports`: single files, then the walked trees' files in path order,
        read back a page at a time."""
        for export in exports:
            if export.task is not None:
                yield export.task
        after, roles = ("", 0), {}
        while True:
            rows = self.conn.execute("SELECT name, rowid, path, export, kind, locator, folder FROM walked"
                                     " WHERE (name, rowid) > (?, ?) ORDER BY name, rowid LIMIT ?",
                                     (*after, FILE_BATCH)).fetchall()
            if not rows:
                return
            for _, _, path, number, kind, locator, folder in rows:
                role = roles.get(folder) or roles.setdefault(folder, folders.tree_role(folder))
                yield Task(Path(os.fsdecode(path)), exports[number].path, kind, locator, folder, role)
            after = rows[-1][:2]

    def export_owners(self, paths: list[Path]) -> dict[str, str]:
        """The mailbox each already known export or source was indexed for."""
        owners = {}
        for path in map(text, paths):
            row = self.conn.execute("SELECT mailbox FROM exports WHERE path = ? UNION ALL"
                                    " SELECT mailbox FROM sources WHERE path = ? OR root = ? LIMIT 1",
                                    (path, path, path)).fetchone()
            if row:
                owners[path] = row[0]
        return owners

    def previous_report(self, row: dict) -> FileReport:
        errors = [ReadError(e["where"], e["reason"]) for e in self.db.query(
            'SELECT "where", reason FROM source_errors WHERE source_id = ?', [row["id"]])]
        return FileReport(row["path"], row["status"], row["messages"], errors, row["skipped"], changed=False,
                          stale=row["stale"])

    def _covered(self) -> bool:
        """Is this mailbox (or the primary it is an alias of) in an open or ending event?"""
        from .engine import directory_at  # the index sits below the engine; only this needs it
        addresses = sorted(directory_at(self.conn, self.now).addresses(self.mailbox) | {self.mailbox})
        marks = ", ".join("?" * len(addresses))
        return self.conn.execute(
            f"SELECT 1 FROM events e JOIN event_mailboxes m ON m.event = e.id WHERE e.phase != 'closed'"
            f" AND m.mailbox IN ({marks}) LIMIT 1", addresses).fetchone() is not None

    def vanish(self, paths: list[str]) -> int:
        """Sources that are gone. While an event covers the mailbox their locations stay,
        stale (C19), except those continuity purged: a purged file is gone on our word,
        and a copy delivered again under its name is a new arrival (C12). Otherwise
        they are dropped. Returns the number dropped."""
        if not paths:
            return 0
        keep = self._covered()
        dropped = 0
        with transaction(self.conn):
            for path in paths:
                row = self.conn.execute("SELECT id FROM sources WHERE path = ?", (path,)).fetchone()
                if row is None:
                    continue
                purged = "SELECT location FROM purged" if keep else "SELECT id FROM locations"
                self.conn.execute(f"INSERT INTO gone SELECT message, mailbox, seen_at, baseline FROM locations"
                                  f" WHERE source_id = ? AND id IN ({purged})", row)
                self.conn.execute(f"DELETE FROM locations WHERE source_id = ? AND id IN ({purged})", row)
                if keep:
                    self.conn.execute("UPDATE sources SET stale = 'missing: kept while an event covers its mailbox',"
                                      " missing_since = coalesce(missing_since, ?) WHERE id = ?", (self.now, row[0]))
                else:
                    self.conn.execute("DELETE FROM sources WHERE id = ?", row)
                    self.conn.execute("DELETE FROM store_items WHERE source_id = ?", row)
                    self.conn.execute("DELETE FROM store_folders WHERE source_id = ?", row)
                    dropped += 1
        return dropped

    def settle_moves(self) -> None:
        """A message file kept while an event covers the mailbox (vanish) whose every
        message is now read from another file of the mailbox was moved, not lost (the
        apply client filing a sent item, the user dragging mail): nothing needs keeping,
        and `status` must not call it stale. Its locations already lent their seen_at and
        baseline to the new ones (merge). A PST/OST is never settled so: one that is
        missing is most likely held open, and comes back whole."""
        with transaction(self.conn):
            moved = [r[0] for r in self.conn.execute(
                "SELECT s.id FROM sources s WHERE s.mailbox = ? AND s.missing_since IS NOT NULL AND s.kind != 'pst'"
                " AND NOT EXISTS (SELECT 1 FROM locations l WHERE l.source_id = s.id AND NOT EXISTS ("
                "   SELECT 1 FROM locations o JOIN sources p ON p.id = o.source_id"
                "   WHERE o.message = l.message AND o.mailbox = l.mailbox AND p.missing_since IS NULL))",
                (self.mailbox,))]
            for source_id in moved:
                for table, column in (("locations", "source_id"), ("store_items", "source_id"),
                                      ("store_folders", "source_id"), ("sources", "id")):
                    self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (source_id,))

    def declare(self, paths: list[Path]) -> None:
        """C19: the exports belong to this mailbox before their first read, so a decision
        taken while they are read waits for them (and a kill -9 mid-read leaves them so)."""
        with transaction(self.conn):
            coverage.declare_exports(self.conn, self.mailbox, [text(p) for p in paths], self.now)

    def record_exports(self, exports: list[Export]) -> None:
        """An export is good once it has read: a tree that could be walked, a file whose
        source read (in whole or in part)."""
        with transaction(self.conn):
            for export in exports:
                problem = export.problem
                if problem is None and export.task is not None:
                    row = self.conn.execute("SELECT status, stale FROM sources WHERE path = ?",
                                            (text(export.path),)).fetchone()
                    problem = None if row and row[0] != "error" else "could not be read"
                coverage.record_read(self.conn, self.mailbox, text(export.path), problem, export.lost, self.now)

    def write_stores(self, stores: list[tuple[Task, int, int]], progress: Progress | None,
                     workers: int | None) -> Iterator[FileReport]:
        """A store read whole before is re-read item by item where it changed (pst_nodes);
        others are read whole: up to POOL_STORE_BYTES in worker processes, several at
        once, larger ones streamed through this process so memory stays flat."""
        whole = []
        for task, size, mtime_ns in stores:
            report = self.reindex_store(task, size, mtime_ns, progress)
            if report is None:
                whole.append((task, size, mtime_ns))
            else:
                yield report
        small = [s for s in whole if s[1] <= POOL_STORE_BYTES]
        if len(small) < 2 or workers == 1:
            small = []
        pooled = {task.path for task, _, _ in small}
        for task, size, mtime_ns in whole:
            if task.path not in pooled:
                nodes = _nodes(task.path)  # before the parse: a change while it runs is seen next time
                try:
                    result = SourceResult()
                    records = pst.read(task.path, result, nodes, workers=workers or os.cpu_count() or 1)
                    yield self.write_store(task, size, mtime_ns, records, result, progress, nodes)
                finally:
                    if nodes is not None:
                        nodes.close()
        if small:
            nodes = {task.path: _nodes(task.path) for task, _, _ in small}
            try:
                with worker_pool(workers or os.cpu_count() or 2) as pool:
                    for (task, size, mtime_ns), (_, result) in zip(small, pool.map(read_store, [s[0] for s in small]),
                                                                   strict=True):
                        yield self.write_store(task, size, mtime_ns, result.records, result, progress,
                                               nodes[task.path])
            finally:
                for found in nodes.values():
                    if found is not None:
                        found.close()

    def reindex_store(self, task: Task, size: int, mtime_ns: int, progress: Progress | None) -> FileReport | None:
        """Re-read only the messages of a store that changed since its last whole read:
        new ones and those whose node (data, subnodes, parent) or folder changed; drop
        those gone. None when the store must be read whole instead (never read whole
        cleanly, stale, a format pst_nodes does not read, or any item fails: a full
        read then reports it as C19 says)."""
        source = self.conn.execute("SELECT id, messages FROM sources WHERE path = ? AND kind = 'pst' AND status = 'ok'"
                                   " AND stale IS NULL AND good_at IS NOT NULL", (task.name,)).fetchone()
        if source is None:
            return None
        source_id, indexed = source
        if self.conn.execute("SELECT count(*) FROM store_items WHERE source_id = ?", (source_id,)).fetchone()[0] \
                != indexed:  # versions that do not cover the index cannot say what is gone
            return None
        known_folders = {nid: (path, role) for nid, path, role in self.conn.execute(
            "SELECT nid, path, role FROM store_folders WHERE source_id = ?", (source_id,))}
        if not known_folders:
            return None
        nodes = _nodes(task.path)
        if nodes is None:
            return None
        with nodes:
            try:
                direct = pst.Direct(task.path, nodes.others, nodes.counts)
            except pst_items.UNREADABLE:
                return None
            try:
                if direct.errors:
                    return None
                folders = direct.folders
                renamed = {nid for nid, place in folders.items() if known_folders.get(nid) != place}
                self.conn.execute("DELETE FROM walk")
                result = SourceResult(skipped=direct.skipped)
                changes = _StoreChanges(self.conn, source_id)
                try:
                    for block in nodes.blocks():
                        changed = changes.compare(block, folders, renamed)
                        self._stage([self._staged(source_id, record)
                                     for record in direct.records(block, changed, result)])
                        if result.errors:
                            return None
                    changes.finish()
                finally:
                    changes.close()
            finally:
                direct.close()
        with transaction(self.conn):
            self._drop_locators(source_id, [str(nid) for nid in changes.gone] + [str(nid) for nid in changes.nids])
            self._insert_staged()
            self.conn.executemany("DELETE FROM store_items WHERE source_id = ? AND nid = ?",
                                  [(source_id, nid) for nid in changes.gone])
            self.conn.executemany("INSERT OR REPLACE INTO store_items VALUES (?, ?, ?)",
                                  [(source_id, nid, version) for nid, version in zip(changes.nids, changes.versions)])
            self._record_folders(source_id, folders)
            self._finish_source(source_id, task, size, mtime_ns, result, None, messages=changes.present)
        if progress:
            progress(changes.present)
        read = len(changes.nids)
        return FileReport(task.name, result.status, changes.present, [], result.skipped, read=read,
                          reader=f"node id, incremental: {read} new or changed item(s) read")

    def _record_versions(self, source_id: int, path: Path, nodes: pst_nodes.Nodes | None,
                         result: SourceResult) -> None:
        """After a whole read: every mailbox message's version, so the next read of this
        store can be incremental. Nothing when the read was not whole and clean."""
        self.conn.execute("DELETE FROM store_items WHERE source_id = ?", (source_id,))
        self.conn.execute("DELETE FROM store_folders WHERE source_id = ?", (source_id,))
        if nodes is None or result.errors or result.fatal:
            return
        try:
            direct = pst.Direct(path, nodes.others, nodes.counts)
        except pst_items.UNREADABLE:
            return
        direct.close()
        if direct.errors:
            return
        folders = direct.folders
        for block in nodes.blocks():
            self.conn.executemany("INSERT INTO store_items VALUES (?, ?, ?)",
                                  ((source_id, nid, version) for nid, parent, version
                                   in zip(block.nids, block.parents, block.versions) if parent in folders))
        self._record_folders(source_id, folders)

    def _record_folders(self, source_id: int, folders: dict[int, tuple[str, str]]) -> None:
        self.conn.execute("DELETE FROM store_folders WHERE source_id = ?", (source_id,))
        self.conn.executemany("INSERT INTO store_folders VALUES (?, ?, ?, ?)",
                              [(source_id, nid, path, role) for nid, (path, role) in folders.items()])

    def write_store(self, task: Task, size: int, mtime_ns: int, records: Iterable[Record],
                    result: SourceResult, progress: Progress | None,
                    nodes: pst_nodes.Nodes | None = None) -> FileReport:
        """Stage one PST/OST's records (no write lock held while it is parsed), then merge
        them in one transaction with the source row: a crash leaves the previous state."""
        count = 0
        source_id = self._known_id(task)
        self.conn.execute("BEGIN")  # writes only TEMP tables: the store stays free for other writers
        try:
            self.conn.execute("DELETE FROM walk")
            batch: list[tuple] = []
            for record in records:
                count += 1
                batch.append(self._staged(source_id if source_id is not None else 0, record))
                if len(batch) >= BATCH_ROWS:
                    self._stage(batch)
                    if progress:
                        progress(len(batch))
                    batch = []
            self._stage(batch)
            if progress and batch:
                progress(len(batch))
        finally:
            self.conn.execute("COMMIT")
        with transaction(self.conn):
            if source_id is None:
                source_id = self._source_id(task)
                # Staged before the source row existed: name the placeholder's items by it now.
                self.conn.execute("UPDATE walk SET identity = 'nomid:' || ? || ':' || locator,"
                                  " fingerprint = fingerprint('nomid:' || ? || ':' || locator)"
                                  " WHERE source_id = 0 AND identity LIKE 'nomid:0:%'", (source_id, source_id))
                self.conn.execute("UPDATE walk SET source_id = ? WHERE source_id = 0", (source_id,))
            stale = self._merge_or_keep(source_id, result)
            self._finish_source(source_id, task, size, mtime_ns, result, stale)
            self._record_versions(source_id, task.path, nodes if stale is None else None, result)
        return FileReport(task.name, result.status, count, result.errors, result.skipped, stale=stale,
                          read=count, reader=result.reader)

    def _merge_or_keep(self, source_id: int, result: SourceResult) -> str | None:
        """C19: only a whole read replaces a source's locations. After a good read, a read
        that failed keeps them all; one that read in part keeps those it did not see.
        Returns why the locations are stale, or None."""
        good_before = self.conn.execute("SELECT good_at FROM sources WHERE id = ?", (source_id,)).fetchone()[0]
        if result.fatal:
            if good_before is not None:
                return f"unreadable since the last good read: {result.errors[0].reason}"
            self._merge([source_id])  # never read: nothing to keep
            return None
        if result.errors and good_before is not None:
            self._merge([source_id], keep_unseen=True)
            return f"read in part ({len(result.errors)} item errors): locations it did not see are kept"
        self._merge([source_id])
        return None

    def write_files(self, files: Iterable[tuple[Task, int, int]], progress: Progress | None,
                    workers: int | None) -> Iterator[FileReport]:
        """MSG/EML files (task, size, mtime) as they come: parsed in worker processes with
        two batches' worth of chunks in flight (fewer than PARALLEL_FROM files: in this
        process), written FILE_BATCH at a time. Memory follows the chunks in flight, not
        the tree."""
        chunks = _batched(files, CHUNK)
        first = list(itertools.islice(chunks, -(-PARALLEL_FROM // CHUNK)))
        if not first:
            return
        chunks = itertools.chain(first, chunks)
        if sum(map(len, first)) < PARALLEL_FROM or workers == 1:
            parsed = ((chunk, _read_chunk([_job(task) for task, _, _ in chunk])) for chunk in chunks)
            yield from self._write_results(parsed, progress)
            return
        count = workers or os.cpu_count() or 2
        with worker_pool(count) as pool:
            # two batches ahead: the workers keep parsing while this process writes one
            yield from self._write_results(_in_flight(pool, chunks, 2 * FILE_BATCH // CHUNK + count), progress)

    def _write_results(self, parsed, progress) -> Iterator[FileReport]:
        pending: list[tuple[Task, int, int, SourceResult]] = []
        for chunk, results in parsed:
            pending.extend((task, size, mtime, _result(sent))
                           for (task, size, mtime), sent in zip(chunk, results, strict=True))
            if len(pending) >= FILE_BATCH:
                yield from self._write_batch(pending)
                if progress:
                    progress(len(pending))
                pending = []
        if pending:
            yield from self._write_batch(pending)
            if progress:
                progress(len(pending))

    def _write_batch(self, read: list[tuple[Task, int, int, SourceResult]]) -> list[FileReport]:
        """One transaction for a batch of files, with set-wide statements: a Maildir is
        one source per message, and five statements per file were a third of its index time."""
        reports, finished = [], []
        results = [(task, result) for task, _, _, result in read]
        with transaction(self.conn):
            self.conn.execute("DELETE FROM walk")
            ids, new = self._source_ids([task for task, _ in results])
            good = dict(self.conn.execute(
                f"SELECT id, good_at FROM sources WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall())
            kept = {source_id for source_id, (_, result) in zip(ids, results, strict=True)
                    if result.fatal and good.get(source_id) is not None}
            self._stage([self._staged(source_id, record)
                         for source_id, (_, result) in zip(ids, results, strict=True) for record in result.records])
            self._merge([source_id for source_id in ids if source_id not in kept])
            for source_id, (task, size, mtime_ns, result) in zip(ids, read, strict=True):
                stale = f"unreadable since the last good read: {result.errors[0].reason}" if source_id in kept else None
                finished.append((source_id, task, size, mtime_ns, result, stale, len(result.records)))
                reports.append(FileReport(task.name, result.status, len(result.records), result.errors,
                                          stale=stale, read=len(result.records)))
            self._finish_sources(finished, new)
        return reports

    def _known_id(self, task: Task) -> int | None:
        return self._ids_of([task.name]).get(task.name)

    def _source_id(self, task: Task) -> int:
        return self._source_ids([task])[0][0]

    def _source_ids(self, tasks: list[Task]) -> tuple[list[int], set[int]]:
        """The source id of each task's file, and those of the ones inserted now."""
        paths = [task.name for task in tasks]
        known = self._ids_of(paths)
        new = [(task, path) for task, path in zip(tasks, paths, strict=True) if path not in known]
        if new:
            # C19: a file found while its export has not read once belongs to the baseline
            baseline = {root: not coverage.is_read(self.conn, root) for root in {task.root_name for task, _ in new}}
            self.conn.executemany(
                "INSERT INTO sources (path, root, kind, mailbox, status, indexed_at, baseline)"
                " VALUES (?, ?, ?, ?, 'ok', ?, ?)",
                [(path, task.root_name, task.kind, self.mailbox, self.now, int(baseline[task.root_name]))
                 for task, path in new])
            inserted = self._ids_of([path for _, path in new])
            known.update(inserted)
            return [known[path] for path in paths], set(inserted.values())
        return [known[path] for path in paths], set()

    def _ids_of(self, paths: list[str]) -> dict[str, int]:
        return {path: source_id for part, marks in in_parts(paths)
                for path, source_id in self.conn.execute(f"SELECT path, id FROM sources WHERE path IN ({marks})", part)}

    def _staged(self, source_id: int, record: Record) -> tuple:
        identity = record.identity or f"nomid:{source_id}:{record.locator}"
        return (source_id, identity, normalise.fingerprint(identity), normalise.subject(record.subject),
                int(folders.is_received(record.role))) + record.row()

    def _stage(self, rows: list[tuple]) -> None:
        if rows:
            self.conn.executemany(f"INSERT INTO walk VALUES ({', '.join('?' * 17)})", rows)

    def _merge(self, source_ids: list[int], keep_unseen: bool = False) -> None:
        """Make the locations of `source_ids` equal to what is staged in `walk` (with
        `keep_unseen`, add and update only)."""
        if not source_ids:
            return
        marks = ", ".join("?" * len(source_ids))
        if not keep_unseen:
            stale = (f"SELECT l.id FROM locations l JOIN messages m ON m.id = l.message"
                     f" WHERE l.source_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM walk w"
                     f" WHERE w.source_id = l.source_id AND w.locator = l.locator AND w.identity = m.identity)")
            self.conn.execute(f"INSERT INTO gone SELECT message, mailbox, seen_at, baseline FROM locations"
                              f" WHERE id IN ({stale})", source_ids)
            self.conn.execute(f"DELETE FROM locations WHERE id IN ({stale})", source_ids)
        self._insert_staged()

    def _drop_locators(self, source_id: int, locators: list[str]) -> None:
        """Locations that are gone or about to be replaced; remembered in `gone` so a
        message that is still there keeps the time it first appeared."""
        rows = [(source_id, locator) for locator in locators]
        self.conn.executemany("INSERT INTO gone SELECT message, mailbox, seen_at, baseline FROM locations"
                              " WHERE source_id = ? AND locator = ?", rows)
        self.conn.executemany("DELETE FROM locations WHERE source_id = ? AND locator = ?", rows)

    def _insert_staged(self) -> None:
        """Messages and locations for what is staged in `walk`; locations already there
        get the staged folder, role and delivery tag."""
        self.conn.execute(
            "INSERT OR IGNORE INTO messages (identity, fingerprint, message_id, submit_ts, subject,"
            " subject_norm, sender, recipients, resent_key, message_class)"
            " SELECT identity, fingerprint, message_id, submit_ts, subject, subject_norm, sender,"
            " recipients, resent_key, message_class FROM walk")
        # A message that moved keeps when it first appeared and whether it was baseline: from
        # a location dropped in this run, or one kept in a source gone missing during an event.
        self.conn.execute(
            "INSERT INTO locations (message, source_id, mailbox, locator, folder, role, received,"
            " mid_source, delivery_tag, seen_at, baseline)"
            " SELECT m.id, w.source_id, ?1, w.locator, w.folder, w.role, w.received, w.mid_source, w.delivery_tag,"
            " coalesce(min(g.seen_at, k.seen_at), g.seen_at, k.seen_at, ?2),"
            " max(s.baseline, coalesce(g.baseline, 0), coalesce(k.baseline, 0))"
            " FROM walk w JOIN messages m ON m.identity = w.identity JOIN sources s ON s.id = w.source_id"
            " LEFT JOIN (SELECT message, min(seen_at) AS seen_at, max(baseline) AS baseline FROM gone"
            "   WHERE mailbox = ?1 GROUP BY message) g ON g.message = m.id"
            " LEFT JOIN (SELECT l.message, min(l.seen_at) AS seen_at, max(l.baseline) AS baseline FROM sources ks"
            "   CROSS JOIN locations l ON l.source_id = ks.id WHERE ks.missing_since IS NOT NULL AND +l.mailbox = ?1"
            "   GROUP BY l.message) k ON k.message = m.id"
            " WHERE NOT EXISTS (SELECT 1 FROM locations l WHERE l.source_id = w.source_id"
            "   AND l.locator = w.locator)",
            (self.mailbox, self.now))
        self.conn.execute(
            "UPDATE locations SET folder = w.folder, role = w.role, received = w.received,"
            " mid_source = w.mid_source, delivery_tag = w.delivery_tag"
            " FROM walk w WHERE locations.source_id = w.source_id AND locations.locator = w.locator"
            " AND (locations.folder IS NOT w.folder OR locations.role IS NOT w.role"
            "   OR locations.delivery_tag IS NOT w.delivery_tag)")

    def _finish_source(self, source_id: int, task: Task, size: int, mtime_ns: int,
                       result: SourceResult, stale: str | None, messages: int | None = None) -> None:
        self._finish_sources([(source_id, task, size, mtime_ns, result, stale, messages)])

    def _finish_sources(self, finished: list[tuple[int, Task, int, int, SourceResult, str | None, int | None]],
                        new: set[int] = frozenset()) -> None:
        """Each source's row after its read (`messages` None: count what is staged). A
        failed read that kept earlier locations keeps the earlier size and mtime too, so
        the next run reads the file again. Sources inserted in this transaction (`new`)
        have no errors, stale mark or other root yet: a short update, as a first index of
        a Maildir inserts one per message."""
        fresh = [f for f in finished if f[0] in new]
        self.conn.executemany(
            "UPDATE sources SET status = ?, skipped = ?, baseline = CASE WHEN ? THEN baseline ELSE 0 END,"
            " size = ?, mtime_ns = ?, messages = ?, good_at = CASE WHEN ? THEN NULL ELSE ? END WHERE id = ?",
            [(result.status, result.skipped, result.fatal, size, mtime_ns, messages, result.fatal, self.now, source_id)
             for source_id, _, size, mtime_ns, result, _, messages in fresh])
        self.conn.executemany("INSERT INTO source_errors VALUES (?, ?, ?, ?)",
                              [(source_id, task.name, e.where, e.reason)
                               for source_id, task, _, _, result, _, _ in fresh for e in result.errors])
        finished = [f for f in finished if f[0] not in new]
        self.conn.executemany("DELETE FROM source_errors WHERE source_id = ?", [(f[0],) for f in finished])
        self.conn.executemany("INSERT INTO source_errors VALUES (?, ?, ?, ?)",
                              [(source_id, task.name, e.where, e.reason)
                               for source_id, task, _, _, result, _, _ in finished for e in result.errors])
        # A successful read ends the source's baseline (C19): what appears in it later is an arrival.
        self.conn.executemany(
            "UPDATE sources SET root = ?, kind = ?, mailbox = ?, status = ?, skipped = ?, indexed_at = ?, stale = ?,"
            " missing_since = NULL, baseline = CASE WHEN ? THEN baseline ELSE 0 END,"
            " size = CASE WHEN ? THEN size ELSE ? END, mtime_ns = CASE WHEN ? THEN mtime_ns ELSE ? END,"
            " messages = CASE WHEN ? THEN messages ELSE coalesce(?, (SELECT count(*) FROM walk WHERE source_id = ?)) END,"
            " good_at = CASE WHEN ? THEN good_at ELSE ? END WHERE id = ?",
            [(task.root_name, task.kind, self.mailbox, result.status, result.skipped, self.now, stale, result.fatal,
              kept, size, kept, mtime_ns, kept, messages, source_id, result.fatal, self.now, source_id)
             for source_id, task, size, mtime_ns, result, stale, messages in finished
             for kept in [result.fatal and stale is not None]])


def collect_garbage(conn) -> None:
    """Messages left without any location are gone from every export."""
    with transaction(conn):
        conn.execute("DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM locations l WHERE l.message = messages.id)")
