"""The apply loop: each delta of one mailbox, in order, carried out once.

A small journal (SQLite, a dot-file in the mailbox folder, which the index passes over)
records each delta applied, in the transaction that makes it so, after its effect is
durable; only then is the delta acknowledged. It keys on the store's id as well as the
mailbox and mailbox_seq: a rebuilt store numbers its deltas from 1 again, and they are
its own. A restart re-applies nothing. A send that was in flight when the client died
(the relay may or may not have it) is sent again with identical bytes, so receiving
servers that dedupe by Message-ID see one message; the report counts it as
resent-in-doubt.

Sends are kept per recipient, as a mail program keeps them: a send is `sent` only when
the relay accepted every recipient. A temporary refusal (450, 451, 452: greylisting,
too many recipients) is tried again in a later transaction with the same bytes, to
those recipients only, with backoff; a permanent one (5xx) is recorded with the relay's
answer. What was refused is `partial` (in Sent Items) or `failed` (left in the Outbox),
listed by `syncengine apply --status`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from .mailbox import ApplyError, Layout, Pending, Smtp, SmtpUnavailable, submission

log = logging.getLogger("syncengine.apply")

JOURNAL = ".syncengine-apply.db"
RETRY_FIRST = 2.0      # seconds before something pending is tried again; doubled each time
RETRY_MAX = 300.0
ONCE_PATIENCE = 10.0   # --once waits for a likely retry due within this long (the first two: 2 s, 4 s)
SEND_ATTEMPTS = 12     # transactions for a temporarily refused recipient (about half an hour)


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    pending: dict[int, str] = field(default_factory=dict)  # mailbox_seq -> what is still waiting, and why
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing to apply"]
        out += [f"pending #{seq}: {what}; not acknowledged, tried again later" for seq, what in sorted(self.pending.items())]
        return out + self.problems


_TABLES = (
    "CREATE TABLE IF NOT EXISTS applied (store TEXT, mailbox TEXT, mailbox_seq INTEGER, action TEXT, outcome TEXT,"
    " PRIMARY KEY (store, mailbox, mailbox_seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sending (store TEXT, mailbox TEXT, mailbox_seq INTEGER,"
    " PRIMARY KEY (store, mailbox, mailbox_seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sends (store TEXT, mailbox TEXT, mailbox_seq INTEGER, locator TEXT, message_id TEXT,"
    " subject TEXT, outcome TEXT, at REAL, PRIMARY KEY (store, mailbox, mailbox_seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS recipients (store TEXT, mailbox TEXT, mailbox_seq INTEGER, recipient TEXT,"
    " state TEXT, code INTEGER, reply TEXT, attempts INTEGER, at REAL,"
    " PRIMARY KEY (store, mailbox, mailbox_seq, recipient)) WITHOUT ROWID",
)


class Journal:
    def __init__(self, root: Path):
        files.private_dir(root)
        path = root / JOURNAL
        try:
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # an applied delta stays applied after a power loss
            self._keyed_by_store()
            for table in _TABLES:
                self.conn.execute(table)
        except sqlite3.DatabaseError as exc:
            raise ApplyError(f"{path}: not a usable apply journal ({exc}). It records what was applied and "
                             "sent: moved away, every delta since the last acknowledgement is applied again "
                             "(deliveries are not written twice; sends in it would go out again)") from None
        os.chmod(path, 0o600)
        self._stores: set[str] = set()

    def _keyed_by_store(self) -> None:
        """A journal from before stores had ids: its rows belong to the first store met."""
        for table in ("applied", "sending"):
            columns = [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]
            if columns and "store" not in columns:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(f"ALTER TABLE {table} RENAME TO {table}_unkeyed")
                self.conn.execute(next(t for t in _TABLES if f"EXISTS {table} " in t))
                self.conn.execute(f"INSERT INTO {table} SELECT '', * FROM {table}_unkeyed")
                self.conn.execute(f"DROP TABLE {table}_unkeyed")
                self.conn.execute("COMMIT")

    def meet(self, store: str, mailbox: str) -> None:
        """The store this mailbox's deltas come from now. Rows from before store ids are
        adopted by it; a folder that took deltas from another store says so (its deltas,
        numbered from 1 again, are applied as its own, never skipped)."""
        if (store, mailbox) in self._stores:
            return
        self._stores.add((store, mailbox))
        self.conn.execute("UPDATE applied SET store = ? WHERE store = '' AND mailbox = ?", (store, mailbox))
        self.conn.execute("UPDATE sending SET store = ? WHERE store = '' AND mailbox = ?", (store, mailbox))
        other = self.conn.execute("SELECT store, count(*) FROM applied WHERE mailbox = ? AND store != ?"
                                  " GROUP BY store", (mailbox, store)).fetchall()
        for old, count in other:
            log.warning("this folder applied %d delta(s) of %s from store %s; store %s is another one (rebuilt, or a "
                        "new db): its deltas are applied as its own", count, mailbox, old, store)

    def done(self, key: tuple) -> bool:
        return self.conn.execute("SELECT 1 FROM applied WHERE store = ? AND mailbox = ? AND mailbox_seq = ?",
                                 key).fetchone() is not None

    def record(self, key: tuple, action: str, outcome: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT OR IGNORE INTO applied VALUES (?, ?, ?, ?, ?)", (*key, action, outcome))
        self.conn.execute("DELETE FROM sending WHERE store = ? AND mailbox = ? AND mailbox_seq = ?", key)
        self.conn.execute("UPDATE sends SET outcome = ?, at = ? WHERE store = ? AND mailbox = ? AND mailbox_seq = ?",
                          (outcome, time.time(), *key))
        self.conn.execute("COMMIT")

    def in_doubt(self, key: tuple) -> bool:
        """Mark a send as in flight; True when it already was (the client died mid-send)."""
        if self.conn.execute("SELECT 1 FROM sending WHERE store = ? AND mailbox = ? AND mailbox_seq = ?",
                             key).fetchone():
            return True
        self.conn.execute("INSERT INTO sending VALUES (?, ?, ?)", key)
        return False

    def recipients(self, key: tuple) -> dict[str, tuple[str, int | None, str | None, int]]:
        """recipient -> (state, code, reply, attempts) for one send."""
        return {r[0]: tuple(r[1:]) for r in self.conn.execute(
            "SELECT recipient, state, code, reply, attempts FROM recipients WHERE store = ? AND mailbox = ?"
            " AND mailbox_seq = ?", key)}

    def answered(self, key: tuple, delta: dict, tried: list[str], refused: dict) -> None:
        """What the relay said to one transaction, per recipient, and the send no longer in
        doubt (the relay's answers say what it has)."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT OR IGNORE INTO sends VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                          (*key, delta.get("source"), delta.get("message_id"), delta.get("subject"), now))
        for recipient in tried:
            refusal = refused.get(recipient)
            attempts = (self.conn.execute(
                "SELECT attempts FROM recipients WHERE store = ? AND mailbox = ? AND mailbox_seq = ? AND recipient = ?",
                (*key, recipient)).fetchone() or (0,))[0] + 1
            if refusal is None:
                state, code, reply = "accepted", 250, None
            elif refusal.temporary and attempts < SEND_ATTEMPTS:
                state, code, reply = "temporary", refusal.code, refusal.reply
            else:
                state, code, reply = "refused", refusal.code, refusal.reply + (
                    f" (given up after {attempts} attempts)" if refusal.temporary else "")
            self.conn.execute("INSERT OR REPLACE INTO recipients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (*key, recipient, state, code, reply, attempts, now))
        self.conn.execute("DELETE FROM sending WHERE store = ? AND mailbox = ? AND mailbox_seq = ?", key)
        self.conn.execute("COMMIT")

    def unsent(self) -> list[dict]:
        """Sends not sent to every recipient: partial, failed, or still trying."""
        out = []
        for store, mailbox, seq, locator, mid, subject, outcome, at in self.conn.execute(
                "SELECT * FROM sends WHERE outcome != 'sent' ORDER BY at"):
            recipients = self.recipients((store, mailbox, seq))
            out.append({"mailbox": mailbox, "mailbox_seq": seq, "store": store, "source": locator, "message_id": mid,
                        "subject": subject, "outcome": outcome, "recipients": [
                            {"recipient": r, "state": v[0], "code": v[1], "reply": v[2], "attempts": v[3]}
                            for r, v in sorted(recipients.items()) if v[0] != "accepted"]})
        return out

    def close(self) -> None:
        self.conn.close()


class Applier:
    def __init__(self, layout: Layout, smtp: Smtp | None, fetch, store, report: Report | None = None):
        self.layout = layout
        self.smtp = smtp
        self.fetch = fetch  # (delta) -> bytes | None: the content over the protocol
        self.store = store  # () -> the store's id (known once the client has caught up)
        self.journal = Journal(layout.root)
        self.report = report or Report()

    def _key(self, delta: dict) -> tuple:
        store = self.store()
        self.journal.meet(store, delta["mailbox"])
        return store, delta["mailbox"], delta["mailbox_seq"]

    def apply(self, delta: dict) -> str | None:
        """Carry out one delta; its outcome, or None when it was applied before."""
        key = self._key(delta)
        if self.journal.done(key):
            return None
        try:
            outcome = getattr(self, "_" + delta["action"])(delta, key)
        except ApplyError as exc:
            outcome = "failed"
            self.report.problems.append(f"#{delta['mailbox_seq']} {delta['action']}: {exc}")
            log.error("delta %d (%s) not applied: %s", delta["mailbox_seq"], delta["action"], exc)
        self.journal.record(key, delta["action"], outcome)
        self.report.counts[outcome] += 1
        log.info("applied #%d %s: %s", delta["mailbox_seq"], delta["action"], outcome)
        return outcome

    def _deliver(self, delta: dict, key: tuple) -> str:
        """N1: only a delivery that is in the mailbox is acknowledged. One whose content
        cannot be had now stays pending: the engine may get it later (Mimecast's part
        fetched again), and the deliveries after it go on meanwhile."""
        raw = self._content(delta)
        if raw is None:
            raise Pending(f"{delta.get('message_id') or '(no Message-ID)'} {delta.get('subject') or ''}".rstrip()
                          + ": its content cannot be fetched yet")
        self.layout.deliver(raw, delta["event"], delta["seq"], delta["mailbox"], key[0])
        return "delivered"

    def _content(self, delta: dict) -> bytes | None:
        if delta.get("content") is not None:
            try:
                return files.read_regular(Path(delta["content"]))
            except OSError:
                pass  # another machine: the engine's files are not ours to read
        return self.fetch(delta)  # the engine may have it now, though the delta said null

    def _purge(self, delta: dict, key: tuple) -> str:
        outcome = self.layout.purge(_locator(delta), delta.get("message_id"))
        if outcome == "mismatch":
            self.report.problems.append(f"#{delta['mailbox_seq']} purge of {_locator(delta)}: the file no longer "
                                        f"holds {delta.get('message_id')}; nothing removed")
        return outcome

    def _send(self, delta: dict, key: tuple) -> str:
        if self.smtp is None:
            raise ApplyError("no --smtp relay configured; the Outbox item stays")
        path = self.layout.local(_locator(delta))
        if not path.exists():
            raise ApplyError(f"{_locator(delta)} is no longer in the Outbox")
        if path.suffix.lower() == ".msg":
            raise ApplyError("an Outbox item saved as .msg has no RFC 822 bytes to send")
        try:
            raw = files.read_regular(path)  # never a FIFO, never through a symlink
        except OSError as exc:
            raise ApplyError(f"{_locator(delta)}: {exc.strerror or exc}") from None
        sender, recipients, data = submission(raw)
        if not sender or not recipients:
            raise ApplyError("the message has no From or no recipients")
        states = self.journal.recipients(key)
        due = [r for r in recipients if states.get(r, ("new",))[0] in ("new", "temporary")]
        if due:
            doubtful = self.journal.in_doubt(key)
            try:
                refused = self.smtp.send(data, sender, due)
            except SmtpUnavailable as exc:  # the relay is away: this send waits, the deltas after it go on
                raise Pending(f"SMTP: {exc}") from None
            self.journal.answered(key, delta, due, refused)
            if doubtful:
                self.report.counts["resent-in-doubt"] += 1
            states = self.journal.recipients(key)
        waiting = {r: s for r, s in states.items() if s[0] == "temporary"}
        if waiting:
            first = next(iter(waiting.values()))
            raise Pending(f"{len(waiting)} of {len(recipients)} recipient(s) refused for now ({first[1]} {first[2]});"
                          " sent to them in a later transaction", soon=True)
        refused = {r: s for r, s in states.items() if s[0] == "refused"}
        for recipient, (_, code, reply, _) in sorted(refused.items()):
            self.report.problems.append(f"#{delta['mailbox_seq']} send {delta.get('message_id') or ''}: "
                                        f"{recipient} refused: {code} {reply}")
        if len(refused) == len(recipients):
            return "failed"  # as a mail program shows "not sent": it stays in the Outbox
        self.layout.move_to_sent(path)
        return "partial" if refused else "sent"

    def _defer(self, delta: dict, key: tuple) -> str:
        log.info("deferred: %s (%s)", delta.get("message_id") or delta.get("subject"), delta.get("reason"))
        return "deferred"

    def close(self) -> None:
        self.journal.close()


def run(applier: Applier, listener, mailbox: str, stop: threading.Event, idle: float | None = None) -> Report:
    """Apply each delta of `mailbox` as it arrives, acknowledging what is durable; with
    `idle`, return after that many seconds with nothing new (apply what is pending).

    Acknowledgements count up to a mailbox_seq (the server keeps the highest), so only
    the unbroken run of applied deltas is acknowledged: something pending (a delivery
    whose content cannot be had yet, a send the relay cannot take yet) holds the
    acknowledgement back (and a restart brings it again) but not the deltas after it,
    which are applied and journalled meanwhile."""
    acked: int | None = None      # the last mailbox_seq acknowledged
    applied: set[int] = set()     # applied beyond it
    waiting: dict[int, list] = {}  # mailbox_seq -> [delta, when to try again, backoff]
    heard = time.monotonic()
    for delta in listener.deltas(tick=min(idle, 1.0) if idle else 1.0):
        if delta is not None:
            heard = time.monotonic()
            if delta["mailbox"] == mailbox:
                if acked is None:  # a catch-up starts right after the last acknowledgement
                    acked = delta["mailbox_seq"] - 1
                if _attempt(applier, delta, waiting):
                    applied.add(delta["mailbox_seq"])
        now = time.monotonic()
        if idle is not None and now - heard > idle and not any(item[0]["_soon"] and item[1] - now < ONCE_PATIENCE
                                                               for item in waiting.values()):
            break  # --once: nothing new, and no retry due soon that is likely to work
        for seq, (pending, due, _) in sorted(waiting.items()):
            if due <= now and _attempt(applier, pending, waiting):
                applied.add(seq)
        if acked is not None and acked + 1 in applied:
            while acked + 1 in applied:
                acked += 1
                applied.discard(acked)
            listener.ack(mailbox, acked)
        if stop.is_set():
            break
    applier.report.pending = {seq: str(item[0].get("_pending")) for seq, item in waiting.items()}
    return applier.report


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _no_room(exc: Exception) -> str | None:
    """Why a write found no room (the mailbox folder's disk, the journal's), or None when
    the error is something else. Such a delta waits for room, as one without content waits."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return f"no room to write it ({exc.strerror}{': ' + str(exc.filename) if exc.filename else ''})"
    if isinstance(exc, sqlite3.OperationalError) and "disk" in str(exc):  # "database or disk is full", I/O
        return f"its journal entry cannot be written ({exc})"
    return None


def _attempt(applier: Applier, delta: dict, waiting: dict) -> bool:
    """Apply one delta: True once it is applied (now or before); False when it waits."""
    try:
        try:
            applier.apply(delta)
        except (OSError, sqlite3.OperationalError) as exc:
            why = _no_room(exc)
            if why is None:
                raise
            raise Pending(why) from exc  # a delivery is named by its delta: written again, never twice
    except Pending as exc:
        seq = delta["mailbox_seq"]
        backoff = RETRY_FIRST if seq not in waiting else min(waiting[seq][2] * 2, RETRY_MAX)
        delta["_pending"], delta["_soon"] = str(exc), exc.soon
        waiting[seq] = [delta, time.monotonic() + backoff, backoff]
        log.warning("delta %d pending: %s; trying again in %.0f s", seq, exc, backoff)
        return False
    waiting.pop(delta["mailbox_seq"], None)
    return True


def _locator(delta: dict) -> str:
    source = delta.get("source") or ""
    if not source.startswith("local:"):
        raise ApplyError(f"source {source!r} is not a local file")
    return source[len("local:"):]
