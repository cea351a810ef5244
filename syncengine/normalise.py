"""Normalisation of the fields that make a message's identity (continuity.md C4, C5, C7).

Every reader (PST, MSG, EML) and the snapshot side go through these functions, so
that the two sides of a match are always compared in the same form.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from datetime import datetime, timezone
from email.utils import getaddresses, parseaddr, parsedate_to_datetime


def message_id(raw: str | None) -> str | None:
    """The C4 form of a Message-ID: white space and one pair of angle brackets stripped.

    Compared exactly afterwards (no case folding: ids are case-sensitive in practice).
    A header that carries several tokens keeps the first one.
    """
    if not raw:
        return None
    text = raw.strip().strip("\x00").strip()
    if not text:
        return None
    if text.startswith("<"):
        end = text.find(">")
        text = text[1:end] if end != -1 else text[1:]
    else:
        text = text.split()[0]
    text = text.strip()
    return text or None


def display_message_id(mid: str | None) -> str | None:
    """The bracketed form used in the delta log and in scenario `expect` lists."""
    return f"<{mid}>" if mid else None


def subject(raw: str | None) -> str:
    """C5 subject: case folded, white space collapsed; reply/forward prefixes are kept."""
    if not raw:
        return ""
    # split() takes the white space that `\s` does (Unicode's): the same
    # collapse as a regex at a quarter of its cost, on every message and snapshot entry
    return " ".join(unicodedata.normalize("NFC", raw).split()).casefold()


_DISPLAY = re.compile(r'[ <>"(),;:]')  # what only a display name or a group makes an address hold


def address(raw: str | None) -> str | None:
    """An address without display name or angle brackets, trimmed and lower-cased."""
    if not raw:
        return None
    if "@" not in raw:  # an Exchange DN (EX address type) has spaces; keep it whole
        return raw.strip().lower() or None
    plain = raw.strip()
    if not _DISPLAY.search(plain):  # a bare address: parseaddr is slow
        return plain.lower()
    _, addr = parseaddr(plain)
    addr = (addr or raw).strip().strip("<>").strip().lower()
    return addr or None


def mailbox(raw: object) -> str:
    """A mailbox named by a user or a peer, normalised; ValueError says why it cannot be
    one. It also names a folder in the store (replay overlays), so it is one safe name."""
    if not isinstance(raw, str):
        raise ValueError(f"a mailbox is an address string, not {type(raw).__name__}")
    norm = address(raw)
    if not norm:
        raise ValueError("empty mailbox address")
    if len(norm) > 254:
        raise ValueError(f"mailbox address longer than 254 characters: {norm[:40]!r}...")
    if norm in (".", "..") or any(c in norm for c in "/\\\0") or not norm.isprintable():
        raise ValueError(f"not a mailbox address: {norm[:60]!r}")
    return norm


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE = re.compile(rf"(?:{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)?")  # RFC 5322 dot-atom@dot-atom


def addresses(raw_values: list[str]) -> list[str]:
    """All addresses of header values such as To and Cc, normalised."""
    if all(_BARE.fullmatch(value) for value in raw_values):
        # one bare address per value, as most To and Cc fields are: what getaddresses
        # would find, at a tenth of its cost
        return [norm for value in raw_values if (norm := address(value))]
    found = []
    for _, addr in getaddresses(raw_values):
        norm = address(addr)
        if norm:
            found.append(norm)
    return found


def recipients_key(addrs: list[str]) -> str:
    """C5 compares the sorted To+Cc addresses; a tab cannot occur inside an address."""
    return "\t".join(sorted(set(addrs)))


def parse_iso(text: str) -> datetime:
    """ISO 8601 with a zone, as formats.md writes it: `Z` and Mimecast's `+0000` both work
    (Python 3.11's fromisoformat reads both; a snapshot has two times per entry)."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment.astimezone(timezone.utc)


@functools.lru_cache(maxsize=256)  # the deltas of one poll share their `at`: 396,000 of them, one time
def iso(ts: float | None) -> str | None:
    """Epoch seconds to the `2026-11-28T09:00:00Z` form of formats.md."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(moment: datetime | None) -> int | None:
    """A datetime to whole epoch seconds; naive values are UTC (MAPI FILETIMEs are)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def header_date(raw: str | None) -> int | None:
    """An RFC 5322 Date (or Resent-Date) header to epoch seconds; None when unparseable."""
    if not raw:
        return None
    try:
        return epoch(parsedate_to_datetime(raw.strip()))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def resent_key(resent_message_id: str | None, resent_date: str | None) -> str | None:
    """C7: the Resent-Message-ID, else the Resent-Date (as a time, so forms compare)."""
    mid = message_id(resent_message_id)
    if mid:
        return "id:" + mid
    ts = header_date(resent_date)
    if ts is not None:
        return f"date:{ts}"
    if resent_date and resent_date.strip():
        return "date:" + resent_date.strip()
    return None


def identity(mid: str, submit_ts: int | None, resent: str | None) -> str:
    """The C4 identity of a message that has a Message-ID: id, submit time, resent key."""
    return f"{mid}\x1f{'' if submit_ts is None else submit_ts}\x1f{resent or ''}"


def fingerprint(identity_key: str) -> str:
    """A short stable digest of an identity, the `fingerprint` of formats.md."""
    return hashlib.blake2b(identity_key.encode("utf-8"), digest_size=10).hexdigest()
