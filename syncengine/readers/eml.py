"""RFC 822 `.eml` files through the standard library's `email` package.

Headers only (the parser sees the header block alone); the body is parsed only when the
top-level Content-Type says a calendar part may be there (multipart, or text/calendar)
and the bytes name one: an EML has no class property, and formats.md derives its class
from that part's METHOD, within the budgets of headers.class_of_mime (beyond them:
IPM.Note and a warning).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path

from .. import headers, normalise
from ..record import Record


class EmlError(Exception):
    """The file is not a readable message; the text says why."""


_PARSER = BytesParser(policy=policy.compat32)


def read(path: Path | str, locator: str, folder: str, role: str, warn: Callable[[str], None] | None = None) -> Record:
    with open(path, "rb") as handle:
        data = handle.read()
    return parse(data, locator, folder, role, warn)


_BLANK_LINES = (b"\n\n", b"\r\r", b"\r\n\r\n")


def header_block(data: bytes) -> bytes:
    """The bytes up to and including the first blank line, or all of them. Each separator
    looked for is a blank line wherever it stands, so the cut is never before the end of
    the header block as the email parser finds it (a later cut only costs bytes)."""
    ends = [at + len(blank) for blank in _BLANK_LINES if (at := data.find(blank)) >= 0]
    return data[:min(ends)] if ends else data


# What email.feedparser takes for a header line (its headerRE), and how it cuts lines.
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_LINE_END = re.compile(r"(\r\n|\r|\n)")
# The common block: named fields, continuation lines, LF or CRLF endings, a blank line or none.
_PLAIN_FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)\r?\n")
_PLAIN_BLOCK = re.compile(r"(?:[!-9;-~]+:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n)+(?:\r?\n)?")


def fields(head: bytes) -> dict[str, list[str]] | None:
    """The header fields of a header block (lower-case name: values in order), each value
    exactly as the email package's compat32 parser gives it; None for a block only that
    parser reads right (8-bit bytes, a "From " line), so the caller parses those. Picking
    the fields ourselves costs a tenth of the parser, which was half a Maildir's index time."""
    if not head.isascii():
        return None
    text = head.decode("ascii")
    if _PLAIN_BLOCK.fullmatch(text):  # every line a field or its continuation: one regex pass
        found: dict[str, list[str]] = {}
        for name, value in _PLAIN_FIELD.findall(text):
            found.setdefault(name.lower(), []).append(value)
        return found
    return _fields_by_line(text)


def _fields_by_line(text: str) -> dict[str, list[str]] | None:
    """fields() for any ASCII block: line by line, as feedparser walks it."""
    parts = _LINE_END.split(text)
    lines = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
    if parts[-1]:
        lines.append(parts[-1])
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines + [""]:  # the empty line stands for the end of the block
        continued = line[:1] in (" ", "\t")
        if current and not continued:
            name, value = "".join(current).split(":", 1)
            found.setdefault(name.lower(), []).append(value.lstrip(" \t").rstrip("\r\n"))
            current = []
        if not _HEADER_LINE.match(line):
            break
        if line.startswith("From "):
            return None
        if continued:
            if current:
                current.append(line)
        elif not line.startswith(":"):  # a line the parser drops as a defect
            current = [line]
    return found


def _content_type(found: dict[str, list[str]]) -> str:
    """email.message.Message.get_content_type, on picked fields."""
    values = found.get("content-type")
    if not values:
        return "text/plain"
    ctype = values[0].partition(";")[0].strip().lower()
    return ctype if ctype.count("/") == 1 else "text/plain"


def _parsed_fields(head: bytes) -> dict[str, list[str]]:
    message = _PARSER.parsebytes(head, headersonly=True)
    found: dict[str, list[str]] = {}
    for name, value in message.items():
        found.setdefault(name.lower(), []).append(str(value))
    return found


def parse(data: bytes, locator: str, folder: str, role: str, warn: Callable[[str], None] | None = None) -> Record:
    """The record of one message; `warn` hears why its class could not be read (IPM.Note)."""
    if not data.strip():
        raise EmlError("empty file")
    head = header_block(data)
    if b":" not in head:
        raise EmlError("not an RFC 822 message (no header fields)")
    # Only the header block is read: a body it would copy and split into lines for
    # nothing costs more than every header field together (issue 25).
    found = fields(head)
    if found is None:
        found = _parsed_fields(head)
    if not found:
        raise EmlError("not an RFC 822 message (no header fields)")

    def get(name: str) -> str | None:
        values = found.get(name)
        return values[0] if values else None

    cls = "IPM.Note"
    ctype = _content_type(found)
    if ctype.startswith("multipart/") or ctype == "text/calendar":
        cls, warning = headers.class_of_mime(data)
        if warning and warn is not None:
            warn(warning)
    delivery = get("x-syncengine-delivery")
    mid = normalise.message_id(get("message-id"))
    return Record(
        locator=locator,
        folder=folder,
        role=role,
        message_id=mid,
        mid_source="mime" if mid else None,
        submit_ts=normalise.header_date(get("date")),
        subject=headers.decoded(get("subject")),
        sender=normalise.address(headers.decoded(get("from"))),
        recipients=normalise.recipients_key(normalise.addresses(found.get("to", []) + found.get("cc", []))),
        resent_key=normalise.resent_key(get("resent-message-id"), get("resent-date")),
        message_class=cls,
        delivery_tag=delivery.strip() if delivery else None,
    )
