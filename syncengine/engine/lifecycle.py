"""Events moving through time: start (reconcile), end, and the polls between (C1, C3, C8, C14).
Each writes its decisions and their deltas in one transaction (N1)."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from .. import coverage, normalise
from ..store import transaction
from .common import EngineError, get_settings
from .decide import _decide
from .events import _EVENT_SELECT, _event, check_event_name, open_events
from .ingest import directory_at
from .log import Written, next_seq
from .report import _close


def start_event(db: sqlite_utils.Database, name: str, mailboxes: list[str], expand_lists: bool,
                now: float, no_local_mail: list[str] = ()) -> Written:
    """C1, C3: create the event and reconcile each mailbox, in one transaction."""
    with transaction(db.conn) as conn:
        return start_event_in(conn, name, mailboxes, expand_lists, now, no_local_mail)


def start_event_in(conn: sqlite3.Connection, name: str, mailboxes: list[str], expand_lists: bool,
                   now: float, no_local_mail: list[str] = ()) -> Written:
    """start_event inside the caller's transaction (replay journals its step in it).
    `no_local_mail` names covered mailboxes declared to have no local mail at all (C19):
    with no export they are whole, and every entry is new to them."""
    check_event_name(name)
    try:
        named = [normalise.mailbox(m) for m in mailboxes]
        empty = [normalise.mailbox(m) for m in no_local_mail]
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    settings = get_settings(conn)
    view = directory_at(conn, now)
    wanted = sorted({view.primary(m) for m in named})
    if not wanted:
        raise EngineError("an event needs at least one mailbox")
    for mailbox in {view.primary(m) for m in empty}:
        if mailbox not in wanted:
            raise EngineError(f"--no-local-mail {mailbox}: not one of the event's mailboxes")
        coverage.declare_mailbox(conn, mailbox, True, now)
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
    first = next_seq(conn)
    _decide(conn, event, now, view)
    conn.execute("UPDATE events SET phase = 'active' WHERE id = ?", (event.id,))
    return Written(conn, first, next_seq(conn) - 1)


def end_event(db: sqlite_utils.Database, name: str, now: float) -> None:
    """C14: Exchange is back; the post-event window starts."""
    with transaction(db.conn) as conn:
        end_event_in(conn, name, now)


def end_event_in(conn: sqlite3.Connection, name: str, now: float) -> None:
    row = conn.execute("SELECT phase FROM events WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise EngineError(f"no event {name!r}")
    if row[0] != "active":
        raise EngineError(f"event {name!r} is {row[0]}, not active")
    conn.execute("UPDATE events SET phase = 'ending', ended_at = ? WHERE name = ?", (now, name))


def poll(db: sqlite_utils.Database, now: float, events: list[str] | None = None) -> Written:
    """One poll of every open event (or of `events`): decide, write, close what is due."""
    with transaction(db.conn) as conn:
        return poll_in(conn, now, events)


def poll_in(conn: sqlite3.Connection, now: float, events: list[str] | None = None) -> Written:
    """poll inside the caller's transaction."""
    view = directory_at(conn, now)
    first = next_seq(conn)
    for event in open_events(conn):
        if events is not None and event.name not in events:
            continue
        _decide(conn, event, now, view)
        conn.execute("UPDATE events SET last_poll = ? WHERE id = ?", (now, event.id))
        if event.phase == "ending" and now >= event.closes_at:
            _close(conn, event, now)
    return Written(conn, first, next_seq(conn) - 1)
