"""Deciding: the rules' inputs gathered from the store for one event and mailbox, the
rules applied, and their deltas appended (C3-C18, N2)."""

from __future__ import annotations

import bisect
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from .. import coverage, normalise, rules
from .. import directory as directory_mod
from ..store import in_parts
from .events import Event
from .log import _append, next_seq


def _decide(conn: sqlite3.Connection, event: Event, now: float, view: directory_mod.DirectoryView) -> None:
    """Decide and write this event's deltas, each step's as soon as it is decided (memory
    does not follow a reconcile's size). Purges look only at deliveries of earlier calls,
    as when a call's deltas were written at its end."""
    before = next_seq(conn)
    for mailbox in event.mailboxes:
        addresses = sorted(view.addresses(mailbox))  # C19: exports indexed under an alias are the primary's
        if coverage.waiting_for_index(conn, addresses):
            continue  # C19: nothing is decided against an index that is not whole, reconciled or not
        since = event.reconciled[mailbox]
        if since is None:
            if event.phase not in ("reconciling", "active"):
                continue
            since = event.reconciled[mailbox] = now  # C3 at this moment: the index is whole now
            conn.execute("UPDATE event_mailboxes SET reconciled_at = ? WHERE event = ? AND mailbox = ?",
                         (now, event.id, mailbox))
        if event.phase in ("reconciling", "active"):
            _decide_entries(conn, event, mailbox, now, view)
            _append(conn, _decide_outbox(conn, event, mailbox, addresses, now))
        if event.phase in ("active", "ending"):
            _append(conn, _decide_purges(conn, event, mailbox, addresses, since, now, before))


_LOCAL_COLUMNS = ("s.path || '#' || l.locator, m.message_id, m.submit_ts, m.resent_key, m.sender,"
                  " m.recipients, m.subject_norm")
# C19: a source that went missing counts only while the event it went missing in is open;
# a later event does not see it (the next index run drops it).
_PRESENT = "(s.missing_since IS NULL OR s.missing_since >= ?)"


def _msg(row, offset: int = 0) -> rules.Msg:
    return rules.Msg(row[offset], row[offset + 1], row[offset + 2], row[offset + 3], row[offset + 4],
                     row[offset + 5])


def _canonical(msg: rules.Msg, view: directory_mod.DirectoryView) -> rules.Msg:
    """The C5 fields with every alias standing for its primary (continuity.md, Words)."""
    if not view.primary_of:
        return msg
    recipients = normalise.recipients_key([view.primary(a) for a in msg.recipients.split("\t") if a])
    return rules.Msg(msg.message_id, msg.submit_ts, msg.resent_key,
                     view.primary(msg.sender) if msg.sender else None, recipients, msg.subject_norm)


ENTRY_CHUNK = 20_000  # entries decided per step of a poll: bounds memory, not behaviour

_ENTRY_COLUMNS = ("id, entry_id, address, kind, message_id, header_ts, resent_key, sender, recipients,"
                  " subject_norm, status, expired, message_class, fingerprint, subject, content")


def _decide_entries(conn, event: Event, mailbox: str, now: float, view) -> None:
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
        return
    later = conn.execute("SELECT min(id) FROM entries WHERE id > ? AND visible_at > ?", (cursor, now)).fetchone()[0]
    conn.execute("UPDATE event_mailboxes SET entry_cursor = ? WHERE event = ? AND mailbox = ?",
                 (max(ids) if later is None else min(max(ids), later - 1), event.id, mailbox))
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_entry (position INTEGER PRIMARY KEY, id INTEGER)")
    crowded = _Crowded()
    for start in range(0, len(ids), ENTRY_CHUNK):
        conn.execute("DELETE FROM want_entry")
        conn.executemany("INSERT INTO want_entry VALUES (?, ?)", enumerate(ids[start:start + ENTRY_CHUNK]))
        rows = conn.execute(f"SELECT {', '.join('e.' + c.strip() for c in _ENTRY_COLUMNS.split(','))}"
                            f" FROM want_entry w CROSS JOIN entries e ON e.id = w.id ORDER BY w.position").fetchall()
        _append(conn, _decide_chunk(conn, event, mailbox, now, view, addresses, groups, rows, crowded))


