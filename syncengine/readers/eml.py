"""RFC 822 `.eml` files through the standard library's `email` package.

Headers only (the parser sees the header block alone); the body is parsed only when the
top-level Content-Type says a calendar part may be there (multipart, or text/calendar)
and the bytes name one: an EML has no class property, and formats.md derives its class
from that part's METHOD, within the budgets of headers.class_of_mime (beyond them:
IPM.Note and a warning).
"""

from __future__ import annotations

from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path

from .. import headers, normalise
from ..record import Record


class EmlError(Exception):
    """The file is not a readable message; the text says why."""


_PARSER = BytesParser(policy=policy.compat32)


def read(path: Path, locator: str, folder: str, role: str, warn: Callable[[str], None] | None = None) -> Record:
    data = path.read_bytes()
    return parse(data, locator, folder, role, warn)


_BLANK_LINES = (b"\n\n", b"\r\r", b"\r\n\r\n")


def header_block(data: bytes) -> bytes:
    """The bytes up to and including the first blank line, or all of them. Each separator
    looked for is a blank line wherever it stands, so the cut is never before the end of
    the header block as the email parser finds it (a later cut only costs bytes)."""
    ends = [at + len(blank) for blank in _BLANK_LINES if (at := data.find(blank)) >= 0]
    return data[:min(ends)] if ends else data


def parse(data: bytes, locator: str, folder: str, role: str, warn: Callable[[str], None] | None = None) -> Record:
    """The record of one message; `warn` hears why its class could not be read (IPM.Note)."""
    if not data.strip():
        raise EmlError("empty file")
    head = header_block(data)
    if b":" not in head:
        raise EmlError("not an RFC 822 message (no header fields)")
    # The parser reads the header block only: a body it would copy and split into lines
    # for nothing costs more than every header field together (issue 25).
    message = _PARSER.parsebytes(head, headersonly=True)
    if not message.keys():
        raise EmlError("not an RFC 822 message (no header fields)")

    def get(name: str) -> str | None:
        value = message.get(name)
        return str(value) if value is not None else None

    cls = "IPM.Note"
    if message.get_content_maintype() == "multipart" or message.get_content_type() == "text/calendar":
        cls, warning = headers.class_of_mime(data)
        if warning and warn is not None:
            warn(warning)
    delivery = get("X-Syncengine-Delivery")
    mid = normalise.message_id(get("Message-ID"))
    return Record(
        locator=locator,
        folder=folder,
        role=role,
        message_id=mid,
        mid_source="mime" if mid else None,
        submit_ts=normalise.header_date(get("Date")),
        subject=headers.decoded(get("Subject")),
        sender=normalise.address(headers.decoded(get("From"))),
        recipients=normalise.recipients_key(normalise.addresses(
            [str(v) for v in message.get_all("To", []) + message.get_all("Cc", [])])),
        resent_key=normalise.resent_key(get("Resent-Message-ID"), get("Resent-Date")),
        message_class=cls,
        delivery_tag=delivery.strip() if delivery else None,
    )
