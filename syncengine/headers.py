"""Cheap reading of the few RFC 5322 headers the index needs, and calendar classes.

Transport headers (MAPI 0x007D) are plain header blocks; the full `email` parser is
far slower than picking the handful of fields we use, so we unfold and pick.
"""

from __future__ import annotations

import re
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

WANTED = ("message-id", "date", "from", "to", "cc", "resent-message-id", "resent-date",
          "x-syncengine-delivery")

_FIELD = re.compile(r"^(" + "|".join(re.escape(n) for n in WANTED) + r")[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                    re.MULTILINE | re.IGNORECASE)
_FOLD = re.compile(r"\r?\n[ \t]+")
_BLANK_LINE = re.compile(r"\r?\n\r?\n")


def pick(block: str | None) -> dict[str, list[str]]:
    """The values of the WANTED headers (lower-case names) in a header block, unfolded.

    The pattern names the wanted fields, so the regex engine skips every other line
    without a Python-level test: transport headers run to dozens of Received lines."""
    found: dict[str, list[str]] = {}
    if not block:
        return found
    end = _BLANK_LINE.search(block)
    if end:
        block = block[: end.start()]
    for match in _FIELD.finditer(block):
        value = match.group(2)
        if "\n" in value:
            value = _FOLD.sub(" ", value)
        found.setdefault(match.group(1).lower(), []).append(value.strip())
    return found


def first(found: dict[str, list[str]], name: str) -> str | None:
    values = found.get(name)
    return values[0] if values else None


def decoded(value: str | None) -> str:
    """An RFC 2047 encoded header value as text; undecodable parts are kept as written."""
    if not value:
        return ""
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, ValueError, UnicodeError):
        return value


_CALENDAR_CLASS = {
    "REQUEST": "IPM.Schedule.Meeting.Request",
    "CANCEL": "IPM.Schedule.Meeting.Canceled",
    "COUNTER": "IPM.Schedule.Meeting.Resp.Tent",
    "PUBLISH": "IPM.Appointment",
}
_PARTSTAT_CLASS = {
    "ACCEPTED": "IPM.Schedule.Meeting.Resp.Pos",
    "DECLINED": "IPM.Schedule.Meeting.Resp.Neg",
    "TENTATIVE": "IPM.Schedule.Meeting.Resp.Tent",
}


def calendar_class(ics: str) -> str:
    """The class formats.md derives from a text/calendar body part's METHOD (and PARTSTAT)."""
    unfolded = re.sub(r"\r?\n[ \t]", "", ics)
    method = re.search(r"^METHOD[^:\r\n]*:(.*)$", unfolded, re.MULTILINE | re.IGNORECASE)
    verb = method.group(1).strip().upper() if method else ""
    if verb == "REPLY":
        stat = re.search(r"PARTSTAT=([A-Za-z-]+)", unfolded, re.IGNORECASE)
        return _PARTSTAT_CLASS.get(stat.group(1).upper() if stat else "", "IPM.Note")
    return _CALENDAR_CLASS.get(verb, "IPM.Note")


MAX_MIME_PARTS = 200  # parts (and boundaries, before parsing) looked at for a calendar part
MAX_MIME_DEPTH = 40   # nesting of multiparts: anyone can send a mail nested 1,000 deep


class MimeTooComplex(ValueError):
    """A MIME structure beyond the budgets above: its class is not looked for."""


def mime_class(message: Message) -> str:
    """Class of a MIME message without a class property: from its text/calendar body part,
    looked for in at most MAX_MIME_PARTS parts nested at most MAX_MIME_DEPTH deep
    (MimeTooComplex beyond; the walk is not recursive)."""
    stack, seen = [(message, 0)], 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_MIME_PARTS or depth > MAX_MIME_DEPTH:
            raise MimeTooComplex(f"more than {MAX_MIME_PARTS} MIME parts or {MAX_MIME_DEPTH} levels")
        if part.is_multipart():
            payload = part.get_payload()
            stack.extend((sub, depth + 1) for sub in reversed(payload if isinstance(payload, list) else []))
            continue
        if part.get_content_type() != "text/calendar" or part.get_content_disposition() == "attachment":
            continue
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("utf-8", errors="replace")
        return calendar_class(text)
    return "IPM.Note"


MAX_CLASS_BYTES = 32 << 20  # a calendar invitation is kilobytes; past this the class is not looked for


def class_of_mime(data: bytes) -> tuple[str, str | None]:
    """The class formats.md derives from a message's text/calendar body part, and None; or
    IPM.Note and the reason, for content that cannot be read for it (too large, nested too
    deep, too many parts, malformed): anyone can send such a mail, and it must not cost
    the page or the export it is in. The parse is bounded before it starts: the email
    parser recurses per nesting level, so more boundaries than parts allowed is not parsed."""
    lowered = data.lower()
    if b"text/calendar" not in lowered:
        return "IPM.Note", None
    if len(data) > MAX_CLASS_BYTES:
        return "IPM.Note", f"larger than {MAX_CLASS_BYTES >> 20} MB: its class is not looked for; IPM.Note"
    if lowered.count(b"boundary") > MAX_MIME_PARTS:
        return "IPM.Note", f"more than {MAX_MIME_PARTS} MIME parts: its class is not looked for; IPM.Note"
    try:
        return mime_class(BytesParser(policy=policy.compat32).parsebytes(data)), None
    except (MimeTooComplex, RecursionError) as exc:
        return "IPM.Note", f"MIME nested too deeply to read its class ({exc or 'recursion'}); IPM.Note"
    except Exception as exc:  # the email package's own failure on hostile bytes
        return "IPM.Note", f"MIME that cannot be read for its class ({type(exc).__name__}); IPM.Note"
