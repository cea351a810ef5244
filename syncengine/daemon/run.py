"""The daemon's threads, each with one job, composed of the engine's own functions.

- scheduler (the main thread): sleeps until the next thing is due (a poll on an event's
  schedule, a quiet changed file, a rescan, a scheduled event), then queues work;
- writer: owns the write connection and runs write tasks one at a time (snapshots,
  directory syncs, polls, event starts and ends, including those clients ask for);
- indexer: its own connection; parsing holds no lock, only each merge does, so a poll
  is never held hostage by a large PST (index.py);
- notify: the notification server (its own connection), woken after every commit;
- watchdog: its handlers only mark paths as changed.

State is only SQLite: a kill -9 at any moment, then a restart, resumes from the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .. import coverage, engine, files, formats, index, locks, normalise, notify, protocol, store
from ..store import transaction
from . import config as config_mod
from .config import Settings

log = logging.getLogger("syncengine.daemon")

QUIET_SECONDS = 1.0   # a changed file is ready once unchanged this long (and it opens)
RETRY_SECONDS = 30.0  # a file that would not open (Outlook holds it) is tried again after this
# The writer wakes the server after each commit; the server's own look at the store is
# only for commits by other processes (a CLI on a tcp daemon), so it can be rare.
DAEMON_CHECK_SECONDS = 1.0
PROGRESS_SECONDS = 10.0  # how often a long index run logs how far it got


# A full disk, an I/O error, a folder gone mid-step: SQLite has rolled the step back
# (store.transaction), and a content copy that failed was not named by any commit. Said
# in one line, never a traceback; the step is tried again when it comes round.
UNWRITABLE = (sqlite3.OperationalError, OSError)


def unwritable(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.OperationalError):
        return f"the store could not be written ({exc}): that step was rolled back"
    where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    return f"{where}{getattr(exc, 'strerror', None) or exc}: that step was not done"


def _answered(task: Callable[[], dict], admin: bool = False) -> dict:
    """The reply of a task a peer waits for, an error reply when the store cannot be
    written: without one the owner's command line would wait as long as the daemon lives.
    The owner's command line is also told it is the store's error (its exit status)."""
    try:
        return task()
    except UNWRITABLE as exc:
        log.error("%s; the peer that asked is told so", unwritable(exc))
        reply = {"op": "error", "reason": f"{unwritable(exc)}; try again (once there is room, if the disk is full)"}
        return {**reply, "store": True} if admin else reply


class DaemonError(Exception):
    """The daemon cannot start; the text says why."""


@dataclass
class Pending:
    """A changed path waiting to be quiet."""
    seen: float                 # monotonic time of its last change
    stat: tuple[int, int] | None = None


@dataclass
class Changes:
    """Paths that changed, marked by watchdog's thread, taken by the scheduler."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    paths: dict[str, Pending] = field(default_factory=dict)
    retry_at: dict[Path, float] = field(default_factory=dict)  # exports, drops that would not apply
    kick: threading.Event = field(default_factory=threading.Event)

    def retry(self, path: Path) -> None:
        with self.lock:
            self.retry_at[path] = time.monotonic() + RETRY_SECONDS
        self.kick.set()

    def retries(self, now: float) -> tuple[list[Path], list[float]]:
        """Exports and drop-folder entries due to be tried again, and when the others are."""
        with self.lock:
            due = [p for p, at in self.retry_at.items() if at <= now]
            for path in due:
                del self.retry_at[path]
            return due, [at for at in self.retry_at.values()]

    def pending(self) -> list[str]:
        with self.lock:
            return list(self.paths)

    def mark(self, path: str) -> None:
        pending = Pending(time.monotonic(), _stat(path))
        with self.lock:
            self.paths[path] = pending
        self.kick.set()

    def ready(self, now: float) -> tuple[list[str], float | None]:
        """Paths quiet for QUIET_SECONDS with a stable size and mtime; the next deadline."""
        ready, next_at = [], None
        with self.lock:
            for path, pending in list(self.paths.items()):
                if now - pending.seen < QUIET_SECONDS:
                    next_at = min(next_at or pending.seen + QUIET_SECONDS, pending.seen + QUIET_SECONDS)
                    continue
                current = _stat(path)
                if current != pending.stat and current is not None:  # still being written: wait again
                    pending.stat, pending.seen = current, now
                    next_at = min(next_at or now + QUIET_SECONDS, now + QUIET_SECONDS)
                    continue
                del self.paths[path]
                ready.append(path)
        return ready, next_at


