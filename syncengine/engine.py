"""The continuity engine: gathers inputs from the store, applies `rules`, and writes
decisions and their deltas in one transaction per poll (C1, N1).

Every function takes the engine clock `now` (epoch seconds) from its caller: the
replay passes its virtual clock, the command line and the daemon the wall clock.
"""

from __future__ import annotations

import functools
import json
import time
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import sqlite_utils

from . import directory as directory_mod
from . import files, formats, normalise, rules, snapshot
from .store import transaction


class EngineError(Exception):
    """A request the engine refuses; the text says why."""


def wall_clock() -> float:
    """The engine's clock outside replay, in whole seconds, the same for every process and
    thread that writes to a store: an entry added at t is visible to an event started at t."""
    return float(int(time.time()))


def store_dir(db: sqlite_utils.Database) -> Path:
    """The folder beside the store file that holds stored content and replay overlays."""
    name = db.execute("PRAGMA database_list").fetchone()[2]
    return Path(name + ".d")


# --- settings ------------------------------------------------------------------------------

def get_settings(db: sqlite_utils.Database) -> formats.Settings:
    values = {row[0]: json.loads(row[1]) for row in db.execute("SELECT key, value FROM settings")}
    return formats.Settings(**values)


def set_settings(conn: sqlite3.Connection, settings: formats.Settings) -> None:
    for key in ("poll_interval", "post_event_window", "calendar_items"):
        conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(getattr(settings, key))))


# --- inputs: snapshots and directory syncs ------------------------------------------------

@dataclass
class SnapshotResult:
    path: str
    pages: int
    entries: int
    rejected: list[tuple[str, str]]
    warnings: list[tuple[str, str]]


Journal = Callable[[sqlite3.Connection], None] | None


def add_snapshot(db: sqlite_utils.Database, path: Path, now: float, journal: Journal = None,
                 once: bool = False) -> SnapshotResult | None:
    """Make the snapshot at `path` visible at `now`: valid pages are stored with their
    content, rejected pages are recorded with the reason and nothing of them applies.
    With `once`, a snapshot folder applied before (by this process or another watching
    the same drop folder) is not applied again, and None is returned."""
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
            row.message_class = snapshot.content_class(data)
    with transaction(db.conn) as conn:
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
        if journal:
            journal(conn)
    return SnapshotResult(str(path), loaded.pages, len(loaded.entries), loaded.rejected, loaded.warnings)


def add_directory(db: sqlite_utils.Database, path: Path, now: float, journal: Journal = None) -> formats.Directory:
    """A successful directory sync; the latest one added wins from `now` on (C16)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise formats.FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    parsed, view = directory_mod.load(data, str(path))
    with transaction(db.conn) as conn:
        conn.execute("INSERT INTO directory_syncs (path, synced, added_at, body) VALUES (?, ?, ?, ?)",
                     (str(path), view.synced, now, data))
        if journal:
            journal(conn)
    return parsed


def add_directory_if_new(db: sqlite_utils.Database, path: Path, now: float) -> bool:
    """The directory file as a new sync, unless it says what the sync in force says."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise formats.FormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    latest = db.execute("SELECT body FROM directory_syncs ORDER BY added_at DESC, id DESC LIMIT 1").fetchone()
    if latest and latest[0] == data:
        return False
    add_directory(db, path, now)
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


# --- events -------------------------------------------------------------------------------

@dataclass
class Event:
    id: int
    name: str
    phase: str
    started_at: float
    ended_at: float | None
    last_poll: float
    expand_lists: bool
    poll_interval: int
    post_event_window: int
    calendar_items: bool
    mailboxes: list[str] = field(default_factory=list)
    reconciled: dict[str, float | None] = field(default_factory=dict)  # None: waiting-for-index (C19)

    @property
    def closes_at(self) -> float | None:
        return None if self.ended_at is None else self.ended_at + self.post_event_window

    def next_poll(self) -> float:
        """The first time on the event's schedule (every poll_interval from its start,
        C8) after its last poll: a late poll does not shift the schedule."""
        done = int((self.last_poll - self.started_at) // self.poll_interval)
        return self.started_at + (done + 1) * self.poll_interval


_EVENT_SELECT = ("SELECT id, name, phase, started_at, ended_at, last_poll, expand_lists, poll_interval,"
                 " post_event_window, calendar_items FROM events")


def open_events(conn: sqlite3.Connection) -> list[Event]:
    return [_event(conn, row) for row in conn.execute(f"{_EVENT_SELECT} WHERE phase != 'closed' ORDER BY id")]


def _event(conn: sqlite3.Connection, row) -> Event:
    event = Event(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8], bool(row[9]))
    event.reconciled = dict(conn.execute(
        "SELECT mailbox, reconciled_at FROM event_mailboxes WHERE event = ? ORDER BY mailbox", (event.id,)))
    event.mailboxes = list(event.reconciled)
    return event


