"""The messages continuity delivered in one event, as a PST for Outlook's import.

Each `deliver` delta becomes one message in its delta's folder (Inbox), built from the
stored copy Mimecast gave: the original header block (so Outlook shows the real From,
Date and Message-ID), the plain-text body and the attachments. Every message carries
the delivery tag `<event>/<mailbox_seq>` as the header continuity.md names and as the
matching named property, so when the PST is imported and indexed, the index knows these
copies are continuity's own (C12). A delivery whose stored copy is missing or unreadable
is still exported from what the delta says, and the reason is reported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from .. import files
from .writer import Attachment, Message, PstWriter

CONTENT_LIMIT = 256 * 1024 * 1024   # a stored copy larger than this is not a mail message


class ExportError(Exception):
    """The export cannot start (no such event, mailbox not in it); the text says why."""


@dataclass
class ExportSummary:
    path: Path
    mailbox: str
    messages: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)   # (content file or delta, reason)


def deliveries(conn: sqlite3.Connection, event: str, mailbox: str | None) -> tuple[str, list[sqlite3.Row]]:
    """The deliver deltas of `event` for one mailbox, in log order. Without `mailbox`,
    the event must have delivered to exactly one."""
    if conn.execute("SELECT 1 FROM events WHERE name = ?", (event,)).fetchone() is None:
        known = [r[0] for r in conn.execute("SELECT name FROM events ORDER BY id")]
        raise ExportError(f"no event named {event!r} in this store"
                          + (f" (events: {', '.join(known)})" if known else " (it has no events)"))
    mailboxes = [r[0] for r in conn.execute(
        "SELECT DISTINCT mailbox FROM deltas WHERE event = ? AND action = 'deliver' ORDER BY mailbox", (event,))]
    covered = [r[0] for r in conn.execute(
        "SELECT mailbox FROM event_mailboxes m JOIN events e ON e.id = m.event WHERE e.name = ? ORDER BY mailbox",
        (event,))]
    if mailbox is not None and mailbox not in covered and mailbox not in mailboxes:
        raise ExportError(f"event {event!r} does not cover {mailbox} (it covers: {', '.join(covered)})")
    if mailbox is None:
        if len(mailboxes) > 1:
            raise ExportError(f"event {event!r} delivered to {len(mailboxes)} mailboxes; a PST holds one: "
                              f"name it with --mailbox ({', '.join(mailboxes)})")
        if not mailboxes:
            mailbox = covered[0] if len(covered) == 1 else ""
        else:
            mailbox = mailboxes[0]
    rows = conn.execute(
        "SELECT mailbox_seq, at, folder, message_id, subject, content FROM deltas"
        " WHERE event = ? AND mailbox = ? AND action = 'deliver' ORDER BY seq", (event, mailbox)).fetchall()
    return mailbox, rows


def export_event(conn: sqlite3.Connection, event: str, out: Path, mailbox: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    conn.row_factory = sqlite3.Row
    mailbox, rows = deliveries(conn, event, mailbox)
    summary = ExportSummary(out, mailbox)
    with PstWriter(out, f"Continuity {event} – {mailbox}" if mailbox else f"Continuity {event}") as pst:
        for row in rows:
            tag = f"{event}/{row['mailbox_seq']}"
            message, problem = _message(row, tag)
            if problem:
                summary.problems.append(problem)
            pst.add(row["folder"] or "Inbox", message)
            summary.messages += 1
            if progress is not None:
                progress(summary.messages, len(rows))
    return summary


def _message(row: sqlite3.Row, tag: str) -> tuple[Message, tuple[str, str] | None]:
    fallback = Message(subject=row["subject"] or "", message_id=row["message_id"], delivery_tag=tag,
                       delivery_time=int(row["at"]), read=False,
                       headers=f"X-Syncengine-Delivery: {tag}\r\n\r\n")
    if row["content"] is None:
        return fallback, (f"delta {tag}", "Mimecast gave no content: exported from the delta's fields")
    try:
        raw = files.read_regular(Path(row["content"]), CONTENT_LIMIT)
    except OSError as exc:
        return fallback, (row["content"], f"content not readable ({exc.strerror or exc}): exported from the delta")
    try:
        return from_mime(raw, tag, fallback), None
    except (ValueError, TypeError, LookupError) as exc:  # the email package's ways of saying "malformed"
        return fallback, (row["content"], f"content not parseable as mail ({exc}): exported from the delta")


def from_mime(raw: bytes, tag: str, fallback: Message) -> Message:
    """A Message from RFC 5322 bytes, with the delivery tag added to its header block."""
    parsed: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)
    head = raw.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in raw[:65536] else raw.split(b"\n\n", 1)[0]
    header_block = head.decode("utf-8", "replace").replace("\r\n", "\n").replace("\n", "\r\n")
    sender = getaddresses([str(parsed.get("From", ""))])
    body_part = parsed.get_body(("plain",))
    body = body_part.get_content() if body_part is not None else ""
    attachments = []
    for part in parsed.iter_attachments():
        data = part.get_payload(decode=True) or b""
        attachments.append(Attachment(part.get_filename() or "attachment", data, part.get_content_type()))
    date = parsed.get("Date")
    submit = None
    if date:
        try:
            submit = int(parsedate_to_datetime(str(date)).timestamp())
        except (TypeError, ValueError, IndexError):
            submit = None
    return Message(subject=str(parsed.get("Subject", "") or fallback.subject),
                   sender=sender[0][1] if sender else "", sender_name=sender[0][0] if sender else "",
                   to=[a for _, a in getaddresses([str(v) for v in parsed.get_all("To", [])]) if a],
                   cc=[a for _, a in getaddresses([str(v) for v in parsed.get_all("Cc", [])]) if a],
                   message_id=str(parsed.get("Message-ID", "")).strip() or fallback.message_id,
                   submit_time=submit, delivery_time=fallback.delivery_time,
                   headers=f"X-Syncengine-Delivery: {tag}\r\n{header_block}\r\n\r\n",
                   body=body, attachments=attachments, read=False, delivery_tag=tag)

