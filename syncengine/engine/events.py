"""Events as the store holds them, and the queries about them: open, due, waiting (C1, C8, C19)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import sqlite_utils

from .. import coverage
from .common import EngineError
from .ingest import directory_at


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


def due_events(db: sqlite_utils.Database, now: float) -> list[str]:
    """Events whose next poll (C8) is due at `now`: the replay's virtual clock lands on it
    exactly, the daemon's wall clock at or after it."""
    return [e.name for e in open_events(db.conn) if now >= e.next_poll()]


def waiting(conn: sqlite3.Connection) -> list[dict]:
    """Mailboxes of open events that wait for their index (C19): which export, and why.
    A mailbox waits whenever a declared export has not read once, reconciled or not."""
    found = []
    for event in open_events(conn):
        view = directory_at(conn, event.last_poll)
        for mailbox in event.mailboxes:
            found += [{"event": event.name, "mailbox": mailbox, "export": path, "why": why}
                      for path, why in coverage.waiting_for_index(conn, sorted(view.addresses(mailbox)))]
    return found
