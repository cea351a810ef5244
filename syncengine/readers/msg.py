"""Outlook `.msg` files through `extract-msg`, reading properties lazily.

`MSGFile` (not `openMsg`) is used on purpose: it opens the compound file and reads
nothing until asked, where `openMsg` builds the class-specific object first. The
compound file is opened by olefile with DEFECT_INCORRECT, so malformed directories
are rejected there; one more structural check is ours (see `_conflicting_types`).
"""

from __future__ import annotations

import logging
import re
import struct
from datetime import datetime
from pathlib import Path

from .. import headers, normalise
from ..record import Record
from . import mapi

DELIVERY_HEADER = "x-syncengine-delivery"
_DELIVERY_UTF16 = DELIVERY_HEADER.encode("utf-16-le")
_SUBSTG = re.compile(r"^__substg1\.0_([0-9A-F]{4})([0-9A-F]{4})$", re.IGNORECASE)

# extract-msg logs every oddity it meets at WARNING/ERROR; the index reports its own errors.
logging.getLogger("extract_msg").setLevel(logging.CRITICAL)


class MsgError(Exception):
    """The file is not a readable MSG; the text says why."""


def read(path: Path | str, locator: str, folder: str, role: str) -> Record:
    import extract_msg  # 130 ms to import: paid by the first MSG read, not by every command's start

    try:
        msg = extract_msg.MSGFile(str(path), delayAttachments=True)
    except Exception as exc:  # olefile and extract-msg raise many types for broken files
        raise MsgError(_reason(exc)) from None
    try:
        conflict = _conflicting_types(msg)
        if conflict:
            raise MsgError(conflict)
        return _record(msg, locator, folder, role)
    except MsgError:
        raise
    except Exception as exc:
        raise MsgError(_reason(exc)) from None
    finally:
        msg.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "not an OLE2 structured storage file" in text:
        return "not an MSG file (not an OLE2 compound file)"
    return f"malformed MSG ({type(exc).__name__}: {text})"


def _conflicting_types(msg) -> str | None:
    """A MAPI property has one type; two top-level streams for one id with different
    types mean a corrupted directory (a fuzzer's favourite), not a message."""
    seen: dict[str, str] = {}
    for entry in msg.listDir(streams=True, storages=False):
        if len(entry) != 1:
            continue
        match = _SUBSTG.match(entry[0])
        if not match:
            continue
        prop, kind = match.group(1).upper(), match.group(2).upper()
        other = seen.setdefault(prop, kind)
        if other != kind and {other, kind} != {"001E", "001F"}:
            return f"malformed MSG: property 0x{prop} stored with two types (0x{other}, 0x{kind})"
    return None


def _string(msg, prop: str) -> str | None:
    value = msg.getStringStream(f"__substg1.0_{prop}")
    return value.rstrip("\x00") if value else None


def _record(msg, locator: str, folder: str, role: str) -> Record:
    picked = headers.pick(_string(msg, "007D"))
    raw_mid = _string(msg, "1035")
    mid_source = "mapi" if normalise.message_id(raw_mid) else None
    if mid_source is None:
        raw_mid = headers.first(picked, "message-id")
        mid_source = "headers" if normalise.message_id(raw_mid) else None

    submit_ts = None
    prop = msg.props.get("00390040")
    if prop is not None and isinstance(prop.value, datetime):
        submit_ts = normalise.epoch(prop.value)
    if submit_ts is None:
        submit_ts = normalise.header_date(headers.first(picked, "date"))

    delivery = headers.first(picked, DELIVERY_HEADER) or _named_delivery(msg)
    return Record(
        locator=locator,
        folder=folder,
        role=role,
        message_id=normalise.message_id(raw_mid),
        mid_source=mid_source,
        submit_ts=submit_ts,
        subject=_string(msg, "0037") or "",
        sender=mapi.sender(lambda tag: _string(msg, f"{tag:04X}"), picked),
        recipients=normalise.recipients_key(_recipients(msg, picked)),
        resent_key=normalise.resent_key(headers.first(picked, "resent-message-id"),
                                        headers.first(picked, "resent-date")),
        message_class=_string(msg, "001A"),
        delivery_tag=delivery.strip() if delivery else None,
    )


def _named_delivery(msg) -> str | None:
    """The X-Syncengine-Delivery named property; parsing the name map is skipped unless
    its string stream mentions the name at all."""
    names = msg.getStream("__nameid_version1.0/__substg1.0_00040102")
    if not names or _DELIVERY_UTF16 not in names.lower():
        return None
    from extract_msg.constants import ps

    for name in ("X-Syncengine-Delivery", DELIVERY_HEADER):
        value = msg.namedProperties.get((name, ps.PS_INTERNET_HEADERS))
        if value:
            return str(value)
    return None


def _recipients(msg, picked: dict[str, list[str]]) -> list[str]:
    """To and Cc: from the transport headers when there are some (as for PST items),
    else from the recipient storages, where type 0x0C15 sits in each one's property
    stream (8-byte header, then 16-byte entries of tag, flags, value)."""
    if picked:  # the headers describe the internet message, Bcc-only mail included
        return normalise.addresses(picked.get("to", []) + picked.get("cc", []))
    found: list[str] = []
    storages = {entry[0] for entry in msg.listDir(streams=False, storages=True)
                if entry[0].lower().startswith("__recip_version1.0_")}
    for storage in sorted(storages):
        props = msg.getStream([storage, "__properties_version1.0"]) or b""
        kind = None
        for offset in range(8, len(props) - 15, 16):
            if struct.unpack_from("<I", props, offset)[0] == 0x0C150003:
                kind = struct.unpack_from("<I", props, offset + 8)[0]
                break
        if kind is None or kind & 0x0F not in (1, 2):  # To, Cc
            continue
        addr = msg.getStringStream([storage, "__substg1.0_39FE"]) or \
            msg.getStringStream([storage, "__substg1.0_3003"])
        norm = normalise.address(addr.rstrip("\x00") if addr else None)
        if norm:
            found.append(norm)
    return found
