"""The apply loop: each delta of one mailbox, in order, carried out once.

A small journal (SQLite, a dot-file in the mailbox folder, which the index passes over)
records each delta applied, in the transaction that makes it so, after its effect is
durable; only then is the delta acknowledged. A restart re-applies nothing. A send that
was in flight when the client died (the relay may or may not have it) is sent again with
identical bytes, so receiving servers that dedupe by Message-ID see one message; the
report counts it as resent-in-doubt.
"""

from __future__ import annotations

import logging
import os
import smtplib
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from .mailbox import ApplyError, Layout, Pending, Retry, Smtp

log = logging.getLogger("syncengine.apply")

JOURNAL = ".syncengine-apply.db"


RETRY_FIRST = 2.0    # seconds before a pending delivery is tried again; doubled each time
RETRY_MAX = 300.0


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    pending: dict[int, str] = field(default_factory=dict)  # mailbox_seq -> what is still waiting, and why
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing to apply"]
        out += [f"pending #{seq}: {what}; not acknowledged, tried again later" for seq, what in sorted(self.pending.items())]
        return out + self.problems


class Journal:
    def __init__(self, root: Path):
        files.private_dir(root)
        path = root / JOURNAL
        try:
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # an applied delta stays applied after a power loss
            self.conn.execute("CREATE TABLE IF NOT EXISTS applied (mailbox TEXT, mailbox_seq INTEGER, action TEXT,"
                              " outcome TEXT, PRIMARY KEY (mailbox, mailbox_seq)) WITHOUT ROWID")
            self.conn.execute("CREATE TABLE IF NOT EXISTS sending (mailbox TEXT, mailbox_seq INTEGER,"
                              " PRIMARY KEY (mailbox, mailbox_seq)) WITHOUT ROWID")
        except sqlite3.DatabaseError as exc:
            raise ApplyError(f"{path}: not a usable apply journal ({exc}). It records what was applied and "
                             "sent: moved away, every delta since the last acknowledgement is applied again "
                             "(deliveries are not written twice; sends in it would go out again)") from None
        os.chmod(path, 0o600)

    def done(self, mailbox: str, seq: int) -> bool:
        return self.conn.execute("SELECT 1 FROM applied WHERE mailbox = ? AND mailbox_seq = ?",
                                 (mailbox, seq)).fetchone() is not None

    def record(self, delta: dict, outcome: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT OR IGNORE INTO applied VALUES (?, ?, ?, ?)",
                          (delta["mailbox"], delta["mailbox_seq"], delta["action"], outcome))
        self.conn.execute("DELETE FROM sending WHERE mailbox = ? AND mailbox_seq = ?",
                          (delta["mailbox"], delta["mailbox_seq"]))
        self.conn.execute("COMMIT")

    def in_doubt(self, delta: dict) -> bool:
        """Mark a send as in flight; True when it already was (the client died mid-send)."""
        key = (delta["mailbox"], delta["mailbox_seq"])
        if self.conn.execute("SELECT 1 FROM sending WHERE mailbox = ? AND mailbox_seq = ?", key).fetchone():
            return True
        self.conn.execute("INSERT INTO sending VALUES (?, ?)", key)
        return False

    def close(self) -> None:
        self.conn.close()


