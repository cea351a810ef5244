"""The delta log: numbering (seq gap-free, mailbox_seq per mailbox), the stored JSON line, reading it back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import msgspec
import sqlite_utils

from .. import normalise


_DELTA_FIELDS = ("seq", "mailbox_seq", "at", "event", "mailbox", "action", "folder", "message_id", "subject",
                 "fingerprint", "source", "content", "reason")


def _append(conn: sqlite3.Connection, deltas: list[dict]) -> None:
    """Number the deltas (seq gap-free overall, mailbox_seq per mailbox) and write them,
    with the deliveries they record, inside the caller's transaction."""
    if not deltas:
        return
    seq = next_seq(conn) - 1
    per_mailbox: dict[str, int] = {}
    rows, deliveries = [], []
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
        rows.append(tuple(delta[f] for f in _DELTA_FIELDS) + (_ENCODE(as_json(delta)),))
    conn.executemany(f"INSERT INTO deltas ({', '.join(_DELTA_FIELDS)}, body)"
                     f" VALUES ({', '.join('?' * 14)})", rows)
    conn.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", deliveries)


def next_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM deltas").fetchone()[0] + 1


class Written(Sequence):
    """The deltas one call wrote (seq `first` to `last`), read back from the log when looked
    at: a reconcile of 440,000 entries writes them chunk by chunk and holds none of them.
    Compares equal to a list of the same deltas, as formats.md writes them."""

    def __init__(self, conn: sqlite3.Connection, first: int, last: int):
        self.conn, self.first, self.last = conn, first, last

    def __len__(self) -> int:
        return max(0, self.last - self.first + 1)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("delta index out of range")
        return _DECODE(self.conn.execute("SELECT body FROM deltas WHERE seq = ?", (self.first + index,)).fetchone()[0])

    def __iter__(self) -> Iterator[dict]:
        for (body,) in self.conn.execute("SELECT body FROM deltas WHERE seq BETWEEN ? AND ? ORDER BY seq",
                                         (self.first, self.last)):
            yield _DECODE(body)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Written(seq {self.first}..{self.last}: {len(self)} deltas)"


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