def _decide_chunk(conn, event: Event, mailbox: str, now: float, view, addresses: list[str], groups: set[str],
                  rows: list, crowded: _Crowded) -> list[dict]:
    outcomes: list[tuple] = []
    batch = []
    for row in rows:
        if row[3] == "group" and view.primary(row[2]) not in groups:
            outcomes.append((event.id, mailbox, row[0], "not-member"))  # C16: not retroactive
        else:
            batch.append(row)
    locals_by_mid, locals_by_key, timed = _candidates(conn, event, addresses, batch, view, crowded)
    delivered = _delivered(conn, event, mailbox, batch, view)
    at = event.started_at if event.phase == "reconciling" else now
    deltas = []
    plain = not view.primary_of
    c5_match = rules.c5_match
    for row in batch:
        msg = rules.Msg(row[4], row[5], row[6], row[7], row[8], row[9])
        if not plain:
            msg = _canonical(msg, view)
        entry = rules.EntryIn(row[0], msg, row[10], bool(row[11]), row[12], row[13])
        key = (msg.sender, msg.subject_norm)
        many = crowded.kept.get(msg.message_id) or timed.get(msg.message_id)
        by_mid = many.near(msg) if many else locals_by_mid.get(msg.message_id, ())
        by_key = locals_by_key.get(key, ())
        if by_key:
            seen: dict[str, rules.LocalIn] = {}
            for local in (*by_mid, *by_key):
                seen.setdefault(local.key, local)
            candidates = list(seen.values())
            peers = _peers(conn, now, addresses, groups, key, view) if any(
                c5_match(msg, c.msg) for c in candidates) else []
        else:  # the usual case: locations by Message-ID only, each listed once; both sides
            candidates, peers = by_mid, []  # have one, so none C5-matches and no peer counts
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


MANY_WITH_ONE_ID = 32  # locations of one Message-ID beyond which they are looked up by time


class _ByTime:
    """The locations of a Message-ID that is stamped on many messages (an application's
    `<noreply@...>`: 7,000 of a million-message mailbox), by submit time. An entry with
    that id can C4-match only those within C4_WINDOW of its time or without one, and
    C5-match none (both have a Message-ID): the rules given those decide as they do given
    all of them, without comparing each entry with thousands (issue 25)."""

    def __init__(self, locals_: list[rules.LocalIn]):
        self.every = locals_
        timed = sorted((local for local in locals_ if local.msg.submit_ts is not None),
                       key=lambda local: local.msg.submit_ts)
        self.times = [local.msg.submit_ts for local in timed]
        self.timed = timed
        self.untimed = [local for local in locals_ if local.msg.submit_ts is None]

    def near(self, msg: rules.Msg) -> list[rules.LocalIn]:
        if msg.submit_ts is None:
            return self.every
        low = bisect.bisect_left(self.times, msg.submit_ts - rules.C4_WINDOW)
        high = bisect.bisect_right(self.times, msg.submit_ts + rules.C4_WINDOW)
        return self.timed[low:high] + self.untimed


CROWDED_KEPT = 50_000  # locations of crowded Message-IDs kept from one chunk to the next


@dataclass
class _Crowded:
    """Message-IDs on more than MANY_WITH_ONE_ID locations, read once in a reconcile and
    kept for its later chunks while they hold at most CROWDED_KEPT locations (a chunk
    that read them again read 38,000 rows more of a million-item mailbox)."""
    kept: dict[str, _ByTime] = field(default_factory=dict)
    held: int = 0

    def sort_out(self, by_mid: dict[str, list[rules.LocalIn]]) -> dict[str, _ByTime]:
        """Crowded ids out of `by_mid`, each kept or, past the budget, returned for this chunk."""
        chunk = {}
        for mid in [mid for mid, found in by_mid.items() if len(found) > MANY_WITH_ONE_ID]:
            timed = _ByTime(by_mid.pop(mid))
            if self.held + len(timed.every) <= CROWDED_KEPT:
                self.kept[mid] = timed
                self.held += len(timed.every)
            else:
                chunk[mid] = timed
        return chunk