def check_event_name(name: str) -> None:
    if not name or not name.strip() or len(name) > 200 or not name.isprintable():
        raise EngineError(f"not an event name: {name[:60]!r} (1 to 200 printable characters)")


def event_mailboxes(conn: sqlite3.Connection, name: str) -> list[str]:
    """The mailboxes event `name` covers; EngineError when there is no such event."""
    row = conn.execute("SELECT id FROM events WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise EngineError(f"no event {name!r}")
    return [r[0] for r in conn.execute("SELECT mailbox FROM event_mailboxes WHERE event = ? ORDER BY mailbox", row)]


def start_event(db: sqlite_utils.Database, name: str, mailboxes: list[str], expand_lists: bool,
                now: float, journal: Journal = None) -> list[dict]:
    """C1, C3: create the event and reconcile each mailbox, in one transaction."""
    settings = get_settings(db)
    check_event_name(name)
    try:
        named = [normalise.mailbox(m) for m in mailboxes]
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    with transaction(db.conn) as conn:
        view = directory_at(conn, now)
        wanted = sorted({view.primary(m) for m in named})
        if not wanted:
            raise EngineError("an event needs at least one mailbox")
        if conn.execute("SELECT 1 FROM events WHERE name = ?", (name,)).fetchone():
            raise EngineError(f"event {name!r} already exists")
        for mailbox in wanted:
            busy = conn.execute("SELECT e.name FROM events e JOIN event_mailboxes m ON m.event = e.id"
                                " WHERE m.mailbox = ? AND e.phase != 'closed'", (mailbox,)).fetchone()
            if busy:
                raise EngineError(f"mailbox {mailbox} is already in open event {busy[0]!r}")
        cursor = conn.execute(
            "INSERT INTO events (name, phase, started_at, last_poll, expand_lists, poll_interval,"
            " post_event_window, calendar_items) VALUES (?, 'reconciling', ?, ?, ?, ?, ?, ?)",
            (name, now, now, int(expand_lists), settings.poll_interval, settings.post_event_window,
             int(settings.calendar_items)))
        conn.executemany("INSERT INTO event_mailboxes (event, mailbox) VALUES (?, ?)",
                         [(cursor.lastrowid, m) for m in wanted])
        event = _event(conn, conn.execute(f"{_EVENT_SELECT} WHERE id = ?", (cursor.lastrowid,)).fetchone())
        written = _decide(conn, event, now, view)
        conn.execute("UPDATE events SET phase = 'active' WHERE id = ?", (event.id,))
        if journal:
            journal(conn)
    return written


def end_event(db: sqlite_utils.Database, name: str, now: float, journal: Journal = None) -> None:
    """C14: Exchange is back; the post-event window starts."""
    with transaction(db.conn) as conn:
        row = conn.execute("SELECT phase FROM events WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise EngineError(f"no event {name!r}")
        if row[0] != "active":
            raise EngineError(f"event {name!r} is {row[0]}, not active")
        conn.execute("UPDATE events SET phase = 'ending', ended_at = ? WHERE name = ?", (now, name))
        if journal:
            journal(conn)


def poll(db: sqlite_utils.Database, now: float, events: list[str] | None = None) -> list[dict]:
    """One poll of every open event (or of `events`): decide, write, close what is due."""
    with transaction(db.conn) as conn:
        view = directory_at(conn, now)
        written = []
        for event in open_events(conn):
            if events is not None and event.name not in events:
                continue
            written.extend(_decide(conn, event, now, view))
            conn.execute("UPDATE events SET last_poll = ? WHERE id = ?", (now, event.id))
            if event.phase == "ending" and now >= event.closes_at:
                _close(conn, event, now)
    return written


def due_events(db: sqlite_utils.Database, now: float) -> list[str]:
    """Events whose next poll (C8) is due at `now`: the replay's virtual clock lands on it
    exactly, the daemon's wall clock at or after it."""
    return [e.name for e in open_events(db.conn) if now >= e.next_poll()]


# --- deciding -------------------------------------------------------------------------------

def _decide(conn: sqlite3.Connection, event: Event, now: float, view: directory_mod.DirectoryView) -> list[dict]:
    deltas: list[dict] = []
    for mailbox in event.mailboxes:
        addresses = sorted(view.addresses(mailbox))  # C19: exports indexed under an alias are the primary's
        since = event.reconciled[mailbox]
        if since is None:
            if event.phase not in ("reconciling", "active") or waiting_for_index(conn, addresses):
                continue  # C19: nothing is decided against an index that is not whole
            since = event.reconciled[mailbox] = now  # C3 at this moment: the index is whole now
            conn.execute("UPDATE event_mailboxes SET reconciled_at = ? WHERE event = ? AND mailbox = ?",
                         (now, event.id, mailbox))
        if event.phase in ("reconciling", "active"):
            deltas.extend(_decide_entries(conn, event, mailbox, now, view))
            deltas.extend(_decide_outbox(conn, event, mailbox, addresses, now))
        if event.phase in ("active", "ending"):
            deltas.extend(_decide_purges(conn, event, mailbox, addresses, since, now))
    return _append(conn, deltas)


def waiting_for_index(conn: sqlite3.Connection, addresses: list[str]) -> list[tuple[str, str]]:
    """(export, why) for each export of the mailbox never read successfully (C19). A
    mailbox with no known export has an empty index, which is whole."""
    marks = ", ".join("?" * len(addresses))
    return [(row[0], row[1] or "not read yet") for row in conn.execute(
        f"SELECT path, problem FROM exports WHERE mailbox IN ({marks}) AND good_at IS NULL ORDER BY path", addresses)]


_LOCAL_COLUMNS = ("s.path || '#' || l.locator, m.message_id, m.submit_ts, m.resent_key, m.sender,"
                  " m.recipients, m.subject_norm")


def _msg(row, offset: int = 0) -> rules.Msg:
    return rules.Msg(row[offset], row[offset + 1], row[offset + 2], row[offset + 3], row[offset + 4],
                     row[offset + 5])


ENTRY_CHUNK = 20_000  # entries decided per step of a poll: bounds memory, not behaviour

_ENTRY_COLUMNS = ("id, entry_id, address, kind, message_id, header_ts, resent_key, sender, recipients,"
                  " subject_norm, status, expired, message_class, fingerprint, subject, content")


def _decide_entries(conn, event: Event, mailbox: str, now: float, view) -> list[dict]:
    addresses = sorted(view.addresses(mailbox))
    groups = view.groups(mailbox) if event.expand_lists else set()
    marks = ", ".join("?" * len(addresses))
    # Entries are added at the engine's clock, so ids grow with visible_at: everything at or
    # below the cursor was decided by an earlier poll, and an idle poll reads nothing.
    cursor = conn.execute("SELECT entry_cursor FROM event_mailboxes WHERE event = ? AND mailbox = ?",
                          (event.id, mailbox)).fetchone()[0]
    ids = [row[0] for row in conn.execute(
        f"SELECT id FROM entries e WHERE e.id > ? AND e.visible_at <= ? AND ((e.kind = 'mailbox'"
        f" AND e.address IN ({marks})) OR (e.kind = 'group' AND ?)) AND NOT EXISTS (SELECT 1 FROM decided d"
        f" WHERE d.event = ? AND d.mailbox = ? AND d.entry = e.id)"
        f" ORDER BY e.visible_at, e.snapshot_id, e.page, e.position",
        (cursor, now, *addresses, int(event.expand_lists), event.id, mailbox))]
    if not ids:
        return []
    later = conn.execute("SELECT min(id) FROM entries WHERE id > ? AND visible_at > ?", (cursor, now)).fetchone()[0]
    conn.execute("UPDATE event_mailboxes SET entry_cursor = ? WHERE event = ? AND mailbox = ?",
                 (max(ids) if later is None else min(max(ids), later - 1), event.id, mailbox))
    delivered = rules.Delivered()
    for row in conn.execute("SELECT message_id, submit_ts, resent_key, sender, recipients, subject_norm"
                            " FROM deliveries WHERE event = ? AND mailbox = ?", (event.id, mailbox)):
        delivered.add(_msg(row))
    deltas: list[dict] = []
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_entry (position INTEGER PRIMARY KEY, id INTEGER)")
    for start in range(0, len(ids), ENTRY_CHUNK):
        conn.execute("DELETE FROM want_entry")
        conn.executemany("INSERT INTO want_entry VALUES (?, ?)", enumerate(ids[start:start + ENTRY_CHUNK]))
        rows = conn.execute(f"SELECT {', '.join('e.' + c.strip() for c in _ENTRY_COLUMNS.split(','))}"
                            f" FROM want_entry w CROSS JOIN entries e ON e.id = w.id ORDER BY w.position").fetchall()
        deltas.extend(_decide_chunk(conn, event, mailbox, now, view, addresses, groups, rows, delivered))
    return deltas


def _decide_chunk(conn, event: Event, mailbox: str, now: float, view, addresses: list[str], groups: set[str],
                  rows: list, delivered: rules.Delivered) -> list[dict]:
    outcomes: list[tuple] = []
    batch = []
    for row in rows:
        if row[3] == "group" and view.primary(row[2]) not in groups:
            outcomes.append((event.id, mailbox, row[0], "not-member"))  # C16: not retroactive
        else:
            batch.append(row)
    locals_by_mid, locals_by_key = _candidates(conn, addresses, batch)
    at = event.started_at if event.phase == "reconciling" else now
    deltas = []
    for row in batch:
        entry = rules.EntryIn(row[0], rules.Msg(row[4], row[5], row[6], row[7], row[8], row[9]),
                              row[10], bool(row[11]), row[12], row[13])
        key = (entry.msg.sender, entry.msg.subject_norm)
        seen: dict[str, rules.LocalIn] = {}
        for local in locals_by_mid.get(entry.msg.message_id, []) + locals_by_key.get(key, []):
            seen.setdefault(local.key, local)
        candidates = list(seen.values())
        peers = _peers(conn, now, addresses, groups, key, view) if any(
            rules.c5_match(entry.msg, c.msg) for c in candidates) else []
        decision = rules.decide_entry(entry, candidates, peers, delivered, event.calendar_items)
        outcomes.append((event.id, mailbox, entry.key, decision.outcome))
        if decision.action is None:
            continue
        delivering = decision.action == "deliver"
        deltas.append({"at": at, "event": event.name, "mailbox": mailbox, "action": decision.action,
                       "folder": "Inbox" if delivering else None,
                       "message_id": normalise.display_message_id(entry.msg.message_id), "subject": row[14],
                       "fingerprint": entry.fingerprint, "source": f"mimecast:{row[1]}",
                       "content": row[15] if delivering else None, "reason": decision.reason,
                       "_delivery": (event.id, entry.msg) if delivering else None})
    conn.executemany("INSERT INTO decided VALUES (?, ?, ?, ?)", outcomes)
    return deltas


def _candidates(conn, addresses: list[str], batch: list) -> tuple[dict, dict]:
    """Local locations in received-mail folders that share a Message-ID or a fallback key
    with any entry of the batch, looked up through temporary key tables. CROSS JOIN pins
    the order (keys, then the messages index, then locations by message): left to
    itself the planner may scan every location of the mailbox instead."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_mid (message_id TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_key (sender TEXT, subject_norm TEXT,"
                 " PRIMARY KEY (sender, subject_norm)) WITHOUT ROWID")
    conn.execute("DELETE FROM want_mid")
    conn.execute("DELETE FROM want_key")
    conn.executemany("INSERT OR IGNORE INTO want_mid VALUES (?)", [(r[4],) for r in batch if r[4]])
    conn.executemany("INSERT OR IGNORE INTO want_key VALUES (?, ?)", [(r[7], r[9]) for r in batch if r[7]])
    by_mid: dict[str, list[rules.LocalIn]] = defaultdict(list)
    by_key: dict[tuple, list[rules.LocalIn]] = defaultdict(list)
    marks = ", ".join("?" * len(addresses))
    for row in conn.execute(
            f"SELECT {_LOCAL_COLUMNS} FROM want_mid w CROSS JOIN messages m ON m.message_id = w.message_id"
            f" CROSS JOIN locations l ON l.message = m.id JOIN sources s ON s.id = l.source_id"
            f" WHERE l.mailbox IN ({marks}) AND l.received = 1", addresses):
        by_mid[row[1]].append(rules.LocalIn(row[0], _msg(row, 1)))
    for row in conn.execute(
            f"SELECT {_LOCAL_COLUMNS} FROM want_key w CROSS JOIN messages m ON m.sender = w.sender"
            f" AND m.subject_norm = w.subject_norm CROSS JOIN locations l ON l.message = m.id"
            f" JOIN sources s ON s.id = l.source_id WHERE l.mailbox IN ({marks}) AND l.received = 1", addresses):
        by_key[(row[4], row[6])].append(rules.LocalIn(row[0], _msg(row, 1)))
    return by_mid, by_key


def _peers(conn, now: float, addresses: list[str], groups: set[str], key: tuple, view) -> list[rules.EntryIn]:
    """Visible entries for this mailbox with the same fallback key (C5 ambiguity)."""
    peers = []
    for row in conn.execute(
            "SELECT id, address, kind, message_id, header_ts, resent_key, sender, recipients, subject_norm,"
            " fingerprint FROM entries WHERE sender = ? AND subject_norm = ? AND visible_at <= ?",
            (key[0], key[1], now)):
        mine = row[1] in addresses if row[2] == "mailbox" else view.primary(row[1]) in groups
        if mine:
            peers.append(rules.EntryIn(row[0], _msg(row, 3), None, False, "", row[9]))
    return peers


def _decide_outbox(conn, event: Event, mailbox: str, addresses: list[str], now: float) -> list[dict]:
    marks = ", ".join("?" * len(addresses))
    rows = conn.execute(
        f"SELECT {_LOCAL_COLUMNS}, m.identity, m.message_class, l.locator, l.folder, m.subject, m.fingerprint,"
        f" s.kind, s.path FROM locations l JOIN messages m ON m.id = l.message JOIN sources s ON s.id = l.source_id"
        f" WHERE l.mailbox IN ({marks}) AND l.role = 'outbox' AND NOT EXISTS (SELECT 1 FROM outbox_done o"
        f" WHERE o.event = ? AND o.mailbox = ? AND o.identity = m.identity) ORDER BY l.seen_at, l.id",
        (*addresses, event.id, mailbox)).fetchall()
    if not rows:
        return []
    sent = [rules.LocalIn(r[0], _msg(r, 1)) for r in conn.execute(
        f"SELECT {_LOCAL_COLUMNS} FROM locations l JOIN messages m ON m.id = l.message"
        f" JOIN sources s ON s.id = l.source_id WHERE l.mailbox IN ({marks}) AND l.role = 'sent'", addresses)]
    at = event.started_at if event.phase == "reconciling" else now
    deltas, done = [], set()
    for row in rows:
        identity = row[7]
        if identity in done:
            continue
        done.add(identity)
        item = rules.OutboxIn(identity, rules.LocalIn(row[0], _msg(row, 1)), row[8] or "IPM.Note")
        outcome, action, reason = rules.decide_outbox(item, sent, event.calendar_items)
        conn.execute("INSERT INTO outbox_done VALUES (?, ?, ?, ?)", (event.id, mailbox, identity, outcome))
        if action:
            deltas.append({"at": at, "event": event.name, "mailbox": mailbox, "action": action,
                           "folder": "Outbox", "message_id": normalise.display_message_id(row[1]),
                           "subject": row[11], "fingerprint": row[12], "source": f"local:{row[9]}",
                           "content": row[14] if row[13] in ("msg", "eml") else None, "reason": reason})
    return deltas


def _decide_purges(conn, event: Event, mailbox: str, addresses: list[str], since: float,
                   now: float) -> list[dict]:
    """C12, C14, C15: copies that appeared after the mailbox was reconciled (its event's
    start, or later when it waited for its index: C19) of what continuity delivered."""
    limit = now if event.closes_at is None else min(now, event.closes_at)
    marks = ", ".join("?" * len(addresses))
    rows = conn.execute(
        f"SELECT {_LOCAL_COLUMNS}, l.locator, l.folder, l.seen_at, m.subject, m.fingerprint, l.id"
        f" FROM locations l JOIN messages m ON m.id = l.message JOIN sources s ON s.id = l.source_id"
        f" WHERE l.mailbox IN ({marks}) AND l.received = 1 AND l.delivery_tag IS NULL AND l.seen_at > ?"
        f" AND l.seen_at <= ? AND m.message_id IN (SELECT message_id FROM deliveries"
        f"   WHERE event = ? AND mailbox = ?)"
        f" AND NOT EXISTS (SELECT 1 FROM purged p WHERE p.event = ? AND p.mailbox = ?"
        f"   AND p.location = l.id) ORDER BY l.seen_at, l.id",
        (*addresses, since, limit, event.id, mailbox, event.id, mailbox)).fetchall()
    deltas = []
    for row in rows:
        local = _msg(row, 1)
        delivered = [_msg(r) for r in conn.execute(
            "SELECT message_id, submit_ts, resent_key, sender, recipients, subject_norm FROM deliveries"
            " WHERE event = ? AND mailbox = ? AND message_id = ?", (event.id, mailbox, local.message_id))]
        if not rules.purge_match(local, delivered):
            continue
        conn.execute("INSERT INTO purged VALUES (?, ?, ?)", (event.id, mailbox, row[12]))
        late = event.ended_at is not None and row[9] > event.ended_at
        deltas.append({"at": now, "event": event.name, "mailbox": mailbox, "action": "purge",
                       "folder": row[8], "message_id": normalise.display_message_id(local.message_id),
                       "subject": row[10], "fingerprint": row[11], "source": f"local:{row[7]}",
                       "content": None,
                       "reason": "post-event-duplicate" if late else "exchange-duplicate"})
    return deltas


_DELTA_FIELDS = ("seq", "mailbox_seq", "at", "event", "mailbox", "action", "folder", "message_id", "subject",
                 "fingerprint", "source", "content", "reason")


def _append(conn: sqlite3.Connection, deltas: list[dict]) -> list[dict]:
    """Number the deltas (seq gap-free overall, mailbox_seq per mailbox) and write them,
    with the deliveries they record, inside the caller's transaction."""
    if not deltas:
        return []
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM deltas").fetchone()[0]
    per_mailbox: dict[str, int] = {}
    rows, deliveries, written = [], [], []
    for delta in deltas:
        mailbox = delta["mailbox"]
        if mailbox not in per_mailbox:
            per_mailbox[mailbox] = conn.execute("SELECT coalesce(max(mailbox_seq), 0) FROM deltas"
                                                " WHERE mailbox = ?", (mailbox,)).fetchone()[0]
        seq += 1
        per_mailbox[mailbox] += 1
        delta["seq"], delta["mailbox_seq"] = seq, per_mailbox[mailbox]
        delivery = delta.pop("_delivery", None)
        if delivery:
            event_id, msg = delivery
            deliveries.append((event_id, mailbox, seq, msg.message_id, msg.submit_ts, msg.resent_key,
                               msg.sender, msg.recipients, msg.subject_norm, delta["fingerprint"]))
        line = as_json(delta)
        written.append(line)
        rows.append(tuple(delta[f] for f in _DELTA_FIELDS) + (_ENCODE(line),))
    conn.executemany(f"INSERT INTO deltas ({', '.join(_DELTA_FIELDS)}, body)"
                     f" VALUES ({', '.join('?' * 14)})", rows)
    conn.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", deliveries)
    return written


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


def as_json(delta: dict) -> dict:
    """A delta as formats.md writes it: `at` as ISO 8601."""
    out = {f: delta[f] for f in _DELTA_FIELDS}
    out["at"] = normalise.iso(out["at"])
    return out


def delta_lines(db: sqlite_utils.Database, since: int = 0, limit: int = -1) -> list[tuple[str, int, bytes]]:
    """(mailbox, mailbox_seq, JSON line) after `seq` = since, in seq order: what the
    server publishes, encoded once when the delta was written."""
    return db.execute("SELECT mailbox, mailbox_seq, body FROM deltas WHERE seq > ? ORDER BY seq LIMIT ?",
                      (since, limit)).fetchall()


def deltas(db: sqlite_utils.Database, since: int = 0, limit: int = -1) -> list[dict]:
    """The log after `seq` = since, in seq order (at most `limit`, -1 for all)."""
    return [_DECODE(body) for _, _, body in delta_lines(db, since, limit)]


def deltas_for(db: sqlite_utils.Database, mailbox: str, since: int, limit: int) -> list[bytes]:
    """One mailbox's JSON lines after `mailbox_seq` = since, in order (a client's catch-up)."""
    return [row[0] for row in db.execute("SELECT body FROM deltas WHERE mailbox = ? AND mailbox_seq > ?"
                                         " ORDER BY mailbox_seq LIMIT ?", (mailbox, since, limit))]


# --- closing and status ---------------------------------------------------------------------

def _close(conn: sqlite3.Connection, event: Event, now: float) -> None:
    conn.execute("UPDATE events SET phase = 'closed', closed_at = ?, report = ? WHERE id = ?",
                 (now, json.dumps(report(conn, event.id)), event.id))


def report(conn: sqlite3.Connection, event_id: int) -> dict:
    """C14: delivered, deferred, purged, sent, matched, ambiguous-delivered, held, per mailbox."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("delivered", "deferred", "purged", "sent", "matched", "ambiguous-delivered", "held"), 0))
    for mailbox in (r[0] for r in conn.execute("SELECT mailbox FROM event_mailboxes WHERE event = ?", (event_id,))):
        counts[mailbox]
    for mailbox, outcome, n in conn.execute(
            "SELECT mailbox, outcome, count(*) FROM decided WHERE event = ? GROUP BY 1, 2", (event_id,)):
        if outcome == "ambiguous-delivered":  # delivered, and counted apart as well
            counts[mailbox]["delivered"] += n
        if outcome in counts[mailbox]:
            counts[mailbox][outcome] += n
    for mailbox, outcome, n in conn.execute(
            "SELECT mailbox, outcome, count(*) FROM outbox_done WHERE event = ? GROUP BY 1, 2", (event_id,)):
        if outcome in ("sent", "deferred"):  # already-sent items needed no delta
            counts[mailbox][outcome] += n
    for mailbox, n in conn.execute("SELECT mailbox, count(*) FROM purged WHERE event = ? GROUP BY 1", (event_id,)):
        counts[mailbox]["purged"] += n
    return dict(counts)


def status(db: sqlite_utils.Database) -> dict:
    events = []
    for row in db.query("SELECT * FROM events ORDER BY id"):
        mailboxes = [r[0] for r in db.execute("SELECT mailbox FROM event_mailboxes WHERE event = ?", (row["id"],))]
        events.append({"event": row["name"], "phase": row["phase"], "mailboxes": mailboxes,
                       "started": normalise.iso(row["started_at"]), "ended": normalise.iso(row["ended_at"]),
                       "closed": normalise.iso(row["closed_at"]),
                       "report": json.loads(row["report"]) if row["report"] else report(db.conn, row["id"])})
    errors = [{"file": r["file"], "reason": r["reason"]} for r in db.query(
        "SELECT file, reason FROM snapshot_errors ORDER BY rowid DESC LIMIT 10")]
    errors += [{"file": r["path"], "reason": r["reason"], "mailbox": r["mailbox"]} for r in db.query(
        "SELECT e.path, e.reason, s.mailbox FROM source_errors e JOIN sources s ON s.id = e.source_id"
        " ORDER BY e.rowid DESC LIMIT 10")]
    stale = [{"file": r["path"], "mailbox": r["mailbox"], "stale": r["stale"]} for r in db.query(
        "SELECT path, mailbox, stale FROM sources WHERE stale IS NOT NULL ORDER BY path")]
    return {"events": events, "deltas": db.execute("SELECT count(*) FROM deltas").fetchone()[0],
            "last_errors": errors, "waiting": waiting(db.conn), "stale": stale}


def waiting(conn: sqlite3.Connection) -> list[dict]:
    """Mailboxes of open events that wait for their index (C19): which export, and why."""
    found = []
    for event in open_events(conn):
        view = directory_at(conn, event.last_poll)
        for mailbox, reconciled in event.reconciled.items():
            if reconciled is None:
                found += [{"event": event.name, "mailbox": mailbox, "export": path, "why": why}
                          for path, why in waiting_for_index(conn, sorted(view.addresses(mailbox)))]
    return found
