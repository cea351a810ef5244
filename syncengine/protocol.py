"""The requests a client may send to the ROUTER, as types that validate (N5).

Every request is decoded here before any handler sees it: the type, the range and
the size of each field are checked by msgspec (no recursion, no unbounded integers),
mailbox names are normalised, and repeats are folded. A request that fails gets an
`error` reply that names the field; nothing of it acts. docs/protocol.md describes
the same rules for client authors.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from . import normalise

MAX_REQUEST_BYTES = 64 << 10     # the ROUTER's MAXMSGSIZE: a hello for 100 mailboxes is ~10 KiB
MAX_SUBSCRIPTION_BYTES = 1024    # the PUB's MAXMSGSIZE: a topic is an address
MAX_MAILBOXES = 100
SEQ_MAX = 2**53 - 1              # what every JSON reader can count up to exactly

Seq = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
Mailboxes = Annotated[list[Name], msgspec.Meta(min_length=1, max_length=MAX_MAILBOXES)]


class RequestError(ValueError):
    """A request that is not valid; the text is safe to send back."""


class Hello(msgspec.Struct, tag="hello", tag_field="op"):
    client: Name
    mailboxes: Mailboxes
    since: Annotated[dict[Name, Seq], msgspec.Meta(max_length=MAX_MAILBOXES)] | None = None


class Ack(msgspec.Struct, tag="ack", tag_field="op"):
    client: Name
    mailbox: Name
    mailbox_seq: Seq


class Status(msgspec.Struct, tag="status", tag_field="op"):
    client: Name | None = None


class StartEvent(msgspec.Struct, tag="start_event", tag_field="op"):
    client: Name
    event: Name
    mailboxes: Mailboxes
    expand_distribution_lists: bool = False
    no_local_mail: Annotated[list[Name], msgspec.Meta(max_length=MAX_MAILBOXES)] = []  # C19


class EndEvent(msgspec.Struct, tag="end_event", tag_field="op"):
    client: Name
    event: Name


class Content(msgspec.Struct, tag="content", tag_field="op"):
    client: Name
    mailbox: Name
    mailbox_seq: Annotated[int, msgspec.Meta(ge=1, le=SEQ_MAX)]
    offset: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    token: Annotated[str, msgspec.Meta(max_length=64)] | None = None  # the last content reply's, once read


class Admin(msgspec.Struct, tag="admin", tag_field="op"):
    """A state-changing command line run by the store's owner while a daemon holds the
    store: the daemon runs it as one of its own tasks (one writer). ipc only."""
    command: Literal["snapshot_add", "directory_add", "sync", "index", "event_start", "event_end", "mimecast_apply"]
    path: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    paths: Annotated[list[Annotated[str, msgspec.Meta(max_length=4096)]], msgspec.Meta(max_length=1000)] = []
    mailbox: Name | None = None
    mailboxes: Annotated[list[Name], msgspec.Meta(max_length=MAX_MAILBOXES)] = []
    event: Name | None = None
    expand_distribution_lists: bool = False
    no_local_mail: Annotated[list[Name], msgspec.Meta(max_length=MAX_MAILBOXES)] = []
    every_file: bool = False  # index: every file's report (`--json`), not only those that failed
    outcomes: Annotated[dict[Name, Annotated[str, msgspec.Meta(max_length=500)] | None],
                        msgspec.Meta(max_length=1000)] = {}  # mimecast_apply: each address's pass


Request = Hello | Ack | Status | StartEvent | EndEvent | Content | Admin
OPS = ("hello", "ack", "status", "start_event", "end_event", "content", "admin")
_decoder = msgspec.json.Decoder(Request)


def parse(body: bytes) -> Request:
    """The request in `body`, validated and normalised, or RequestError."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        body.decode("utf-8")  # msgspec passes invalid UTF-8 inside strings through
        request = _decoder.decode(body)
    except UnicodeDecodeError:
        raise RequestError("not UTF-8") from None
    except msgspec.ValidationError as exc:
        raise RequestError(_clean(str(exc))) from None
    except msgspec.DecodeError:
        raise RequestError("not a JSON object with a known op") from None
    except RecursionError:
        raise RequestError("nested too deeply") from None
    try:
        if isinstance(request, (Hello, StartEvent)):
            request.mailboxes = list(dict.fromkeys(normalise.mailbox(m) for m in request.mailboxes))
        if isinstance(request, (StartEvent, Admin)):
            request.no_local_mail = list(dict.fromkeys(normalise.mailbox(m) for m in request.no_local_mail))
        if isinstance(request, Hello) and request.since is not None:
            request.since = {normalise.mailbox(k): v for k, v in request.since.items()}
        if isinstance(request, (Ack, Content)):
            request.mailbox = normalise.mailbox(request.mailbox)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return request


def _clean(message: str) -> str:
    # msgspec: "Expected `int` <= 9007199254740991 - at `$.since[...]`": already plain;
    # the path of an over-long key can be long, so cut it.
    return message if len(message) <= 300 else message[:300] + "..."