def _candidates(conn, event: Event, addresses: list[str], batch: list, view: directory_mod.DirectoryView,
                crowded: _Crowded) -> tuple[dict, dict, dict]:
    """Local locations in received-mail folders that share a Message-ID or a fallback key
    (sender by any of its addresses) with any entry of the batch, looked up through
    temporary key tables, and the crowded Message-IDs among them (those already kept are
    not read again). CROSS JOIN pins the order (keys, then the messages index, then
    locations by message): left to itself the planner may scan every location of the
    mailbox instead."""
    # kept: a crowded id read by an earlier chunk; its deliveries are still read (C8)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_mid (message_id TEXT PRIMARY KEY, kept INTEGER) WITHOUT ROWID")
    # every_local: an entry without a Message-ID has this key, so any local may C5-match it;
    # for entries with one, only locals without one can (C5), and those with the same
    # Message-ID come by want_mid already.
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_fallback (sender TEXT, subject_norm TEXT, every_local INTEGER,"
                 " PRIMARY KEY (sender, subject_norm)) WITHOUT ROWID")
    conn.execute("DELETE FROM want_mid")
    conn.execute("DELETE FROM want_fallback")
    conn.executemany("INSERT OR IGNORE INTO want_mid VALUES (?, ?)",
                     [(r[4], r[4] in crowded.kept) for r in batch if r[4]])
    spellings: dict[str, set[str]] = {}  # a chunk's senders repeat: each spelt once
    conn.executemany("INSERT INTO want_fallback VALUES (?, ?, ?) ON CONFLICT (sender, subject_norm)"
                     " DO UPDATE SET every_local = max(every_local, excluded.every_local)",
                     [(sender, r[9], int(not r[4])) for r in batch if r[7]
                      for sender in spellings.get(r[7]) or spellings.setdefault(r[7], _spellings(r[7], view))])
    by_mid: dict[str, list[rules.LocalIn]] = defaultdict(list)
    by_key: dict[tuple, list[rules.LocalIn]] = defaultdict(list)
    marks = ", ".join("?" * len(addresses))
    local_in, msg = rules.LocalIn, rules.Msg
    plain = not view.primary_of  # no aliases: every Msg is canonical as read (90,000 rows a chunk)
    for row in conn.execute(
            f"SELECT {_LOCAL_COLUMNS} FROM want_mid w CROSS JOIN messages m ON m.message_id = w.message_id"
            f" CROSS JOIN locations l ON l.message = m.id JOIN sources s ON s.id = l.source_id"
            f" WHERE w.kept = 0 AND l.mailbox IN ({marks}) AND l.received = 1 AND {_PRESENT}",
            (*addresses, event.started_at)):
        found = msg(row[1], row[2], row[3], row[4], row[5], row[6])
        by_mid[row[1]].append(local_in(row[0], found if plain else _canonical(found, view)))
    # Keys of entries without a Message-ID: every local with the key; of entries with one:
    # only locals without one, through the index that holds only those.
    for every_local, messages, without_id in (
            (1, "messages m", ""),
            (0, "messages m INDEXED BY messages_fallback_without_id", " AND (m.message_id IS NULL OR m.message_id = '')")):
        for row in conn.execute(
                f"SELECT {_LOCAL_COLUMNS} FROM want_fallback w CROSS JOIN {messages} ON m.sender = w.sender"
                f" AND m.subject_norm = w.subject_norm CROSS JOIN locations l ON l.message = m.id"
                f" JOIN sources s ON s.id = l.source_id WHERE w.every_local = ? AND l.mailbox IN ({marks})"
                f" AND l.received = 1{without_id} AND {_PRESENT}",
                (every_local, *addresses, event.started_at)):
            local = _canonical(_msg(row, 1), view)
            by_key[(local.sender, local.subject_norm)].append(rules.LocalIn(row[0], local))
    return by_mid, by_key, crowded.sort_out(by_mid)


