"""Cheap reading of the few RFC 5322 headers the index needs, and calendar classes.

Transport headers (MAPI 0x007D) are plain header blocks; the full `email` parser is
far slower than picking the handful of fields we use, so we unfold and pick.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from email.message import Message

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


def mime_class(message: Message) -> str:
    """Class of a MIME message without a class property: from its text/calendar body part."""
    for part in message.walk():
        if part.get_content_type() != "text/calendar":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("utf-8", errors="replace")
        return calendar_class(text)
    return "IPM.Note"
