"""Coverage (C19): which exports make up each mailbox, and whether its index is whole.

Coverage is declared, not discovered. An export belongs to its mailbox from the moment
it is declared (the daemon's config, `index PATH --mailbox M`, a replay's scenario), before
its first read; a mailbox is whole once every declared export has read once. One state
per export, in the `exports` table:

    declared   good_at NULL, never read: its mailbox waits for its index
    good       good_at set by its first successful read (which was a baseline)
    lost       gone outside an event: good_at NULL again, its mailbox waits until it
               reads again or is forgotten
    forgotten  the row is gone: `syncengine forget PATH`, said by the user

A mailbox with no declared export waits too, unless it is declared to have no local
mail (`mailboxes.no_local_mail`): then its index is whole and empty.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

NO_EXPORT = ("no export declared: add its PST/OST or folder to the config's [[mailbox]] exports "
             "(or run `syncengine index PATH --mailbox ADDRESS`), or declare it has none "
             "(no_local_mail = true, or `event start --no-local-mail ADDRESS`)")


class CoverageError(ValueError):
    """A declaration that cannot hold; the text says why."""


def declare_exports(conn: sqlite3.Connection, mailbox: str, paths: Iterable[str], now: float) -> list[str]:
    """Record each export (an absolute path) for `mailbox` inside the caller's transaction;
    one declared before keeps its state. Returns the paths that are new. An export
    declared for another mailbox is refused (one export belongs to one mailbox)."""
    added = []
    for path in paths:
        row = conn.execute("SELECT mailbox FROM exports WHERE path = ?", (path,)).fetchone()
        if row is not None:
            if row[0] != mailbox:
                raise CoverageError(f"{path}: already indexed for mailbox {row[0]}; one export belongs to one mailbox")
            continue
        conn.execute("INSERT INTO exports (path, mailbox, good_at, checked_at, problem, declared_at)"
                     " VALUES (?, ?, NULL, ?, NULL, ?)", (path, mailbox, now, now))
        added.append(path)
    return added


def declare_mailbox(conn: sqlite3.Connection, address: str, no_local_mail: bool, now: float) -> None:
    """Whether `address` is declared to have no local mail at all (inside the caller's
    transaction). Its declared exports, if any, still have to read before it is whole."""
    conn.execute("INSERT INTO mailboxes VALUES (?, ?, ?) ON CONFLICT (address) DO UPDATE"
                 " SET no_local_mail = excluded.no_local_mail, declared_at = excluded.declared_at"
                 " WHERE mailboxes.no_local_mail != excluded.no_local_mail", (address, int(no_local_mail), now))


def waiting_for_index(conn: sqlite3.Connection, addresses: list[str]) -> list[tuple[str | None, str]]:
    """(export, why) for each declared export of the mailbox (its primary address and
    aliases) that has not read once; (None, why) when it has no export and is not
    declared to have no local mail. Empty: the index is whole."""
    marks = ", ".join("?" * len(addresses))
    rows = conn.execute(f"SELECT path, good_at, problem FROM exports WHERE mailbox IN ({marks}) ORDER BY path",
                        addresses).fetchall()
    if not rows:
        declared = conn.execute(f"SELECT 1 FROM mailboxes WHERE address IN ({marks}) AND no_local_mail = 1",
                                addresses).fetchone()
        return [] if declared else [(None, NO_EXPORT)]
    return [(path, problem or "not read yet") for path, good_at, problem in rows if good_at is None]


def record_read(conn: sqlite3.Connection, mailbox: str, path: str, problem: str | None, lost: bool,
                now: float) -> None:
    """The outcome of reading a declared export (inside the caller's transaction). It is
    good once it has read; `good_at` keeps the first such time. A lost export (gone, and
    its locations with it) no longer counts as read: its mailbox waits again (C19)."""
    conn.execute(
        "INSERT INTO exports (path, mailbox, good_at, checked_at, problem, declared_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (path) DO UPDATE SET"
        " good_at = CASE WHEN ? THEN NULL ELSE coalesce(exports.good_at, excluded.good_at) END,"
        " checked_at = excluded.checked_at, problem = excluded.problem",
        (path, mailbox, None if problem else now, now, problem, now, lost))


def is_read(conn: sqlite3.Connection, path: str) -> bool:
    """Has the export at `path` read once (so that what appears in it now is an arrival)?"""
    row = conn.execute("SELECT good_at FROM exports WHERE path = ?", (path,)).fetchone()
    return row is not None and row[0] is not None


def forget(conn: sqlite3.Connection, path: str) -> None:
    """The export is no longer part of its mailbox (inside the caller's transaction)."""
    conn.execute("DELETE FROM exports WHERE path = ?", (path,))


def exports_of(conn: sqlite3.Connection, mailbox: str) -> list[str]:
    """The exports declared for `mailbox`, in path order."""
    return [r[0] for r in conn.execute("SELECT path FROM exports WHERE mailbox = ? ORDER BY path", (mailbox,))]
