"""Closing an event with its report (C14), and the store's status."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict

import sqlite_utils

from .. import normalise
from .events import Event, waiting


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
                       "report": json.loads(row["report"]) if row["report"] else report(db.conn, row["id"]),
                       "kept": [dict(r) for r in db.query(
                           "SELECT mailbox, location, folder, message_id, subject, reason FROM kept_copies"
                           " WHERE event = ? ORDER BY seen_at, location", (row["id"],))]})
    errors = [{"file": r["file"], "reason": r["reason"]} for r in db.query(
        "SELECT file, reason FROM snapshot_errors ORDER BY rowid DESC LIMIT 10")]
    errors += [{"file": r["path"], "reason": r["reason"], "mailbox": r["mailbox"]} for r in db.query(
        "SELECT e.path, e.reason, s.mailbox FROM source_errors e JOIN sources s ON s.id = e.source_id"
        " ORDER BY e.rowid DESC LIMIT 10")]
    # a missing file is kept only while an event covers its mailbox; after that it counts for
    # nothing (the next index run drops it) and is no warning
    stale = [{"file": r["path"], "mailbox": r["mailbox"], "stale": r["stale"]} for r in db.query(
        "SELECT path, mailbox, stale FROM sources s WHERE stale IS NOT NULL AND (missing_since IS NULL OR EXISTS ("
        "  SELECT 1 FROM event_mailboxes m JOIN events e ON e.id = m.event"
        "  WHERE m.mailbox = s.mailbox AND e.phase != 'closed')) ORDER BY path")]
    # N1: a client whose acknowledgement is behind the log has deltas it has not applied
    # (a delivery whose content it could not fetch yet holds its acknowledgement back).
    clients = [{"client": r[0], "mailbox": r[1], "acked": r[2], "latest": r[3]} for r in db.execute(
        "SELECT a.client, a.mailbox, a.mailbox_seq, (SELECT max(mailbox_seq) FROM deltas d WHERE d.mailbox = a.mailbox)"
        " FROM client_acks a ORDER BY a.client, a.mailbox")]
    poller = [{"address": r[0], "last_success": normalise.iso(r[1]), "last_error": r[2], "error_at": normalise.iso(r[3]),
               "failures": r[4]} for r in db.execute(
        "SELECT address, last_success, last_error, error_at, failures FROM mimecast_health ORDER BY address")]
    return {"events": events, "deltas": db.execute("SELECT count(*) FROM deltas").fetchone()[0],
            "last_errors": errors, "waiting": waiting(db.conn), "stale": stale, "clients": clients,
            "mimecast": poller}