def _stat(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class _Handler(FileSystemEventHandler):
    def __init__(self, changes: Changes):
        self.changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.changes.mark(os.fsdecode(path))


Task = Callable[[], None]


def systemd_notify(state: str) -> None:
    """Tell a supervisor that speaks sd_notify (systemd's Type=notify) how we are; nothing
    without $NOTIFY_SOCKET. The protocol is one datagram to that socket; a library for it
    would be larger than this."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:  # a supervisor gone is no reason to stop serving
        log.warning("NOTIFY_SOCKET %s: %s", os.environ["NOTIFY_SOCKET"], exc)


def _declare(conn, settings: Settings) -> None:
    """C19: coverage is declared. Every configured export belongs to its mailbox before its
    first read, and a mailbox with none waits unless the config says it has no local mail.
    An export the store has read that the config no longer names still counts: forgetting
    it is the user's word (`syncengine forget`), never a config edit's. One that never read
    holds no mail, only the wait for it: it goes with the config's word."""
    now = engine.wall_clock()
    configured = set()
    for address, exports in settings.mailboxes.items():
        coverage.declare_mailbox(conn, address, address in settings.no_local_mail, now)
        paths = [index.text(p) for p in exports]
        coverage.declare_exports(conn, address, paths, now)
        configured.update(paths)
    for path, mailbox, good_at in conn.execute("SELECT path, mailbox, good_at FROM exports ORDER BY path").fetchall():
        if path in configured:
            continue
        if good_at is None and conn.execute("SELECT 1 FROM sources WHERE root = ?", (path,)).fetchone() is None:
            # never read, so nothing of it counts: a path typed wrong and since fixed in the config
            coverage.forget(conn, path)
            log.info("%s was never read and the config no longer names it: %s no longer waits for it",
                     path, mailbox)
        else:
            log.warning("%s is indexed for %s but not in the config; its mail still counts. If it is gone for "
                        "good: syncengine forget %s --db %s", path, mailbox, path, settings.db)


class Daemon:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self.changes = Changes()
        self.writes: queue.Queue[Task | None] = queue.Queue()
        self.indexing: queue.Queue[tuple[str, list[Path]] | None] = queue.Queue()
        self._queued_polls: set[str] = set()
        self._first_pass = set(settings.mailboxes)  # readiness (systemd Type=notify) once each has read
        self._waiting: set[tuple] = set()  # (event, mailbox, export) said to wait for the index
        self._applied: set[Path] = set()  # drop-folder entries known to be in the store
        self._lock = self._take_lock()
        db = store.connect(settings.db)  # the writer opens its own: connections stay in their thread
        try:
            with transaction(db.conn) as conn:
                engine.set_settings(conn, settings.engine_settings())
                _declare(conn, settings)  # C19: before any thread runs, so no decision precedes it
        except coverage.CoverageError as exc:
            raise DaemonError(f"{settings.file}: {exc}") from None
        finally:
            db.conn.close()
        self.db = None
        try:
            self.server = notify.Server(settings.db, settings.endpoint,
                                        notify.Curve(settings.keys) if settings.keys else None,
                                        forward=self._forward, check_seconds=DAEMON_CHECK_SECONDS)
        except notify.ServeError as exc:
            raise DaemonError(str(exc)) from None
        self.waker = None
        self.replier = None
        self.scheduled_done: set[tuple[str, str]] = set()

    # --- start and stop -------------------------------------------------------------------------

    def _take_lock(self):
        """One daemon per store: a second one names the first one's pid and stops."""
        try:
            return locks.hold(Path(f"{self.settings.db}.d") / "daemon.lock")
        except locks.Held as held:
            raise DaemonError(f"{self.settings.db}: a daemon already runs on this store ({held})") from None

    def run(self) -> None:
        threads = [threading.Thread(target=self._writer, name="writer"),
                   threading.Thread(target=self._indexer, name="indexer", daemon=True),
                   threading.Thread(target=self.server.serve_forever, name="notify")]
        if self.settings.mimecast is not None:
            threads.append(threading.Thread(target=self._mimecast, name="mimecast", daemon=True))
        for thread in threads:
            thread.start()
        observer = self._watch()
        log.info("daemon started: store %s, %d mailbox(es), polls every %d s, notify %s",
                 self.settings.db, len(self.settings.mailboxes), self.settings.poll_interval,
                 self.server.endpoints.router,
                 extra={"store": str(self.settings.db), "mailboxes": list(self.settings.mailboxes),
                        "poll_interval": self.settings.poll_interval, "endpoint": self.server.endpoints.router})
        try:
            self._schedule()
        finally:
            observer.stop()
            self.writes.put(None)
            self.indexing.put(None)
            threads[0].join()
            self.server.stop()
            threads[2].join(5)
            threads[1].join(0.5)  # a parse in progress holds no lock and commits nothing half
            observer.join(2)
            systemd_notify("STOPPING=1")
            log.info("daemon stopped")

    def _watch(self) -> Observer:
        observer = Observer()
        self._handler = _Handler(self.changes)
        self._watched: set[Path] = set()
        self._shallow: set[Path] = set()
        for folder in (self.settings.file.parent, self.settings.directory_file.parent):
            if folder.is_dir() and folder not in self._shallow:  # the store's own writes live here too
                observer.schedule(self._handler, str(folder), recursive=False)
                self._shallow.add(folder)
        self._observer = observer
        self._watch_folders()
        observer.start()
        return observer

    def _watch_folders(self) -> None:
        """The drop folder and every export's folder (again after a config change)."""
        exports = [p if p.is_dir() else p.parent for paths in self.settings.mailboxes.values() for p in paths]
        for folder in [self.settings.snapshot_folder, *exports]:
            if folder.is_dir() and folder not in self._watched:
                self._observer.schedule(self._handler, str(folder), recursive=True)
                self._watched.add(folder)
            elif not folder.exists():
                log.warning("%s does not exist (yet); the rescan every %d s will find it", folder,
                            self.settings.rescan_interval)

    # --- the scheduler ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        read = store.connect(self.settings.db)  # the scheduler's own reads
        next_rescan = 0.0
        queued_polls = self._queued_polls
        try:
            while not self.stop.is_set():
                monotonic = time.monotonic()
                if monotonic >= next_rescan:
                    next_rescan = monotonic + self.settings.rescan_interval
                    self._rescan()
                ready, quiet_at = self.changes.ready(monotonic)
                if ready:
                    self._changed(ready)
                now = engine.wall_clock()
                self._scheduled_events(read, now)
                upcoming = [next_rescan - monotonic]
                for event in engine.open_events(read.conn):
                    due = event.next_poll()
                    if now >= due and event.name not in queued_polls:
                        queued_polls.add(event.name)
                        self.writes.put(lambda name=event.name: self._poll(name))
                    upcoming.append(max(0.0, due - now) if event.name not in queued_polls else 1.0)
                due_retries, later = self.changes.retries(monotonic)
                self._queue_index(due_retries)
                for path in due_retries:
                    if path.parent == self.settings.snapshot_folder:
                        self._drop(path, self.changes.pending())
                upcoming += [at - monotonic for at in later]
                upcoming += [e - now for e in self._event_times() if e > now]
                if quiet_at is not None:
                    upcoming.append(quiet_at - monotonic)
                self.changes.kick.wait(max(0.01, min(upcoming)))
                self.changes.kick.clear()
        finally:
            read.conn.close()

    def _event_times(self) -> list[float]:
        times = []
        for event in self.settings.events:
            times.append(normalise.epoch(normalise.parse_iso(event.start)))
            if event.end:
                times.append(normalise.epoch(normalise.parse_iso(event.end)))
        return times

    def _scheduled_events(self, read, now: float) -> None:
        """[[event]] entries of the config: started and ended once, at their times."""
        for event in self.settings.events:
            start = normalise.epoch(normalise.parse_iso(event.start))
            end = normalise.epoch(normalise.parse_iso(event.end)) if event.end else None
            row = read.execute("SELECT phase FROM events WHERE name = ?", (event.name,)).fetchone()
            if row is None and now >= start and (event.name, "start") not in self.scheduled_done:
                self.scheduled_done.add((event.name, "start"))
                self.writes.put(lambda e=event: self._scheduled(
                    (e.name, "start"), lambda: self._start(e.name, e.mailboxes, e.expand_distribution_lists, [])))
            elif row and row[0] == "active" and end is not None and now >= end \
                    and (event.name, "end") not in self.scheduled_done:
                self.scheduled_done.add((event.name, "end"))
                self.writes.put(lambda e=event: self._scheduled((e.name, "end"), lambda: self._end(e.name)))

    def _scheduled(self, key: tuple[str, str], task: Callable[[], dict]) -> None:
        """A scheduled start or end, due again at the scheduler's next look when the store
        could not be written (a full disk must not cancel an event)."""
        try:
            task()
        except UNWRITABLE:
            self.scheduled_done.discard(key)
            raise

    def _rescan(self) -> None:
        """Everything, as at start: what the watcher may have missed (inotify limits, network drives)."""
        for address, exports in self.settings.mailboxes.items():
            self.indexing.put((address, exports))
        self._drop_folder()
        self.writes.put(self._directory)

    def _changed(self, paths: list[str]) -> None:
        exports, drops = set(), set()
        folder = self.settings.snapshot_folder
        if str(self.settings.file) in paths:
            self._reload()
        for raw in paths:
            path = Path(raw)
            for address, configured in self.settings.mailboxes.items():
                for export in configured:
                    if path == export or export in path.parents:
                        exports.add(export)
            if path == self.settings.directory_file:
                self.writes.put(self._directory)
            if folder in path.parents:  # the drop-folder entry this change belongs to
                entry = folder / path.relative_to(folder).parts[0]
                drops.add(entry)
                if entry in self._applied and path.parent == entry and path.name.startswith("snapshot") \
                        and path.suffix == ".json" and path.exists():
                    log.warning("%s appeared in snapshot folder %s after it was applied: it is not applied; "
                                "drop a new folder instead", path, entry)
        pending = self.changes.pending()
        for path in sorted(drops):
            self._drop(path, pending)
        self._queue_index(sorted(exports))

    def _reload(self) -> None:
        """The config file changed: its mailboxes, exports and [[event]]s apply now; an export
        it adds is declared (on the writer, so no later poll runs before it: C19) and read.
        One it drops is not a vanish: its mail still counts until the user forgets it."""
        try:
            new = config_mod.load(self.settings.file)
        except config_mod.ConfigError as exc:
            log.error("%s; the daemon goes on with the config it started with", exc)
            return
        later = [key for key in ("db", "snapshot_folder", "directory_file", "endpoint", "keys", "rescan_interval")
                 if getattr(new, key) != getattr(self.settings, key)]
        if (new.mimecast is None) != (self.settings.mimecast is None):
            later.append("[mimecast]")
        if later:
            log.warning("config %s changed %s: that takes effect when the daemon restarts",
                        self.settings.file, ", ".join(later))
        added = {address: [p for p in exports if p not in self.settings.mailboxes.get(address, [])]
                 for address, exports in new.mailboxes.items()}
        for key in ("mailboxes", "no_local_mail", "events", "poll_interval", "post_event_window", "calendar_items"):
            setattr(self.settings, key, getattr(new, key))
        self.writes.put(self._declare)
        self._watch_folders()
        for address, exports in added.items():
            if exports:
                log.info("config: %s now also has %s; nothing is decided for it until they have read (C19)",
                         address, ", ".join(map(str, exports)))
                self.indexing.put((address, exports))

    def _declare(self) -> None:
        try:
            with transaction(self.db.conn) as conn:
                engine.set_settings(conn, self.settings.engine_settings())
                _declare(conn, self.settings)
        except coverage.CoverageError as exc:
            log.error("%s: %s", self.settings.file, exc)

    def _queue_index(self, exports: list[Path]) -> None:
        for address, configured in self.settings.mailboxes.items():
            mine = [e for e in exports if e in configured]
            if mine:
                self.indexing.put((address, mine))

    def _drop_folder(self) -> None:
        """Every entry of the drop folder (the rescan: what the watcher may have missed)."""
        folder = self.settings.snapshot_folder
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        pending = self.changes.pending()
        for name in names:
            self._drop(folder / name, pending)

    def _drop(self, path: Path, pending: list[str]) -> None:
        """A snapshot folder or .json file dropped here is applied once. Dot-names are
        ignored: a writer builds under one and renames into place. One that is not the
        user's own, or that others can write to, is not applied (N4: it could be forged)."""
        if path.name.startswith(".") or path in self._applied or not (path.is_dir() or path.suffix == ".json"):
            return
        if str(path) in pending or any(path in Path(p).parents for p in pending):
            return  # still changing: the scheduler comes back when it is quiet
        reason = files.untrusted(path)
        if reason:
            self._applied.add(path)  # said once, not at every rescan
            log.error("%s is %s; not applied (it could be forged)", path, reason)
            return
        self.writes.put(lambda: self._snapshot(path))

    # --- write tasks (the writer thread) ---------------------------------------------------------

    def _writer(self) -> None:
        self.db = store.connect(self.settings.db)
        self.waker = self.server.waker()
        self.replier = self.server.replier()
        try:
            while True:
                task = self.writes.get()
                if task is None:
                    return
                try:
                    task()
                except store.StoreBusy as exc:
                    log.warning("%s; the task will be tried again", exc)
                    self.writes.put(task)
                except UNWRITABLE as exc:  # a snapshot stays unapplied, a poll comes round again
                    log.error("%s; tried again at the next change, poll or rescan", unwritable(exc))
                except Exception:  # one bad task never stops the daemon
                    log.exception("a write task failed")
        finally:
            self.waker.close()
            self.replier.close()
            self.db.conn.close()

    def _published(self, written: list) -> None:
        if written:
            self.waker()

    def _poll(self, name: str) -> None:
        self._queued_polls.discard(name)
        now = engine.wall_clock()
        event = next((e for e in engine.open_events(self.db.conn) if e.name == name), None)
        if event is None or now < event.next_poll():
            return
        closing = event.phase == "ending" and now >= event.closes_at
        written = engine.poll(self.db, now, [name])
        event.last_poll = now
        if written:
            log.info("poll of %s: %d delta(s) written; next poll at %s", name, len(written),
                     normalise.iso(event.next_poll()),
                     extra={"event": name, "deltas": len(written), "next_poll": normalise.iso(event.next_poll())})
        if closing:
            log.info("event %s closed: its post-event window is over; `syncengine status` has its report", name,
                     extra={"event": name, "phase": "closed"})
        self._published(written)
        self._say_waiting()

    def _say_waiting(self) -> None:
        """Each mailbox's wait for its index (C19), once when it starts and once when it ends,
        not at every poll."""
        now_waiting = {(i["event"], i["mailbox"], i["export"]): i for i in engine.waiting(self.db.conn)}
        for key in now_waiting.keys() - self._waiting:
            item = now_waiting[key]
            log.warning("%s waits for its index: %s: %s%s", item["mailbox"], item["export"], item["why"],
                        f"; if that path is wrong or gone for good: syncengine forget {item['export']}"
                        if item["export"] else "",
                        extra={"event": item["event"], "mailbox": item["mailbox"], "export": item["export"],
                               "why": item["why"]})
        for event, mailbox, export in self._waiting - now_waiting.keys():
            log.info("%s no longer waits for %s in %s", mailbox, export or "its index", event,
                     extra={"event": event, "mailbox": mailbox, "export": export})
        self._waiting = set(now_waiting)

    def _snapshot(self, path: Path) -> None:
        """A snapshot folder or page, applied once whoever sees it first; one the Mimecast
        poller wrote records what was fetched in the same transaction (poller.apply_folder)."""
        from ..mimecast import poller
        try:
            if path.is_dir() and poller.read_manifest(path) is not None:
                result = poller.apply_folder(self.db, path, engine.wall_clock())
            else:
                result = engine.add_snapshot(self.db, path, engine.wall_clock(), once=True)
        except formats.FormatError as exc:
            log.error("%s", exc)
            return
        except UNWRITABLE as exc:  # a full disk: none of it applied; not a reason to wait for a rescan
            log.error("%s not applied: %s; tried again in %g s", path, unwritable(exc), RETRY_SECONDS)
            self.changes.retry(path)
            return
        self._applied.add(path)  # the rescan need not ask again (the writer adds, the scheduler reads)
        if result is None:
            return  # applied before, by us or by whoever saw it first
        for file, reason in result.rejected:
            log.error("rejected page %s: %s", file, reason, extra={"path": str(file), "reason": reason})
        for file, reason in result.warnings:
            log.warning("%s: %s", file, reason, extra={"path": str(file), "reason": reason})
        due = [e.next_poll() for e in engine.open_events(self.db.conn)]
        then = f"; decided at the next poll, {normalise.iso(min(due))}" if due and result.entries else ""
        log.info("applied snapshot %s: %d entries in %d page(s)%s%s", path, result.entries, result.pages,
                 f", {len(result.rejected)} page(s) rejected" if result.rejected else "", then,
                 extra={"path": str(path), "entries": result.entries, "pages": result.pages,
                        "rejected": len(result.rejected), "next_poll": normalise.iso(min(due)) if due else None})

    def _directory(self) -> None:
        path = self.settings.directory_file
        if not path.exists():
            return  # no directory sync yet: not an error
        reason = files.untrusted(path)
        if reason:  # checked at start too; this is a file swapped since
            log.error("%s is %s; not applied (it could be forged)", path, reason)
            return
        try:
            if engine.add_directory_if_new(self.db, path, engine.wall_clock()):
                log.info("applied directory sync %s", path)
        except formats.FormatError as exc:
            log.error("%s", exc)

    def _start(self, name: str, mailboxes: list[str], expand: bool, no_local_mail: list[str],
               tell_waiting: bool = False) -> dict:
        """Start the event; with `tell_waiting` (the owner's command line, not a client:
        protocol.md's reply stands) the reply also says what waited for its index."""
        try:
            with transaction(self.db.conn) as conn:
                written = engine.start_event_in(conn, name, mailboxes, expand, engine.wall_clock(), no_local_mail)
                # what waited for its index when the reconcile ran, not a moment later: an
                # index finishing meanwhile would otherwise hide why the reconcile wrote nothing
                waiting = [item for item in engine.waiting(conn) if item["event"] == name]
        except engine.EngineError as exc:
            log.error("event %s not started: %s", name, exc)
            return {"op": "error", "reason": str(exc), "request": "start_event"}
        log.info("event %s started for %s: reconcile wrote %d delta(s)", name, ", ".join(mailboxes), len(written),
                 extra={"event": name, "mailboxes": mailboxes, "deltas": len(written), "phase": "active"})
        self._say_waiting()
        self._published(written)
        reply = {"op": "event_started", "event": name, "deltas": len(written)}
        return {**reply, "waiting": waiting} if tell_waiting else reply

    def _end(self, name: str) -> dict:
        try:
            engine.end_event(self.db, name, engine.wall_clock())
        except engine.EngineError as exc:
            log.error("event %s not ended: %s", name, exc)
            return {"op": "error", "reason": str(exc), "request": "end_event"}
        log.info("event %s ending: watching for Exchange copies for %d s", name, self.settings.post_event_window,
                 extra={"event": name, "phase": "ending", "window_s": self.settings.post_event_window})
        return {"op": "event_ending", "event": name}

    def _forward(self, request: protocol.Request, identity: bytes) -> None:
        """A client's event request (already authorised by the server), or the owner's
        command line, runs here, on the writer (an index on the indexer), and is
        answered when done; the server's loop never waits for it."""
        if isinstance(request, protocol.Admin):
            if request.command == "index":
                self.indexing.put(("admin", (request, identity)))
            else:
                self.writes.put(lambda: self.replier(identity, [_answered(lambda: self._admin(request), admin=True)]))
            return
        if isinstance(request, protocol.StartEvent):
            task = lambda: self._start(request.event, request.mailboxes, request.expand_distribution_lists,  # noqa: E731
                                       request.no_local_mail)
        else:
            task = lambda: self._end(request.event)  # noqa: E731
        self.writes.put(lambda: self.replier(identity, [_answered(task)]))

    def _admin(self, request: protocol.Admin) -> dict:
        """What the command line would have done on the store itself, as a result it prints."""
        now = engine.wall_clock()
        try:
            if request.command == "snapshot_add":
                result = engine.add_snapshot(self.db, Path(request.path), now)
                self._published([1])
                return {"op": "done", "result": dataclasses.asdict(result)}
            if request.command == "directory_add":
                parsed = engine.add_directory(self.db, Path(request.path), now)
                return {"op": "done", "result": {"users": len(parsed.users), "groups": len(parsed.groups),
                                                 "delegates": len(parsed.delegates)}}
            if request.command == "mimecast_apply":  # a standalone `mimecast poll` on this store
                from ..mimecast import poller
                for path in request.paths:
                    self._snapshot(Path(path))
                if request.outcomes:
                    with transaction(self.db.conn) as conn:
                        poller.record_health(conn, request.outcomes, now)
                self._published([1])
                return {"op": "done", "result": {"applied": len(request.paths)}}
            if request.command == "sync":
                written = engine.poll(self.db, now)
                log.info("sync from the command line: %d delta(s) written", len(written),
                         extra={"command": "sync", "deltas": len(written)})
                self._published(written)
                self._say_waiting()
                return {"op": "done", "result": {"deltas": len(written)}}
            if request.command == "event_start":
                reply = self._start(request.event, request.mailboxes, request.expand_distribution_lists,
                                    request.no_local_mail, tell_waiting=True)
            else:
                reply = self._end(request.event)
            return {"op": "done", "result": reply} if reply["op"] != "error" else reply
        except (formats.FormatError, engine.EngineError) as exc:
            return {"op": "error", "reason": str(exc)}

    # --- the Mimecast poller thread -------------------------------------------------------------

    def _mimecast(self) -> None:
        """Fetch on the poller's own schedule (interval_s), supervised: a failed pass is one
        log line and a backoff, never the end of the thread. Each folder is applied on the
        writer (with what it fetched, in one transaction), the health in `status`."""
        from ..mimecast import api as api_mod
        from ..mimecast import poller

        settings = self.settings.mimecast
        lock = self._poller_lock()
        if lock is None:
            return
        api = api_mod.Api(settings)
        read = store.connect(self.settings.db)
        next_directory = [0.0]

        def directory(now: float) -> None:  # the groups' members, on the rescan schedule
            if settings.groups and time.monotonic() >= next_directory[0]:
                next_directory[0] = time.monotonic() + self.settings.rescan_interval
                try:
                    poller.write_directory(poller.directory(api, settings, now), settings.directory_file)
                except Exception as exc:  # the mail goes on without a new directory sync
                    log.warning("Mimecast directory: %s", exc)
                    return
                self.writes.put(self._directory)

        try:
            poller.supervise(api, settings, read, self.stop, self._apply_folder, self._record_health, directory)
        finally:
            api.close()
            read.conn.close()
            lock.close()

    def _poller_lock(self):
        """One Mimecast poller per store: while a `syncengine mimecast poll` runs on it, wait."""
        told = False
        while not self.stop.is_set():
            try:
                return locks.hold(Path(f"{self.settings.db}.d") / "mimecast.lock")
            except locks.Held as held:
                if not told:
                    log.warning("Mimecast: another poller runs on this store (%s); the daemon's waits for it", held)
                    told = True
            self.stop.wait(self.settings.mimecast.interval_s)
        return None

    def _apply_folder(self, folder: Path) -> None:
        """A folder the poller wrote, applied on the writer; the poller waits for it, so its
        next pass reads what this one recorded."""
        done = threading.Event()

        def task() -> None:
            try:
                self._snapshot(folder)
            finally:
                done.set()

        self.writes.put(task)
        while not done.wait(0.5) and not self.stop.is_set():
            pass

    def _record_health(self, outcomes: dict, now: float) -> None:
        from ..mimecast import poller

        def task() -> None:
            with transaction(self.db.conn) as conn:
                poller.record_health(conn, outcomes, now)

        self.writes.put(task)

    # --- the indexer thread ----------------------------------------------------------------------

    def _indexer(self) -> None:
        db = store.connect(self.settings.db)
        replier = self.server.replier()
        try:
            while True:
                item = self.indexing.get()
                if item is None:
                    return
                address, exports = item
                try:
                    if address == "admin":  # `syncengine index` while the daemon holds the store
                        request, identity = exports
                        replier(identity, [_answered(lambda: self._admin_index(db, request), admin=True)])
                    else:
                        self._index(db, address, exports)
                except UNWRITABLE as exc:  # the mailbox still waits for its index (C19)
                    log.error("%s was not indexed: %s; read again in %g s", address, unwritable(exc),
                              RETRY_SECONDS)
                    for export in exports:
                        self.changes.retry(export)
                except Exception:  # one bad export never stops the daemon
                    log.exception("indexing %s failed", address)
                else:  # ready says the first read is done, not that it was tried
                    if address in self._first_pass:
                        self._first_pass.discard(address)
                        if not self._first_pass:  # every mailbox read once: what `status` says is whole
                            log.info("ready: every mailbox's exports read once", extra={"phase": "ready"})
                            systemd_notify("READY=1\nSTATUS=serving; every mailbox indexed")
        finally:
            replier.close()
            db.conn.close()

    def _progress(self, address: str, read: int | None, started: float) -> None:
        """How far a running index has got, for `syncengine status` (None: done). A file
        beside the store, not a row in it: the writer is busy with that very index."""
        where = Path(f"{self.settings.db}.d") / "indexing.json"
        try:
            if read is None:
                where.unlink(missing_ok=True)
            else:
                files.write_durable(where, json.dumps({"mailbox": address, "read": read,
                                                       "since": normalise.iso(started)}).encode())
        except OSError as exc:  # progress is a courtesy; a full disk must not stop the index
            log.debug("%s: %s", where, exc)

    def _admin_index(self, db, request: protocol.Admin) -> dict:
        reports: list[dict] = []
        if request.no_local_mail:
            index.declare_no_local_mail(db, request.no_local_mail[0], engine.wall_clock())
            return {"op": "done", "result": {"reports": [], **index.Summary().as_json()}}
        def on_file(report: index.FileReport) -> None:  # a tree of a million files is mostly "ok"
            if request.every_file or report.status != "ok":
                reports.append(report.as_json())
        try:
            summary = index.run(db, [Path(p) for p in request.paths], request.mailbox or "", on_file=on_file)
        except ValueError as exc:
            return {"op": "error", "reason": f"--mailbox: {exc}"}
        log.info("index of %s from the command line: %d file(s), %d message(s), %d failed", request.mailbox,
                 summary.files, summary.messages, summary.error,
                 extra={"command": "index", "mailbox": request.mailbox, "files": summary.files,
                        "messages": summary.messages, "failed": summary.error})
        return {"op": "done", "result": {"reports": reports, **summary.as_json()}}

    def _index(self, db, address: str, exports: list[Path]) -> None:
        failed: list[Path] = []

        def on_file(report: index.FileReport) -> None:  # the run's summary says the rest
            for error in report.errors:
                log.error("%s: %s: %s", report.path, error.where if error.where != report.path else "file",
                          error.reason)
            if report.status == "error":
                failed.append(Path(report.path))

        read = [0, time.monotonic() + PROGRESS_SECONDS]

        def progress(count: int) -> None:  # a long run (a large PST) says how far it got
            read[0] += count
            if time.monotonic() >= read[1]:
                read[1] = time.monotonic() + PROGRESS_SECONDS
                log.info("indexing %s: %d message(s) read so far", address, read[0],
                         extra={"mailbox": address, "read": read[0]})
                self._progress(address, read[0], started)

        started = engine.wall_clock()
        first = [e for e in exports if not coverage.is_read(db.conn, index.text(e))]
        if first:
            self._progress(address, 0, started)
            log.info("indexing %s: first read of %s; nothing is decided for it until this has read (C19)",
                     address, ", ".join(map(str, first)), extra={"mailbox": address, "first": list(map(str, first))})
        try:
            summary = index.run(db, exports, address, on_file=on_file, progress=progress)
        finally:
            self._progress(address, None, started)
        log.info("index of %s: %d file(s) read (%d message(s)), %d unchanged, %d removed, %d failed, %.2f s",
                 address, summary.files - summary.unchanged, summary.messages, summary.unchanged, summary.removed,
                 summary.error, summary.seconds,
                 extra={"mailbox": address, "files": summary.files, "messages": summary.messages,
                        "unchanged": summary.unchanged, "removed": summary.removed, "failed": summary.error,
                        "seconds": round(summary.seconds, 2)})
        for path in failed:  # held open or half-written: its last good index stands meanwhile
            export = next((e for e in exports if path == e or e in path.parents), None)
            if export is not None:
                self.changes.retry(export)
