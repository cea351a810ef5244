"""MS-PST messaging layer: a Unicode PST with a store, folders and messages.

    with PstWriter(Path("out.pst"), "Recovered mail") as pst:
        pst.add("Inbox", Message(subject="Hi", sender="bob@example.org", to=["alice@acme.example"]))

The standard folders (Inbox, Outbox, Sent Items, Drafts, Deleted Items, Junk Email,
Calendar) always exist, named by the store's and the Inbox's role entry ids; any other
path ("Inbox/Projects/Q4") is created on first use. Everything a new store made by
Outlook holds is there too, at the node ids Outlook gives it (docs/pst.md). Messages are written as they come:
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
from .layout import UNICODE, Layout
from .ndb import FileWriter, crc

NID_MESSAGE_STORE, NID_NAME_TO_ID_MAP, NID_ROOT_FOLDER = 0x21, 0x61, 0x122
NID_RECIPIENT_TABLE, NID_ATTACHMENT_TABLE = 0x692, 0x671
NID_SEARCH_ACTIVITY_LIST, NID_RECEIVE_FOLDER_TABLE = 0x201, 0x62B
NID_SPAM_SEARCH_FOLDER = 0x2223                # with its update queue, criteria and contents
TYPE_FOLDER, TYPE_SEARCH_FOLDER, TYPE_MESSAGE, TYPE_ATTACHMENT = 0x02, 0x03, 0x04, 0x05
TYPE_ASSOCIATED_MESSAGE, TYPE_HIERARCHY, TYPE_CONTENTS, TYPE_ASSOCIATED = 0x08, 0x0D, 0x0E, 0x0F
TYPE_SEARCH_UPDATE_QUEUE, TYPE_SEARCH_CRITERIA, TYPE_SEARCH_CONTENTS = 0x06, 0x07, 0x10
# Outlook's header counters hold the last index given out: a new store's first folder
# is 0x401 (0x8022, the IPM subtree), its first message 0x10001 (0x200024).
LAST_FOLDER, LAST_MESSAGE, LAST_SEARCH_FOLDER, LAST_ASSOCIATED = 0x400, 0x10000, 0x4000, 0x8000
PS_INTERNET_HEADERS = uuid.UUID("00020386-0000-0000-c000-000000000046").bytes_le
DELIVERY_NAME = "x-syncengine-delivery"        # readers.pst.DELIVERY_HEADER
DELIVERY_PROP = 0x8000
NAMEID_BUCKETS = 251

MSGFLAG_READ, MSGFLAG_UNSENT, MSGFLAG_HASATTACH = 0x01, 0x08, 0x10
RECIPIENT_TO, RECIPIENT_CC, RECIPIENT_BCC = 1, 2, 3

# After Deleted Items, which a new store has already (name, role, container class); the
# role names the entry id that points at the folder.
STANDARD_FOLDERS = [("Inbox", "inbox", "IPF.Note"),
                    ("Outbox", "outbox", "IPF.Note"), ("Sent Items", "sent", "IPF.Note"),
                    ("Drafts", "drafts", "IPF.Note"), ("Junk Email", "junk", "IPF.Note"),
                    ("Calendar", "calendar", "IPF.Appointment")]
STORE_ROLE_TAGS = {"outbox": 0x35E2, "deleted": 0x35E3, "sent": 0x35E4}
INBOX_ROLE_TAGS = {"calendar": 0x36D0, "drafts": 0x36D7}
PR_IPM_SUBTREE_ENTRYID, PR_COMMON_VIEWS_ENTRYID, PR_FINDER_ENTRYID = 0x35E0, 0x35E6, 0x35E7
PR_ADDITIONAL_REN_ENTRYIDS = 0x36D8
MAPI_ONE_OFF_UID = bytes.fromhex("812b1fa4bea310199d6e00dd010f5402")
ONE_OFF_UNICODE, ONE_OFF_NO_RICH_INFO = 0x8000, 0x0001


def _columns(*tags: int) -> list[Column]:
    return [Column(tag >> 16, tag & 0xFFFF) for tag in tags]


# The templates' columns as Outlook writes them in a new store (outlook-pst-rs__Empty.pst;
# tests/test_pst_outlook.py holds us to it). A folder's tables start from its template.
HIERARCHY_COLUMNS = _columns(0x0E300102, 0x0E330014, 0x0E340102, 0x0E380003, 0x3001001F, 0x36020003,
                             0x36030003, 0x360A000B, 0x3613001F, 0x66350003, 0x66360003)
CONTENTS_COLUMNS = _columns(0x00170003, 0x001A001F, 0x00360003, 0x0037001F, 0x00390040, 0x0042001F,
                            0x0057000B, 0x0058000B, 0x0070001F, 0x00710102, 0x0E03001F, 0x0E04001F,
                            0x0E060040, 0x0E070003, 0x0E080003, 0x0E170003, 0x0E300102, 0x0E330014,
                            0x0E340102, 0x0E380003, 0x0E3C0102, 0x0E3D0102, 0x10970003, 0x30080040,
                            0x30130102, 0x65C60003)
ASSOCIATED_COLUMNS = _columns(0x001A001F, 0x0E070003, 0x0E170003, 0x3001001F, 0x6800001F, 0x6803000B,
                              0x68051003, 0x682F001F, 0x70030003, 0x70040102, 0x70050102, 0x7006001F,
                              0x70070003)
SEARCH_CONTENTS_COLUMNS = _columns(0x00170003, 0x001A001F, 0x00360003, 0x0037001F, 0x0042001F,
                                   0x0057000B, 0x0058000B, 0x0E03001F, 0x0E04001F, 0x0E05001F,
                                   0x0E060040, 0x0E070003, 0x0E080003, 0x0E170003, 0x0E2A000B,
                                   0x30080040, 0x67F10003)
RECIPIENT_COLUMNS = _columns(0x0C150003, 0x0E0F000B, 0x0FF90102, 0x0FFE0003, 0x0FFF0102, 0x3001001F,
                             0x3002001F, 0x3003001F, 0x300B0102, 0x39000003, 0x39FF001F, 0x3A40000B)
# Outlook's message recipient tables carry the SMTP address beside the template's columns
# (every message of tika__testPST_variousBodyTypes.pst does); our reader and libpst read it.
MESSAGE_RECIPIENT_COLUMNS = RECIPIENT_COLUMNS + _columns(0x39FE001F)
ATTACHMENT_COLUMNS = _columns(0x0E200003, 0x3704001F, 0x37050003, 0x370B0003)
TEMPLATES = {
    0x60D: HIERARCHY_COLUMNS, 0x60E: CONTENTS_COLUMNS, 0x60F: ASSOCIATED_COLUMNS,
    0x610: SEARCH_CONTENTS_COLUMNS, NID_RECEIVE_FOLDER_TABLE: _columns(0x001A001F, 0x66050003),
    0x64C: _columns(0x00390040, 0x0E100003, 0x0E140003),          # outgoing queue
    NID_ATTACHMENT_TABLE: ATTACHMENT_COLUMNS, NID_RECIPIENT_TABLE: RECIPIENT_COLUMNS,
    0x6B6: _columns(0x0E330014, 0x0E370102, 0x0E380003),
    0x6D7: _columns(0x001A001F, 0x0E300102, 0x0E310102, 0x0E330014, 0x0E340102, 0x0E380003, 0x0E3E0102),
    0x6F8: _columns(0x0E330014, 0x30070040),
}
# Internal nodes whose contents MS-PST leaves undocumented, as Outlook writes them in a
# new store (0xC01, 0xE01 from outlook-pst-rs__Empty.pst; 0xF01 as tika__testPST_variousBodyTypes.pst
# holds it, without Empty.pst's store-specific GUIDs and time). The rest are empty.
OUTLOOK_INTERNAL_NODES = {
    0x1E1: b"",                                   # search management queue: no pending updates
    0x261: b"", 0xE41: b"", 0xEC1: b"", 0xEE1: b"", 0xF21: b"",
    0xC01: bytes.fromhex("1800ec9c200000000000000040000000b510040000000000020000000c0010001800"),
    0xE01: bytes.fromhex("4c00eccc20000000000000004000000001000000040020000000000003000000000000001000"
                         "000000000000b348000000000000000000000000000000000000e2010000b50404000000"
                         "0000020000000c0044004c00"),
    0xF01: bytes.fromhex("08" + "00" * 31 + "01" + "00" * 71),
}


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

    def __init__(self, path: Path, display_name: str = "Personal Folders", layout: Layout = UNICODE):
        self.path = Path(path)
        # a name of its own (created exclusively): two exports, or a file planted there, never meet
        self.partial = self.path.with_name(f".{self.path.name[:200]}.{os.urandom(6).hex()}.partial")
        self.ndb = FileWriter(self.partial, layout)
        self.display_name = display_name
        self.store_uid = uuid.uuid5(uuid.NAMESPACE_URL, f"syncengine-pst:{self.path.name}").bytes
        self.folders: dict[int, _Folder] = {}
        self.by_path: dict[str, int] = {}
        self.roles: dict[str, int] = {}
        self.last_folder = LAST_FOLDER
        self.last_message = LAST_MESSAGE
        self.messages = 0
        # Outlook's new store: root, the IPM subtree (0x8022), Search Root (0x8042), Deleted
        # Items (0x8062), common views (0x8082), and the spam search folder (0x2223).
        self.folders[NID_ROOT_FOLDER] = _Folder(NID_ROOT_FOLDER, NID_ROOT_FOLDER, "")
        self.ipm = self._new_folder(NID_ROOT_FOLDER, "Top of Outlook data file")
        self.finder = self._new_folder(NID_ROOT_FOLDER, "Search Root")
        self.roles["deleted"] = self.by_path["Deleted Items"] = self._new_folder(self.ipm, "Deleted Items")
        self.common_views = self._new_folder(NID_ROOT_FOLDER, "IPM_COMMON_VIEWS")
        self.folders[NID_SPAM_SEARCH_FOLDER] = _Folder(NID_SPAM_SEARCH_FOLDER, NID_ROOT_FOLDER,
                                                       "SPAM Search Folder 2", container_class="")
        self.folders[NID_ROOT_FOLDER].children.append(NID_SPAM_SEARCH_FOLDER)
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
        if self.last_folder >= 0xFFFF:
            raise ValueError("a PST written here holds at most 64,510 folders")
        self.last_folder += 1
        nid = (self.last_folder << 5) | TYPE_FOLDER
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
        self.last_message += 1
        nid = (self.last_message << 5) | TYPE_MESSAGE
        subnodes = Subnodes(self.ndb)

        recipients = Table(self.ndb, MESSAGE_RECIPIENT_COLUMNS)
        row = 0
        for kind, addresses in ((RECIPIENT_TO, message.to), (RECIPIENT_CC, message.cc),
                                (RECIPIENT_BCC, message.bcc)):
            for address in addresses:
                entry_id = one_off_entry_id(address, address)
                recipients.add(row, [(0x0C15, PT_LONG, kind), (0x0E0F, PT_BOOLEAN, True),
                                     (0x0FF9, PT_BINARY, entry_id), (0x0FFE, PT_LONG, 6),
                                     (0x0FFF, PT_BINARY, entry_id), (0x3001, PT_UNICODE, address),
                                     (0x3002, PT_UNICODE, "SMTP"), (0x3003, PT_UNICODE, address),
                                     (0x300B, PT_BINARY, search_key(address)), (0x3900, PT_LONG, 0),
                                     (0x39FE, PT_UNICODE, address),
                                     (0x39FF, PT_UNICODE, address.encode("ascii", "replace").decode()),
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
        props.append((0x300B, PT_BINARY, uuid.uuid5(uuid.UUID(bytes=self.store_uid), str(nid)).bytes))
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
            if nid != NID_SPAM_SEARCH_FOLDER:
                self._write_folder(self.folders[nid])
        self._write_spam_search_folder()
        for nid, columns in TEMPLATES.items():
            table = Table(ndb, columns)
            if nid == NID_RECEIVE_FOLDER_TABLE:   # mail of any class is received in the Inbox
                table.add(1, [(0x001A, PT_UNICODE, ""), (0x6605, PT_LONG, self.roles["inbox"])])
            ndb.add_late_node(nid, *table.write(), 0)
        for nid, data in OUTLOOK_INTERNAL_NODES.items():
            ndb.add_late_node(nid, ndb.write_block(data) if data else 0, 0, 0)
        ndb.add_late_node(NID_SEARCH_ACTIVITY_LIST, ndb.write_block(struct.pack("<I", NID_SPAM_SEARCH_FOLDER)), 0, 0)
        bid, sub = property_context(ndb, self._store_props())
        ndb.add_late_node(NID_MESSAGE_STORE, bid, sub, 0)
        bid, sub = property_context(ndb, _name_to_id_props())
        ndb.add_late_node(NID_NAME_TO_ID_MAP, bid, sub, 0)
        rgnid = [0x400] * 32
        for kind in (TYPE_FOLDER, TYPE_HIERARCHY, TYPE_CONTENTS, TYPE_ASSOCIATED):
            rgnid[kind] = self.last_folder
        rgnid[TYPE_SEARCH_FOLDER] = LAST_SEARCH_FOLDER
        rgnid[TYPE_MESSAGE] = self.last_message
        rgnid[TYPE_ASSOCIATED_MESSAGE] = LAST_ASSOCIATED
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
                                      (0x3613, PT_UNICODE, child.container_class or None)])
        for kind, table in ((TYPE_HIERARCHY, hierarchy),
                            (TYPE_CONTENTS, folder.contents or Table(ndb, CONTENTS_COLUMNS)),
                            (TYPE_ASSOCIATED, Table(ndb, ASSOCIATED_COLUMNS))):
            bid, sub = table.write()
            ndb.add_late_node(index | kind, bid, sub, 0)
        props: list[Prop] = [(0x3001, PT_UNICODE, folder.name), (0x3602, PT_LONG, folder.count),
                             (0x3603, PT_LONG, folder.unread), (0x360A, PT_BOOLEAN, bool(folder.children))]
        if folder.nid not in (NID_ROOT_FOLDER, self.ipm, self.finder, self.common_views):
            props.append((0x3613, PT_UNICODE, folder.container_class))
        if folder.nid in (NID_ROOT_FOLDER, self.roles["inbox"]):
            props += [(tag, PT_BINARY, self._entry_id(self.roles[role])) for role, tag in INBOX_ROLE_TAGS.items()]
            # Junk Email is the fifth of the additional REN entry ids; the first four are sync folders.
            props.append((PR_ADDITIONAL_REN_ENTRYIDS, PT_MV_BINARY,
                          [b""] * 4 + [self._entry_id(self.roles["junk"])]))
        bid, sub = property_context(ndb, props)
        ndb.add_late_node(folder.nid, bid, sub, folder.parent)

    def _write_spam_search_folder(self) -> None:
        """Outlook's junk-mail search folder: empty, with its (empty) update queue, its
        criteria and its contents table, at the node ids Outlook gives them."""
        ndb, index = self.ndb, NID_SPAM_SEARCH_FOLDER & ~0x1F
        ndb.add_late_node(index | TYPE_SEARCH_UPDATE_QUEUE, 0, 0, 0)
        ndb.add_late_node(index | TYPE_SEARCH_CRITERIA, *property_context(ndb, [(0x660B, PT_LONG, 0)]), 0)
        ndb.add_late_node(index | TYPE_SEARCH_CONTENTS, *Table(ndb, SEARCH_CONTENTS_COLUMNS).write(), 0)
        folder = self.folders[NID_SPAM_SEARCH_FOLDER]
        props: list[Prop] = [(0x3001, PT_UNICODE, folder.name), (0x3602, PT_LONG, 0), (0x3603, PT_LONG, 0),
                             (0x360A, PT_BOOLEAN, False)]
        ndb.add_late_node(folder.nid, *property_context(ndb, props), folder.parent)

    def _entry_id(self, nid: int) -> bytes:
        return struct.pack("<I", 0) + self.store_uid + struct.pack("<I", nid)

    def _store_props(self) -> list[Prop]:
        props: list[Prop] = [(0x0FF9, PT_BINARY, self.store_uid), (0x3001, PT_UNICODE, self.display_name),
                             (0x35DF, PT_LONG, 0x9D),
                             (PR_IPM_SUBTREE_ENTRYID, PT_BINARY, self._entry_id(self.ipm)),
                             (PR_COMMON_VIEWS_ENTRYID, PT_BINARY, self._entry_id(self.common_views)),
                             (PR_FINDER_ENTRYID, PT_BINARY, self._entry_id(self.finder)),
                             # as Outlook's new store: no replication flags, no password
                             (0x0E38, PT_LONG, 0), (0x6633, PT_BOOLEAN, True), (0x67FF, PT_LONG, 0)]
        props += [(tag, PT_BINARY, self._entry_id(self.roles[role])) for role, tag in STORE_ROLE_TAGS.items()]
        return props


def one_off_entry_id(name: str, address: str) -> bytes:
    """A recipient's one-off entry id (MS-OXCDATA 2.2.5.1), as Outlook writes it for an
    SMTP address that is not in an address book."""
    text = "\0".join((name, "SMTP", address)) + "\0"
    return (struct.pack("<I", 0) + MAPI_ONE_OFF_UID
            + struct.pack("<HH", 0, ONE_OFF_UNICODE | ONE_OFF_NO_RICH_INFO) + text.encode("utf-16-le"))


def search_key(address: str) -> bytes:
    """PidTagSearchKey of an SMTP recipient: "SMTP:ADDRESS" in capitals, NUL-ended."""
    return b"SMTP:" + address.upper().encode("ascii", "replace") + b"\0"


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