class Applier:
    def __init__(self, layout: Layout, smtp: Smtp | None, fetch, report: Report | None = None):
        self.layout = layout
        self.smtp = smtp
        self.fetch = fetch  # (delta) -> bytes | None: the content over the protocol
        self.journal = Journal(layout.root)
        self.report = report or Report()

    def apply(self, delta: dict) -> str | None:
        """Carry out one delta; its outcome, or None when it was applied before."""
        if self.journal.done(delta["mailbox"], delta["mailbox_seq"]):
            return None
        try:
            outcome = getattr(self, "_" + delta["action"])(delta)
        except ApplyError as exc:
            outcome = "failed"
            self.report.problems.append(f"#{delta['mailbox_seq']} {delta['action']}: {exc}")
            log.error("delta %d (%s) not applied: %s", delta["mailbox_seq"], delta["action"], exc)
        self.journal.record(delta, outcome)
        self.report.counts[outcome] += 1
        log.info("applied #%d %s: %s", delta["mailbox_seq"], delta["action"], outcome)
        return outcome

    def _deliver(self, delta: dict) -> str:
        """N1: only a delivery that is in the mailbox is acknowledged. One whose content
        cannot be had now stays pending: the engine may get it later (Mimecast's part
        fetched again), and the deliveries after it go on meanwhile."""
        raw = self._content(delta)
        if raw is None:
            raise Pending(f"{delta.get('message_id') or '(no Message-ID)'} {delta.get('subject') or ''}".rstrip()
                          + ": its content cannot be fetched yet")
        self.layout.deliver(raw, delta["event"], delta["seq"], delta["mailbox"])
        return "delivered"

    def _content(self, delta: dict) -> bytes | None:
        if delta.get("content") is not None:
            try:
                return files.read_regular(Path(delta["content"]))
            except OSError:
                pass  # another machine: the engine's files are not ours to read
        return self.fetch(delta)  # the engine may have it now, though the delta said null

    def _purge(self, delta: dict) -> str:
        outcome = self.layout.purge(_locator(delta), delta.get("message_id"))
        if outcome == "mismatch":
            self.report.problems.append(f"#{delta['mailbox_seq']} purge of {_locator(delta)}: the file no longer "
                                        f"holds {delta.get('message_id')}; nothing removed")
        return outcome

    def _send(self, delta: dict) -> str:
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
        doubtful = self.journal.in_doubt(delta)
        try:
            self.smtp.send(raw)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise ApplyError(f"SMTP refused it: {exc}") from None
        except (OSError, smtplib.SMTPException) as exc:  # the relay is away: try again, in order
            raise Retry(f"SMTP: {type(exc).__name__}: {exc}") from None
        self.layout.move_to_sent(path)
        if doubtful:
            self.report.counts["resent-in-doubt"] += 1
        return "sent"

    def _defer(self, delta: dict) -> str:
        log.info("deferred: %s (%s)", delta.get("message_id") or delta.get("subject"), delta.get("reason"))
        return "deferred"

    def close(self) -> None:
        self.journal.close()


def run(applier: Applier, listener, mailbox: str, stop: threading.Event, idle: float | None = None) -> Report:
    """Apply each delta of `mailbox` as it arrives, acknowledging what is durable; with
    `idle`, return after that many seconds with nothing new (apply what is pending).

    Acknowledgements count up to a mailbox_seq (the server keeps the highest), so only
    the unbroken run of applied deltas is acknowledged: a pending delivery holds the
    acknowledgement back (and a restart brings it again) but not the deltas after it,
    which are applied and journalled meanwhile."""
    acked: int | None = None      # the last mailbox_seq acknowledged
    applied: set[int] = set()     # applied beyond it
    waiting: dict[int, list] = {}  # mailbox_seq -> [delta, when to try again, backoff]
    for delta in listener.deltas(timeout=idle, tick=1.0):
        if delta is not None and delta["mailbox"] == mailbox:
            if acked is None:  # a catch-up starts right after the last acknowledgement
                acked = delta["mailbox_seq"] - 1
            if _attempt(applier, delta, stop, waiting):
                applied.add(delta["mailbox_seq"])
        now = time.monotonic()
        for seq, (pending, due, _) in sorted(waiting.items()):
            if due <= now and _attempt(applier, pending, stop, waiting):
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


def _attempt(applier: Applier, delta: dict, stop: threading.Event, waiting: dict) -> bool:
    """Apply one delta: True once it is applied (now or before). A relay that is away
    holds everything after a send (in order); a pending delivery waits on its own."""
    wait = 1.0
    while True:
        try:
            applier.apply(delta)
            waiting.pop(delta["mailbox_seq"], None)
            return True
        except Pending as exc:
            backoff = RETRY_FIRST if delta["mailbox_seq"] not in waiting else min(
                waiting[delta["mailbox_seq"]][2] * 2, RETRY_MAX)
            delta["_pending"] = str(exc)
            waiting[delta["mailbox_seq"]] = [delta, time.monotonic() + backoff, backoff]
            log.warning("delta %d pending: %s; trying again in %.0f s", delta["mailbox_seq"], exc, backoff)
            return False
        except Retry as exc:  # in order: nothing after it is applied before it
            log.warning("%s; trying delta %d again in %.0f s", exc, delta["mailbox_seq"], wait)
            if stop.wait(wait):
                return False
            wait = min(wait * 2, 60.0)


def _locator(delta: dict) -> str:
    source = delta.get("source") or ""
    if not source.startswith("local:"):
        raise ApplyError(f"source {source!r} is not a local file")
    return source[len("local:"):]