def _delivered(conn, event: Event, mailbox: str, batch: list, view: directory_mod.DirectoryView) -> rules.Delivered:
    """What this event delivered to this mailbox that the batch's entries could be (C8,
    C17): by their Message-IDs (the keys _candidates just listed) and, for entries without
    one, their fingerprints (C5). Earlier chunks' deliveries are in the log already; the
    batch's own join as they are decided. Memory follows the batch, not the event."""
    delivered = rules.Delivered()
    for row in conn.execute(
            "SELECT d.message_id, d.submit_ts, d.resent_key, d.sender, d.recipients, d.subject_norm, d.fingerprint"
            " FROM want_mid w CROSS JOIN deliveries d ON d.event = ? AND d.mailbox = ? AND d.message_id = w.message_id",
            (event.id, mailbox)):
        delivered.add(_canonical(_msg(row), view), row[6])
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS want_fingerprint (fingerprint TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM want_fingerprint")
    conn.executemany("INSERT OR IGNORE INTO want_fingerprint VALUES (?)", [(r[13],) for r in batch if not r[4]])
    for (fingerprint,) in conn.execute(
            "SELECT d.fingerprint FROM want_fingerprint w CROSS JOIN deliveries d ON d.event = ? AND d.mailbox = ?"
            " AND d.fingerprint = w.fingerprint WHERE d.message_id IS NULL OR d.message_id = ''", (event.id, mailbox)):
        delivered.without_mid.add(fingerprint)
    return delivered


def _spellings(sender: str, view: directory_mod.DirectoryView) -> set[str]:
    """Every address a sender may be written with: itself, its primary and their aliases."""
    return {sender} | view.addresses(sender)


def _peers(conn, now: float, addresses: list[str], groups: set[str], key: tuple, view) -> list[rules.EntryIn]:
    """Visible entries for this mailbox with the same fallback key (C5 ambiguity)."""
    peers = []
    senders = sorted(_spellings(key[0], view))
    for row in conn.execute(
            f"SELECT id, address, kind, message_id, header_ts, resent_key, sender, recipients, subject_norm,"
            f" fingerprint FROM entries WHERE sender IN ({', '.join('?' * len(senders))}) AND subject_norm = ?"
            f" AND visible_at <= ?", (*senders, key[1], now)):
        mine = view.primary(row[1]) in addresses if row[2] == "mailbox" else view.primary(row[1]) in groups
        if mine:
            peers.append(rules.EntryIn(row[0], _canonical(_msg(row, 3), view), None, False, "", row[9]))
    return peers


def _decide_outbox(conn, event: Event, mailbox: str, addresses: list[str], now: float) -> list[dict]:
    marks = ", ".join("?" * len(addresses))
    # INDEXED BY: the Outbox holds a few items, but left to itself the planner walks every
    # location of the mailbox in seen_at order to skip a sort (120 ms a poll at 1M items)
    rows = conn.execute(
        f"SELECT {_LOCAL_COLUMNS}, m.identity, m.message_class, l.locator, l.folder, m.subject, m.fingerprint,"
        f" s.kind, s.path FROM locations l INDEXED BY locations_mailbox_role JOIN messages m ON m.id = l.message"
        f" JOIN sources s ON s.id = l.source_id"
        f" WHERE l.mailbox IN ({marks}) AND l.role = 'outbox' AND {_PRESENT} AND NOT EXISTS (SELECT 1"
        f" FROM outbox_done o WHERE o.event = ? AND o.mailbox = ? AND o.identity = m.identity)"
        f" ORDER BY l.seen_at, l.id", (*addresses, event.started_at, event.id, mailbox)).fetchall()
    if not rows:
        return []
    # C13 compares by C4, which needs the same Message-ID: only Sent Items sharing one with
    # the Outbox are read (a mailbox keeps 150,000 of them; the Outbox holds a few).
    mids = sorted({r[1] for r in rows if r[1]})
    sent = [rules.LocalIn(r[0], _msg(r, 1)) for part, ids in in_parts(mids) for r in conn.execute(
        f"SELECT {_LOCAL_COLUMNS} FROM messages m CROSS JOIN locations l ON l.message = m.id"
        f" JOIN sources s ON s.id = l.source_id WHERE m.message_id IN ({ids})"
        f" AND l.mailbox IN ({marks}) AND l.role = 'sent' AND {_PRESENT}", (*part, *addresses, event.started_at))]
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
                   now: float, before: int) -> list[dict]:
    """C12, C14, C15: copies that appeared after the mailbox was reconciled (its event's
    start, or later when it waited for its index: C19) of what continuity delivered.
    Never a baseline location (the mailbox's own mail before the engine knew it, C19),
    a file already gone, or continuity's own delivery coming back (a tag that is ours)."""
    limit = now if event.closes_at is None else min(now, event.closes_at)
    marks = ", ".join("?" * len(addresses))
    rows = conn.execute(
        f"SELECT {_LOCAL_COLUMNS}, l.locator, l.folder, l.seen_at, m.subject, m.fingerprint, l.id, l.delivery_tag"
        f" FROM locations l JOIN messages m ON m.id = l.message JOIN sources s ON s.id = l.source_id"
        f" WHERE l.mailbox IN ({marks}) AND l.received = 1 AND l.baseline = 0 AND s.missing_since IS NULL"
        f" AND l.seen_at > ? AND l.seen_at <= ? AND m.message_id IN (SELECT message_id FROM deliveries"
        f"   WHERE event = ? AND mailbox = ? AND seq < ?)"
        f" AND NOT EXISTS (SELECT 1 FROM purged p WHERE p.event = ? AND p.mailbox = ?"
        f"   AND p.location = l.id) ORDER BY l.seen_at, l.id",
        (*addresses, since, limit, event.id, mailbox, before, event.id, mailbox)).fetchall()
    deltas = []
    for row in rows:
        local = _msg(row, 1)
        if row[13] is not None and _ours(conn, event, mailbox, row[13], local, before):
            continue
        delivered = [_msg(r) for r in conn.execute(
            "SELECT message_id, submit_ts, resent_key, sender, recipients, subject_norm FROM deliveries"
            " WHERE event = ? AND mailbox = ? AND message_id = ? AND seq < ?",
            (event.id, mailbox, local.message_id, before))]
        if not rules.purge_match(local, delivered):  # kept: said in the report and status, once
            conn.execute("INSERT INTO kept_copies VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (event.id, mailbox, row[0], row[8], normalise.display_message_id(local.message_id),
                          row[10], rules.not_purged_because(local, delivered), now))
            continue
        conn.execute("INSERT INTO purged VALUES (?, ?, ?)", (event.id, mailbox, row[12]))
        late = event.ended_at is not None and row[9] > event.ended_at
        deltas.append({"at": now, "event": event.name, "mailbox": mailbox, "action": "purge",
                       "folder": row[8], "message_id": normalise.display_message_id(local.message_id),
                       "subject": row[10], "fingerprint": row[11], "source": f"local:{row[7]}",
                       "content": None,
                       "reason": "post-event-duplicate" if late else "exchange-duplicate"})
    return deltas


def _ours(conn, event: Event, mailbox: str, tag: str, local: rules.Msg, before: int) -> bool:
    """C12: an `X-Syncengine-Delivery: <event>/<seq>` tag counts only when it names a delivery
    of this event to this mailbox of the same message (C4). Any other value (another event,
    a seq that does not exist, another message's delivery, a malformed one) is ignored:
    mail from outside cannot shield its own Exchange copy from a purge."""
    name, _, seq = tag.strip().rpartition("/")
    if name != event.name or not (seq.isascii() and seq.isdigit()) or len(seq) > 18 or int(seq) >= before:
        return False
    row = conn.execute("SELECT message_id, submit_ts, resent_key, sender, recipients, subject_norm FROM deliveries"
                       " WHERE event = ? AND mailbox = ? AND seq = ?", (event.id, mailbox, int(seq))).fetchone()
    return row is not None and rules.c4_match(local, _msg(row))
