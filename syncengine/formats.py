"""The JSON that crosses the engine's edges (formats.md), as msgspec types.

One definition serves three purposes: decoding with validation (errors name the JSON
path and what was expected), encoding, and the JSON Schemas in schema/json/
(`python -m syncengine.formats` rewrites them). Unknown fields are ignored, never an
error: the real Mimecast API adds fields over time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from . import normalise


class FormatError(Exception):
    """Invalid input; the text names the file, the JSON path and what was expected."""


# --- Mimecast snapshot page ------------------------------------------------------------

class Address(msgspec.Struct):
    emailAddress: str
    displayableName: str | None = None


class Header(msgspec.Struct):
    name: str
    values: list[str] = []


class Entry(msgspec.Struct, rename={"from_": "from"}):
    id: str
    received: str
    from_: Address
    subject: str
    mimeMessageId: str | None = None
    headerDate: str | None = None
    to: list[Address] = []
    cc: list[Address] = []
    status: str | None = None
    expired: bool = False
    headers: list[Header] = []
    size: int | None = None
    attachmentCount: int | None = None
    smash: str | None = None
    messageClass: str | None = None
    content: str | None = None


class SnapshotInfo(msgspec.Struct):
    address: str
    kind: Literal["mailbox", "group"]
    taken: str | None = None
    start: str | None = None
    end: str | None = None


class Pagination(msgspec.Struct):
    pageSize: int | None = None
    next: str | None = None


class Meta(msgspec.Struct):
    status: int
    snapshot: SnapshotInfo
    pagination: Pagination | None = None


class SnapshotPage(msgspec.Struct):
    meta: Meta
    data: list[Entry]
    fail: list[Any]


class PageToRead(msgspec.Struct):
    """A snapshot page as it is read: its entries kept as raw JSON, each decoded (and
    validated: decode_entry) when its row is made. A page of 440,000 entries decoded
    whole held 600 MB of objects; as raw entries it holds its bytes."""
    meta: Meta
    data: list[msgspec.Raw]
    fail: list[Any]


# --- Directory sync ----------------------------------------------------------------------

class User(msgspec.Struct):
    emailAddress: str
    aliases: list[str] = []


class Member(msgspec.Struct):
    emailAddress: str
    type: Literal["user", "group"] = "user"


class Group(msgspec.Struct):
    emailAddress: str
    groupMembers: list[Member] = []


class Delegate(msgspec.Struct):
    mailbox: str
    delegate: str


class Directory(msgspec.Struct):
    synced: str
    users: list[User] = []
    groups: list[Group] = []
    delegates: list[Delegate] = []


# --- Replay scenario ---------------------------------------------------------------------

class Settings(msgspec.Struct):
    poll_interval: int = 60
    post_event_window: int = 600
    calendar_items: bool = True


class MailboxExport(msgspec.Struct):
    address: str
    export: str | None = None    # None only with no_local_mail (C19)
    no_local_mail: bool = False  # the mailbox has no local mail at all: every entry is new to it


class Step(msgspec.Struct):
    at: str
    do: Literal["snapshot", "start_event", "end_event", "exchange_deliver", "exchange_remove",
                "outbox_add", "directory_sync", "restart", "add_export"]
    path: str | None = None
    event: str | None = None
    mailbox: str | None = None
    mailboxes: list[str] = []
    folder: str | None = None
    expand_distribution_lists: bool = False
    no_local_mail: list[str] = []  # start_event: mailboxes declared to have no local mail (C19)


class Expectation(msgspec.Struct):
    action: Literal["deliver", "purge", "send", "defer"]
    mailbox: str
    message_id: str | None = None
    source: str | None = None
    folder: str | None = None


class Scenario(msgspec.Struct):
    name: str
    mailboxes: list[MailboxExport]
    timeline: list[Step]
    until: str
    settings: Settings = msgspec.field(default_factory=Settings)
    directory: str | None = None
    expect: list[Expectation] | None = None
    exact: bool = True


# --- Delta log ---------------------------------------------------------------------------

class Delta(msgspec.Struct, omit_defaults=False):
    seq: int
    mailbox_seq: int
    at: str
    event: str
    mailbox: str
    action: Literal["deliver", "purge", "send", "defer"]
    folder: str | None
    message_id: str | None
    subject: str | None
    fingerprint: str | None
    source: str
    content: str | None
    reason: str


SCHEMAS = {
    "snapshot-page.json": SnapshotPage,
    "directory.json": Directory,
    "scenario.json": Scenario,
    "delta.json": Delta,
}


_entries = msgspec.json.Decoder(Entry)


def decode_entry(raw: msgspec.Raw, where: str, position: int) -> Entry:
    """One entry of a PageToRead, validated as SnapshotPage would have: the error names
    the file and the entry's path in the page."""
    try:
        return _entries.decode(raw)
    except msgspec.ValidationError as exc:
        raise FormatError(f"{where}: $.data[{position}]{_path_first(str(exc))[1:]}") from None
    except RecursionError:
        raise FormatError(f"{where}: $.data[{position}]: JSON nested too deeply to read") from None


def decode(data: bytes, kind: type, where: str):
    """Decode and validate `data`, naming `where` (the file) in any error."""
    try:
        data.decode("utf-8")  # msgspec passes invalid UTF-8 inside strings through
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not valid JSON (not UTF-8 at byte {exc.start})") from None
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise FormatError(f"{where}: {_path_first(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:  # anywhere, unknown fields included
        raise FormatError(f"{where}: JSON nested too deeply to read") from None


def _path_first(message: str) -> str:
    # msgspec says "Expected `str`, got `int` - at `$.data[0].id`"; lead with the path.
    if " - at `" in message:
        text, path = message.rsplit(" - at `", 1)
        return f"{path.rstrip('`')}: {text[0].lower()}{text[1:]}"
    return f"$: {message[0].lower()}{message[1:]}"


def check_time(value: str | None, where: str, path: str) -> int | None:
    """An ISO 8601 time with a zone, to epoch seconds; the error names file and path."""
    if value is None:
        return None
    try:
        return normalise.epoch(normalise.parse_iso(value))
    except (ValueError, OverflowError):  # 9999-12-31T23:59:59-23:59 overflows once made UTC
        raise FormatError(f"{where}: {path}: expected an ISO 8601 time with a zone, got {value[:60]!r}") from None


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind in SCHEMAS.items():
        target = folder / name
        target.write_text(json.dumps(msgspec.json.schema(kind), indent=1, sort_keys=True) + "\n")
        written.append(target)
    return written


if __name__ == "__main__":
    for path in write_schemas(Path(__file__).resolve().parent.parent / "schema" / "json"):
        print(path)
