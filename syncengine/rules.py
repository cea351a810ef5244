"""The continuity rules as pure functions (continuity.md C4-C17, N2).

Nothing here reads a clock, a file or the store: the engine gathers the inputs
(entries to decide, candidate local messages, what was already delivered) and writes
the outputs. Replay and the daemon share this module and differ only in where their
inputs come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

C4_WINDOW = 120   # seconds, inclusive
C5_WINDOW = 60    # seconds, inclusive

HELD_STATUSES = frozenset({"HELD", "REJECTED", "BOUNCED", "QUARANTINED"})
DELIVERABLE_STATUSES = frozenset({"ARCHIVED", "ACTIVE", "DELIVERED"})
MAIL_TEMPLATES = frozenset({"ipm.note.rules.ooftemplate.microsoft", "ipm.note.rules.replytemplate.microsoft"})
MEETING_CLASSES = frozenset({"ipm.schedule.meeting.request", "ipm.schedule.meeting.canceled",
                             "ipm.schedule.meeting.resp.pos", "ipm.schedule.meeting.resp.neg",
                             "ipm.schedule.meeting.resp.tent"})


class Msg(NamedTuple):
    """The identity fields of a message, whichever side it comes from. The records the
    rules read are named tuples: as immutable as frozen dataclasses, and a reconcile
    makes hundreds of thousands of them at a third of the cost."""

    message_id: str | None
    submit_ts: int | None
    resent_key: str | None
    sender: str | None
    recipients: str
    subject_norm: str


def _within(a: int | None, b: int | None, window: int) -> bool:
    return a is not None and b is not None and abs(a - b) <= window


def c4_match(a: Msg, b: Msg) -> bool:
    """C4 (with C7): equal Message-IDs, and submit times within 2 minutes, or either
    time unknown and equal subjects; resent keys equal."""
    if not a.message_id or a.message_id != b.message_id or a.resent_key != b.resent_key:
        return False
    if a.submit_ts is None or b.submit_ts is None:
        return a.subject_norm == b.subject_norm
    return abs(a.submit_ts - b.submit_ts) <= C4_WINDOW


def certain_match(a: Msg, b: Msg) -> bool:
    """N2: the only match that may purge: C4 with both submit times known."""
    return c4_match(a, b) and _within(a.submit_ts, b.submit_ts, C4_WINDOW)


def c5_match(a: Msg, b: Msg) -> bool:
    """C5: when either side lacks a Message-ID, equal sender, To+Cc and subject, submit
    times within 60 s; resent keys equal (C7)."""
    if a.message_id and b.message_id:
        return False
    return (a.sender is not None and a.sender == b.sender and a.recipients == b.recipients
            and a.subject_norm == b.subject_norm and a.resent_key == b.resent_key
            and _within(a.submit_ts, b.submit_ts, C5_WINDOW))


def class_verdict(message_class: str, calendar_items: bool) -> str | None:
    """None when C10 lets the class be delivered, else the defer reason."""
    cls = message_class.lower()
    if cls in MAIL_TEMPLATES:
        return "class-not-delivered"
    if cls == "ipm.note" or cls.startswith("ipm.note."):
        return None
    if cls == "ipm.appointment" or cls.startswith("ipm.appointment.") or cls in MEETING_CLASSES:
        return None if calendar_items else "calendar-disabled"
    return "class-not-delivered"


class EntryIn(NamedTuple):
    key: int            # the entry's row in the store
    msg: Msg
    status: str | None
    expired: bool
    message_class: str
    fingerprint: str


class LocalIn(NamedTuple):
    key: str            # location: "<source path>#<locator>"
    msg: Msg


class EntryDecision(NamedTuple):
    entry: EntryIn
    outcome: str        # delivered | ambiguous-delivered | deferred | matched | held | already
    action: str | None  # deliver | defer | None (no delta)
    reason: str | None


@dataclass
class Delivered:
    """Deliveries of this event to this mailbox; grows as a batch is decided (C8, C17).
    An entry with a Message-ID is the same message as a delivery it C4-matches; two
    entries without one are the same only when they carry the same Mimecast id (C5),
    which is what their fingerprint digests."""

    by_mid: dict[str, list[Msg]] = field(default_factory=dict)
    without_mid: set[str] = field(default_factory=set)

    def has(self, msg: Msg, fingerprint: str) -> bool:
        if msg.message_id:
            return any(c4_match(msg, other) for other in self.by_mid.get(msg.message_id, ()))
        return fingerprint in self.without_mid

    def add(self, msg: Msg, fingerprint: str) -> None:
        if msg.message_id:
            self.by_mid.setdefault(msg.message_id, []).append(msg)
        else:
            self.without_mid.add(fingerprint)


def decide_entry(entry: EntryIn, locals_: list[LocalIn], peers: list[EntryIn], delivered: Delivered,
                 calendar_items: bool) -> EntryDecision:
    """One entry for one mailbox. `locals_` are the candidate locations in received-mail
    folders; `peers` the visible entries that could fallback-match the same locals."""
    status = (entry.status or "").upper()
    if entry.expired or status in HELD_STATUSES:
        return EntryDecision(entry, "held", None, None)         # C11: counted, never delivered
    if delivered.has(entry.msg, entry.fingerprint):
        return EntryDecision(entry, "already", None, None)      # C8, C17: once per event
    if any(c4_match(entry.msg, local.msg) for local in locals_):
        return EntryDecision(entry, "matched", None, None)
    fallback = [local for local in locals_ if c5_match(entry.msg, local.msg)]
    ambiguous = False
    if fallback:
        rivals = {peer.fingerprint for peer in peers if c5_match(peer.msg, fallback[0].msg)}
        rivals.add(entry.fingerprint)
        if len(fallback) == 1 and len(rivals) == 1:
            return EntryDecision(entry, "matched", None, None)
        ambiguous = True                                        # C5 -> C6: deliver
    verdict = class_verdict(entry.message_class, calendar_items)
    if verdict:
        return EntryDecision(entry, "deferred", "defer", verdict)
    if status and status not in DELIVERABLE_STATUSES:
        return EntryDecision(entry, "deferred", "defer", "unknown-status")
    delivered.add(entry.msg, entry.fingerprint)
    if ambiguous:
        return EntryDecision(entry, "ambiguous-delivered", "deliver", "ambiguous-match")
    return EntryDecision(entry, "delivered", "deliver", "not-in-mailbox")


@dataclass(frozen=True, slots=True)
class OutboxIn:
    identity: str
    local: LocalIn
    message_class: str


def decide_outbox(item: OutboxIn, sent_items: list[LocalIn], calendar_items: bool) -> tuple[str, str | None, str]:
    """C13: (outcome, action, reason) for a message in the Outbox."""
    if any(c4_match(item.local.msg, sent.msg) for sent in sent_items):
        return "already-sent", None, "in-sent-items"
    verdict = class_verdict(item.message_class, calendar_items)
    if verdict:
        return "deferred", "defer", verdict
    return "sent", "send", "outbox"


def purge_match(local: Msg, deliveries: list[Msg]) -> bool:
    """C12/C14 under N2: a certain C4 match with something continuity delivered."""
    return any(certain_match(local, delivered) for delivered in deliveries)


def not_purged_because(local: Msg, deliveries: list[Msg]) -> str:
    """Why a copy with the Message-ID of a delivery is no certain duplicate (N2), in words
    a user can act on; only for a copy purge_match refused."""
    same = [d for d in deliveries if d.message_id == local.message_id]
    if same and all(d.resent_key != local.resent_key for d in same):
        return "a resent copy, not the delivered message (C7)"
    same = [d for d in same if d.resent_key == local.resent_key]
    if any(d.submit_ts is None for d in same):
        return "N2: the delivered entry has no submit time (no headerDate), so no copy is a certain duplicate"
    if local.submit_ts is None:
        return "N2: the copy has no submit time (no Date header), so it is no certain duplicate"
    apart = min(abs(local.submit_ts - d.submit_ts) for d in same) if same else None
    if apart is not None:
        return f"N2: submit times {apart} s apart, more than the {C4_WINDOW} s a certain duplicate allows"
    return "N2: no delivery matches it with certainty"
