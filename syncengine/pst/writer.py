"""MS-PST messaging layer: a Unicode PST with a store, folders and messages.

    with PstWriter(Path("out.pst"), "Recovered mail") as pst:
        pst.add("Inbox", Message(subject="Hi", sender="bob@example.org", to=["alice@acme.example"]))

The standard folders (Inbox, Outbox, Sent Items, Drafts, Deleted Items, Junk Email,
Calendar) always exist, named by the store's and the Inbox's role entry ids; any other
path ("Inbox/Projects/Q4") is created on first use. Messages are written as they come:
the writer's memory does not grow with their number (see ndb.py for how). The file is
built under a temporary name and renamed into place when complete, so an interrupted
export never leaves a PST that looks whole.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from .ltp import (PT_BINARY, PT_BOOLEAN, PT_LONG, PT_MV_BINARY, PT_SYSTIME, PT_UNICODE, Column, Prop,
                  Subnodes, Table, property_context)
from .ndb import FileWriter, crc

NID_MESSAGE_STORE, NID_NAME_TO_ID_MAP, NID_ROOT_FOLDER = 0x21, 0x61, 0x122
NID_RECIPIENT_TABLE, NID_ATTACHMENT_TABLE = 0x692, 0x671
TEMPLATES = {0x60D: "hierarchy", 0x60E: "contents", 0x60F: "associated", 0x610: "contents",
             NID_ATTACHMENT_TABLE: "attachments", NID_RECIPIENT_TABLE: "recipients"}
TYPE_FOLDER, TYPE_SEARCH_FOLDER, TYPE_MESSAGE, TYPE_ATTACHMENT = 0x02, 0x03, 0x04, 0x05
TYPE_HIERARCHY, TYPE_CONTENTS, TYPE_ASSOCIATED = 0x0D, 0x0E, 0x0F
FIRST_FOLDER, FIRST_MESSAGE = 0x400, 0x10000   # as Outlook numbers a new store
PS_INTERNET_HEADERS = uuid.UUID("00020386-0000-0000-c000-000000000046").bytes_le
DELIVERY_NAME = "x-syncengine-delivery"        # readers.pst.DELIVERY_HEADER
DELIVERY_PROP = 0x8000
NAMEID_BUCKETS = 251

MSGFLAG_READ, MSGFLAG_UNSENT, MSGFLAG_HASATTACH = 0x01, 0x08, 0x10
RECIPIENT_TO, RECIPIENT_CC, RECIPIENT_BCC = 1, 2, 3

# (name, role, container class); the role names the entry id that points at the folder.
STANDARD_FOLDERS = [("Deleted Items", "deleted", "IPF.Note"), ("Inbox", "inbox", "IPF.Note"),
                    ("Outbox", "outbox", "IPF.Note"), ("Sent Items", "sent", "IPF.Note"),
                    ("Drafts", "drafts", "IPF.Note"), ("Junk Email", "junk", "IPF.Note"),
                    ("Calendar", "calendar", "IPF.Appointment")]
STORE_ROLE_TAGS = {"outbox": 0x35E2, "deleted": 0x35E3, "sent": 0x35E4}
INBOX_ROLE_TAGS = {"calendar": 0x36D0, "drafts": 0x36D7}
PR_IPM_SUBTREE_ENTRYID, PR_FINDER_ENTRYID, PR_ADDITIONAL_REN_ENTRYIDS = 0x35E0, 0x35E7, 0x36D8

HIERARCHY_COLUMNS = [Column(0x3001, PT_UNICODE), Column(0x3602, PT_LONG), Column(0x3603, PT_LONG),
                     Column(0x360A, PT_BOOLEAN), Column(0x3613, PT_UNICODE)]
CONTENTS_COLUMNS = [Column(0x0017, PT_LONG), Column(0x001A, PT_UNICODE), Column(0x0036, PT_LONG),
                    Column(0x0037, PT_UNICODE), Column(0x0039, PT_SYSTIME), Column(0x0042, PT_UNICODE),
                    Column(0x0E04, PT_UNICODE), Column(0x0E06, PT_SYSTIME), Column(0x0E07, PT_LONG),
                    Column(0x0E08, PT_LONG), Column(0x0E17, PT_LONG), Column(0x3008, PT_SYSTIME)]
ASSOCIATED_COLUMNS = [Column(0x001A, PT_UNICODE), Column(0x0E07, PT_LONG), Column(0x0E08, PT_LONG)]
RECIPIENT_COLUMNS = [Column(0x0C15, PT_LONG), Column(0x0E0F, PT_BOOLEAN), Column(0x0FFE, PT_LONG),
                     Column(0x3001, PT_UNICODE), Column(0x3002, PT_UNICODE), Column(0x3003, PT_UNICODE),
                     Column(0x3900, PT_LONG), Column(0x39FE, PT_UNICODE), Column(0x3A40, PT_BOOLEAN)]
ATTACHMENT_COLUMNS = [Column(0x0E20, PT_LONG), Column(0x3704, PT_UNICODE), Column(0x3705, PT_LONG),
                      Column(0x370B, PT_LONG)]
TABLE_COLUMNS = {"hierarchy": HIERARCHY_COLUMNS, "contents": CONTENTS_COLUMNS, "associated": ASSOCIATED_COLUMNS,
                 "recipients": RECIPIENT_COLUMNS, "attachments": ATTACHMENT_COLUMNS}


@dataclass
class Attachment:
    filename: str
    data: bytes
    mime_type: str = "application/octet-stream"


@dataclass
class Message:
    """What a message carries into the PST. Times are unix seconds (UTC)."""

    subject: str = ""
    sender: str = ""
    sender_name: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    message_id: str | None = None
    submit_time: int | None = None
    delivery_time: int | None = None
    headers: str | None = None
    body: str = ""
    message_class: str = "IPM.Note"
    attachments: list[Attachment] = field(default_factory=list)
    read: bool = True
    unsent: bool = False
    delivery_tag: str | None = None   # also as the named property x-syncengine-delivery


@dataclass
class _Folder:
    nid: int
    parent: int
    name: str
    container_class: str = "IPF.Note"
    children: list[int] = field(default_factory=list)
    contents: Table | None = None
    count: int = 0
    unread: int = 0


class PstWriter:
    """Writes one new PST; use as a context manager, or call `close()` (or `abort()`)."""

    def __init__(self, path: Path, display_name: str = "Personal Folders"):
        self.path = Path(path)
        # a name of its own (created exclusively): two exports, or a file planted there, never meet
        self.partial = self.path.with_name(f".{self.path.name[:200]}.{os.urandom(6).hex()}.partial")
        self.ndb = FileWriter(self.partial)
        self.display_name = display_name
        self.store_uid = uuid.uuid5(uuid.NAMESPACE_URL, f"syncengine-pst:{self.path.name}").bytes
        self.folders: dict[int, _Folder] = {}
        self.by_path: dict[str, int] = {}
        self.roles: dict[str, int] = {}
        self.next_folder = FIRST_FOLDER
        self.next_message = FIRST_MESSAGE
        self.messages = 0
        self.folders[NID_ROOT_FOLDER] = _Folder(NID_ROOT_FOLDER, NID_ROOT_FOLDER, "")
        self.ipm = self._new_folder(NID_ROOT_FOLDER, "Top of Personal Folders")
        self.finder = self._new_folder(NID_ROOT_FOLDER, "Search Root")
        for name, role, container in STANDARD_FOLDERS:
            self.roles[role] = self.by_path[name] = self._new_folder(self.ipm, name, container)

    def __enter__(self) -> PstWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # -- folders ----------------------------------------------------------------------

    def _new_folder(self, parent: int, name: str, container: str = "IPF.Note") -> int:
        if self.next_folder > 0xFFFF:
            raise ValueError("a PST written here holds at most 64,512 folders")
        nid = (self.next_folder << 5) | TYPE_FOLDER
        self.next_folder += 1
        self.folders[nid] = _Folder(nid, parent, name, container)
        self.folders[parent].children.append(nid)
        return nid

    def folder(self, path: str) -> int:
        """The NID of the folder at `path` under the mailbox root, created if new."""
        parts = [part for part in path.replace("\\", "/").split("/") if part]
        if not parts:
            raise ValueError("a message needs a folder: the mailbox root holds none")
        parent, walked = self.ipm, ""
        for part in parts:
            walked = f"{walked}/{part}" if walked else part
            nid = self.by_path.get(walked)
            if nid is None:
                container = self.folders[parent].container_class if parent != self.ipm else "IPF.Note"
                nid = self.by_path[walked] = self._new_folder(parent, part, container)
            parent = nid
        return parent

    # -- messages ---------------------------------------------------------------------

    def add(self, folder_path: str, message: Message, *, deleted: bool = False) -> int:
        """Write `message` into the folder at `folder_path`; returns the message's NID.

        `deleted` writes it as a store holds an item Outlook deleted and has not yet
        compacted away: its blocks stay in the file, its node and its row do not. Every
        other message keeps the node and block ids it would have had, which is how a
        store changes in place (tests and benchmarks of incremental re-index use it)."""
        folder = self.folders[self.folder(folder_path)]
        nid = (self.next_message << 5) | TYPE_MESSAGE
        self.next_message += 1
        subnodes = Subnodes(self.ndb)

        recipients = Table(self.ndb, RECIPIENT_COLUMNS)
        row = 0
        for kind, addresses in ((RECIPIENT_TO, message.to), (RECIPIENT_CC, message.cc),
                                (RECIPIENT_BCC, message.bcc)):
            for address in addresses:
                recipients.add(row, [(0x0C15, PT_LONG, kind), (0x0E0F, PT_BOOLEAN, True),
                                     (0x0FFE, PT_LONG, 6), (0x3001, PT_UNICODE, address),
                                     (0x3002, PT_UNICODE, "SMTP"), (0x3003, PT_UNICODE, address),
                                     (0x3900, PT_LONG, 0), (0x39FE, PT_UNICODE, address),
                                     (0x3A40, PT_BOOLEAN, False)])
                row += 1
        bid, sub = recipients.write()
        subnodes.add(nid=NID_RECIPIENT_TABLE, bid=bid, sub=sub)

        if message.attachments:
            table = Table(self.ndb, ATTACHMENT_COLUMNS)
            for position, attachment in enumerate(message.attachments):
                attach_nid = (subnodes.next_index << 5) | TYPE_ATTACHMENT
                subnodes.next_index += 1
                props = [(0x0E20, PT_LONG, len(attachment.data)), (0x3001, PT_UNICODE, attachment.filename),
                         (0x3701, PT_BINARY, attachment.data), (0x3704, PT_UNICODE, attachment.filename),
                         (0x3705, PT_LONG, 1), (0x3707, PT_UNICODE, attachment.filename),
                         (0x370B, PT_LONG, -1), (0x370E, PT_UNICODE, attachment.mime_type)]
                data, attach_sub = property_context(self.ndb, props)
                subnodes.add(nid=attach_nid, bid=data, sub=attach_sub)
                table.add(attach_nid, [(0x0E20, PT_LONG, len(attachment.data)),
                                       (0x3704, PT_UNICODE, attachment.filename), (0x3705, PT_LONG, 1),
                                       (0x370B, PT_LONG, -1)])
            bid, sub = table.write()
            subnodes.add(nid=NID_ATTACHMENT_TABLE, bid=bid, sub=sub)

        props = _message_props(message)
        data, sub = property_context(self.ndb, props, subnodes)
        if deleted:
            return nid
        self.ndb.add_node(nid, data, sub, folder.nid)

        if folder.contents is None:
            folder.contents = Table(self.ndb, CONTENTS_COLUMNS, stream=True)
        values = {prop_id: (kind, value) for prop_id, kind, value in props}
        folder.contents.add(nid, {c.prop_id: values[c.prop_id] for c in CONTENTS_COLUMNS
                                  if c.prop_id in values})
        folder.count += 1
        folder.unread += 0 if message.read else 1
        self.messages += 1
        return nid

    # -- closing ----------------------------------------------------------------------

    def close(self) -> Path:
        """Write the folders, the store and both B-trees; rename the file into place."""
        ndb = self.ndb
        for nid in sorted(self.folders):
            self._write_folder(self.folders[nid])
        for nid, kind in TEMPLATES.items():
            bid, sub = Table(ndb, TABLE_COLUMNS[kind]).write()
            ndb.add_late_node(nid, bid, sub, 0)
        bid, sub = property_context(ndb, self._store_props())
        ndb.add_late_node(NID_MESSAGE_STORE, bid, sub, 0)
        bid, sub = property_context(ndb, _name_to_id_props())
        ndb.add_late_node(NID_NAME_TO_ID_MAP, bid, sub, 0)
        rgnid = [0x400] * 32
        rgnid[TYPE_FOLDER] = self.next_folder
        rgnid[TYPE_SEARCH_FOLDER] = 0x4000
        rgnid[TYPE_MESSAGE] = self.next_message
        rgnid[0x08] = 0x8000
        ndb.close(rgnid)
        os.replace(self.partial, self.path)
        files.fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        self.ndb.abort()
        self.partial.unlink(missing_ok=True)

    def _write_folder(self, folder: _Folder) -> None:
        ndb, index = self.ndb, folder.nid & ~0x1F
        hierarchy = Table(ndb, HIERARCHY_COLUMNS)
        for child_nid in sorted(folder.children):
            child = self.folders[child_nid]
            hierarchy.add(child_nid, [(0x3001, PT_UNICODE, child.name), (0x3602, PT_LONG, child.count),
                                      (0x3603, PT_LONG, child.unread),
                                      (0x360A, PT_BOOLEAN, bool(child.children)),
                                      (0x3613, PT_UNICODE, child.container_class)])
        for kind, table in ((TYPE_HIERARCHY, hierarchy),
                            (TYPE_CONTENTS, folder.contents or Table(ndb, CONTENTS_COLUMNS)),
                            (TYPE_ASSOCIATED, Table(ndb, ASSOCIATED_COLUMNS))):
            bid, sub = table.write()
            ndb.add_late_node(index | kind, bid, sub, 0)
        props: list[Prop] = [(0x3001, PT_UNICODE, folder.name), (0x3602, PT_LONG, folder.count),
                             (0x3603, PT_LONG, folder.unread), (0x360A, PT_BOOLEAN, bool(folder.children)),
                             (0x3613, PT_UNICODE, folder.container_class)]
        if folder.nid in (NID_ROOT_FOLDER, self.roles["inbox"]):
            props += [(tag, PT_BINARY, self._entry_id(self.roles[role])) for role, tag in INBOX_ROLE_TAGS.items()]
            # Junk Email is the fifth of the additional REN entry ids; the first four are sync folders.
            props.append((PR_ADDITIONAL_REN_ENTRYIDS, PT_MV_BINARY,
                          [b""] * 4 + [self._entry_id(self.roles["junk"])]))
        bid, sub = property_context(ndb, [p for p in props if p[2] != ""])
        ndb.add_late_node(folder.nid, bid, sub, folder.parent)

    def _entry_id(self, nid: int) -> bytes:
        return struct.pack("<I", 0) + self.store_uid + struct.pack("<I", nid)

    def _store_props(self) -> list[Prop]:
        props: list[Prop] = [(0x0FF9, PT_BINARY, self.store_uid), (0x3001, PT_UNICODE, self.display_name),
                             (0x35DF, PT_LONG, 0x9D),
                             (PR_IPM_SUBTREE_ENTRYID, PT_BINARY, self._entry_id(self.ipm)),
                             (PR_FINDER_ENTRYID, PT_BINARY, self._entry_id(self.finder))]
        props += [(tag, PT_BINARY, self._entry_id(self.roles[role])) for role, tag in STORE_ROLE_TAGS.items()]
        return props


def _address_props(name_tag: int, type_tag: int, email_tag: int, smtp_tag: int, address: str,
                   name: str) -> list[Prop]:
    return [(name_tag, PT_UNICODE, name or address), (type_tag, PT_UNICODE, "SMTP"),
            (email_tag, PT_UNICODE, address), (smtp_tag, PT_UNICODE, address)]


def _message_props(message: Message) -> list[Prop]:
    flags = (MSGFLAG_READ if message.read else 0) | (MSGFLAG_UNSENT if message.unsent else 0) \
        | (MSGFLAG_HASATTACH if message.attachments else 0)
    size = len(message.body) + len(message.headers or "") + sum(len(a.data) for a in message.attachments)
    props: list[Prop] = [(0x001A, PT_UNICODE, message.message_class), (0x0017, PT_LONG, 1),
                         (0x0036, PT_LONG, 0), (0x0E07, PT_LONG, flags), (0x0E08, PT_LONG, min(size, 0x7FFFFFFF)),
                         (0x0E17, PT_LONG, 0), (0x0E1B, PT_BOOLEAN, bool(message.attachments)),
                         (0x3FDE, PT_LONG, 65001)]
    text = [(0x0037, message.subject), (0x0070, message.subject), (0x0E04, "; ".join(message.to)),
            (0x0E03, "; ".join(message.cc)), (0x0E02, "; ".join(message.bcc)),
            (0x1035, message.message_id), (0x007D, message.headers), (0x1000, message.body)]
    props += [(tag, PT_UNICODE, value) for tag, value in text if value]
    if message.sender:
        props += _address_props(0x0C1A, 0x0C1E, 0x0C1F, 0x5D01, message.sender, message.sender_name)
        props += _address_props(0x0042, 0x0064, 0x0065, 0x5D02, message.sender, message.sender_name)
    when = message.submit_time
    for tag, value in ((0x0039, when), (0x0E06, message.delivery_time or when), (0x3007, when), (0x3008, when)):
        if value is not None:
            props.append((tag, PT_SYSTIME, value))
    if message.delivery_tag:
        props.append((DELIVERY_PROP, PT_UNICODE, message.delivery_tag))
    return props


def _name_to_id_props() -> list[Prop]:
    """One named property, x-syncengine-delivery in PS_INTERNET_HEADERS, as 0x8000."""
    name = DELIVERY_NAME.encode("utf-16-le")
    guid_index = 3                                        # 1 and 2 are PS_MAPI and PS_PUBLIC_STRINGS
    kind = (guid_index << 1) | 1                          # string-named
    entry = struct.pack("<IHH", 0, kind, DELIVERY_PROP - 0x8000)   # name at offset 0 of the string stream
    name_hash = crc(name)
    bucket = (name_hash ^ kind) % NAMEID_BUCKETS
    return [(0x0001, PT_LONG, NAMEID_BUCKETS), (0x0002, PT_BINARY, PS_INTERNET_HEADERS),
            (0x0003, PT_BINARY, entry), (0x0004, PT_BINARY, struct.pack("<I", len(name)) + name + b"\0\0"),
            (0x1000 + bucket, PT_BINARY, struct.pack("<IHH", name_hash, kind, DELIVERY_PROP - 0x8000))]
