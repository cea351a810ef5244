"""PST and OST stores: by node id (pst_nodes, pst_items) or through libpff-python (`pypff`).

A Unicode store with 512-byte pages (PST, and OST before Outlook 2013) is read by node
id: the node B-tree lists every message, so the read is linear in the number of items.
libpff reaches a folder's n-th message by walking its children from the first (34 us
at the start of an 8,000-item folder, 95 us at its end, here), so a whole read through
pypff is quadratic in folder size: fine for the corpus, hours for a 400,000-item Inbox.
Other formats, and any store the direct reader cannot open, go through pypff, whose
records are the same (tests compare both on every readable corpus store).

Only properties are read, never bodies or attachments. Folder roles follow
continuity.md: the store's entry ids, then the Inbox's and root's, then names.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pypff

try:
    import resource  # POSIX: the child's memory limit
except ImportError:
    resource = None

from .. import folders, headers, normalise
from .. import workers as workers_mod
from ..record import ReadError, Record, SourceResult
from . import mapi, pst_items, pst_nodes

DELIVERY_HEADER = "x-syncengine-delivery"

# MAPI property tags (ids only: pypff matches entries by id).
PR_MESSAGE_CLASS = 0x001A
PR_SUBJECT = 0x0037
PR_CLIENT_SUBMIT_TIME = 0x0039
PR_TRANSPORT_HEADERS = 0x007D
PR_RECIPIENT_TYPE = 0x0C15
PR_INTERNET_MESSAGE_ID = 0x1035
PR_ADDRTYPE = 0x3002
PR_EMAIL_ADDRESS = 0x3003
PR_SMTP_ADDRESS = 0x39FE
PR_IPM_SUBTREE_ENTRYID = 0x35E0
STORE_ROLE_ENTRYIDS = {0x35E2: "outbox", 0x35E3: "deleted", 0x35E4: "sent"}
FOLDER_ROLE_ENTRYIDS = {0x36D0: "calendar", 0x36D7: "drafts"}
PR_ADDITIONAL_REN_ENTRYIDS = 0x36D8

NID_TYPE_SEARCH_FOLDER = 0x03
FILETIME_EPOCH = 116444736000000000  # 1970-01-01 in 100 ns ticks since 1601


def open_store(path: Path) -> pypff.file:
    _check_header(path)
    store = pypff.file()
    try:
        store.open(str(path))
    except (OSError, IOError) as exc:
        raise StoreError(libpff_reason(exc)) from None
    return store


class StoreError(Exception):
    """The file as a whole is not a readable PST/OST."""


HEADER_SIZE = 512  # the smallest PST header (ANSI); Unicode headers are larger


def _check_header(path: Path) -> None:
    """Say plainly what libpff reports as 'unable to read file header data'."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SIZE)
    if head[:4] != b"!BDN":
        raise StoreError("not a PST/OST file (no !BDN signature)")
    if len(head) < HEADER_SIZE:
        raise StoreError(f"truncated: only {len(head)} bytes, a PST header needs {HEADER_SIZE}")


def libpff_reason(exc: BaseException) -> str:
    """libpff errors are chains `pypff_call: text. innermost: text. ... outermost: text.`;
    the innermost libpff text (second segment) is the cause."""
    parts = [p.strip() for p in re.split(r"\.\s+(?=\w+:)", str(exc)) if p.strip()]
    cause = parts[1] if len(parts) > 1 else (parts[0] if parts else "")
    return re.sub(r"^\w+:\s*", "", cause).rstrip(".") or type(exc).__name__


def count_messages(path: Path) -> int:
    """Messages in the store, for the progress bar: from the node B-tree when it can be
    read directly (opening a large store in pypff takes a minute), else folder counts."""
    try:
        nodes = pst_nodes.read(path)
    except pst_items.UNREADABLE:
        nodes = None
    if nodes is not None:
        nodes.close()
        return nodes.count
    try:
        store = open_store(path)
    except (StoreError, OSError):
        return 0
    try:
        return sum(node.count for node, _, _ in _mailbox_folders(store, _tree(store.root_folder)))
    except Exception:  # a broken tree is reported by the real walk
        return 0
    finally:
        store.close()


def read(path: Path, result: SourceResult, nodes: pst_nodes.Nodes | None = None,
         workers: int = 1) -> Iterator[Record]:
    """Yield a record per message in the store's mailbox folders.

    Per-item failures are appended to `result.errors`; a store that cannot be opened
    sets `result.fatal`. Items outside the IPM subtree are counted in `result.skipped`.
    `nodes` is the store's node B-tree when the caller read it already; with `workers`
    above 1, a large store read by node id is parsed in that many processes.
    """
    cut = _cut_short(path)
    if cut:
        result.fatal = True
        result.errors.append(ReadError(str(path), cut))
        return
    why = None
    owned = None
    if nodes is None:
        try:
            nodes = owned = pst_nodes.read(path)
        except pst_items.UNREADABLE as exc:
            nodes, why = None, f"its node B-tree is not read directly ({exc})"
        else:
            why = None if nodes is not None else "a format read by libpff only (ANSI, or a version not read here)"
    try:
        if nodes is not None:
            try:
                direct = Direct(path, nodes.others, nodes.counts)
            except pst_items.UNREADABLE as exc:
                direct, why = None, f"it is not read directly ({exc})"
            if direct is not None and not direct.errors:
                result.reader = "node id"
                try:
                    result.skipped = direct.skipped
                    if workers > 1 and nodes.count >= PARALLEL_FROM:
                        yield from _parallel(path, nodes, direct, result, workers)
                    else:
                        for block in nodes.blocks():
                            yield from direct.records(block, direct.inside(block), result)
                finally:
                    direct.close()
                return
            if direct is not None:
                why = f"its folders are not read directly ({direct.errors[0].reason})"
                direct.close()
    finally:
        if owned is not None:
            owned.close()
    result.reader = f"libpff: {why}"
    yield from read_pypff(path, result)


def _cut_short(path: Path) -> str | None:
    """pst_nodes.cut_short for any Unicode store, before either reader opens it (libpff
    would read a cut file without a complaint too)."""
    try:  # non-blocking: a FIFO put where the file was must not hang the reader here
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    except OSError:
        return None   # the reader that opens it names the reason
    try:
        header, size = os.pread(fd, 192, 0), os.fstat(fd).st_size
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(header) < 192 or header[:4] != b"!BDN" or struct.unpack_from("<H", header, 10)[0] < 0x15:
        return None
    return pst_nodes.cut_short(header, size)


PARALLEL_FROM = 20_000   # messages: below this, starting processes costs more than it saves


def _parallel(path: Path, nodes: pst_nodes.Nodes, direct: Direct, result: SourceResult,
              workers: int) -> Iterator[Record]:
    """Records in node order, parsed by `workers` processes that each open the store
    once; each is sent its block of nodes (never the whole table), and at most two
    blocks per worker are in flight, so memory stays flat."""
    with workers_mod.pool(workers, _open_worker, (path, nodes.others, nodes.counts)) as pool:
        pending: deque = deque()
        for block in nodes.blocks():
            pending.append(pool.submit(_read_worker, block, direct.inside(block)))
            if len(pending) >= 2 * workers:
                records, errors = pending.popleft().result()
                result.errors.extend(errors)
                yield from records
        while pending:
            records, errors = pending.popleft().result()
            result.errors.extend(errors)
            yield from records


_worker: Direct | None = None


def _open_worker(path: Path, others: dict[int, tuple[int, int, int]], counts: dict[int, int]) -> None:
    global _worker
    _worker = Direct(path, others, counts)


def _read_worker(block: pst_nodes.Block, indexes: list[int]) -> tuple[list[Record], list[ReadError]]:
    result = SourceResult()
    records = list(_worker.records(block, indexes, result))
    return records, result.errors


# libpff is C: a crafted or broken store could make it spin or allocate without end. Its
# reads run in a child process with an address-space limit, watched: no record for this
# long (plus a little per GB of file, for opening a large store) and it is stopped.
PYPFF_STALL_SECONDS = 120.0
PYPFF_STALL_PER_GB = 60.0
PYPFF_BATCH = 200


def read_pypff(path: Path, result: SourceResult) -> Iterator[Record]:
    """`read` through libpff: any PST/OST format libpff knows, in a watched child process
    (time without progress, memory); what it read before a stop is kept, and the stop is
    this store's recorded error (N3), never a hang or the whole machine's memory."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        result.fatal = True
        result.errors.append(ReadError(str(path), f"cannot read: {exc.strerror or exc}"))
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_pypff_child, args=(path, sending, min(16 << 30, max(1 << 30, 4 * size))),
                            daemon=True)
    child.start()
    sending.close()
    stall = PYPFF_STALL_SECONDS + PYPFF_STALL_PER_GB * size / (1 << 30)
    read = 0
    try:
        while True:
            if not receiving.poll(stall):
                result.fatal = read == 0
                result.errors.append(ReadError(str(path), f"libpff read nothing more for {stall:.0f} s: stopped "
                                                          "(a broken or crafted store)"))
                return
            try:
                kind, payload = receiving.recv()
            except (EOFError, OSError):
                result.fatal = read == 0
                result.errors.append(ReadError(str(path), "libpff stopped before the end of the store "
                                                          f"(exit {child.exitcode}; out of memory?)"))
                return
            if kind == "records":
                read += len(payload)
                yield from payload
                continue
            errors, fatal, skipped = payload
            result.errors.extend(errors)
            result.fatal = result.fatal or fatal
            result.skipped = skipped
            return
    finally:
        receiving.close()
        if child.is_alive():
            child.kill()
        child.join(5)


def _pypff_child(path: Path, sending, memory: int) -> None:
    """The child's side of read_pypff: records in batches, then (errors, fatal, skipped)."""
    workers_mod.die_with_parent()
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ValueError, OSError, AttributeError):
        pass  # no such limit here (Windows): the stall watchdog still stands
    result = SourceResult()
    batch: list[Record] = []
    try:
        for record in _read_pypff(path, result):
            batch.append(record)
            if len(batch) >= PYPFF_BATCH:
                sending.send(("records", batch))
                batch = []
    except MemoryError:
        result.errors.append(ReadError(str(path), f"libpff needed more than {memory >> 20} MB: stopped"))
    if batch:
        sending.send(("records", batch))
    sending.send(("done", (result.errors, result.fatal, result.skipped)))
    sending.close()


def _read_pypff(path: Path, result: SourceResult) -> Iterator[Record]:
    try:
        store = open_store(path)
    except StoreError as exc:
        result.fatal = True
        result.errors.append(ReadError(str(path), str(exc)))
        return
    except OSError as exc:
        result.fatal = True
        result.errors.append(ReadError(str(path), f"cannot read: {exc.strerror or exc}"))
        return
    try:
        yield from _walk(store, result)
    except Exception as exc:  # a folder tree broken past the per-item checks
        result.errors.append(ReadError(str(path), f"walk stopped: {libpff_reason(exc)}"))
    finally:
        store.close()


@dataclass(slots=True)
class _Node:
    folder: object
    nid: int
    count: int
    children: list[int]
    _name: str | None = None

    @property
    def name(self) -> str:
        # libpff decodes names on each access, and most folders' names are never needed.
        if self._name is None:
            self._name = self.folder.name or ""
        return self._name


def _tree(root) -> dict[int, _Node]:
    """Every folder once: pypff builds new objects on each `sub_folders` access."""
    nodes: dict[int, _Node] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        children = list(folder.sub_folders)
        nodes[folder.identifier] = _Node(folder, folder.identifier, folder.number_of_sub_messages,
                                         [c.identifier for c in children])
        stack.extend(children)
    return nodes


def _walk(store: pypff.file, result: SourceResult) -> Iterator[Record]:
    named_delivery = _named_property_ids(store, DELIVERY_HEADER)
    tree = _tree(store.root_folder)
    mailbox = list(_mailbox_folders(store, tree, result))
    inside = {node.nid for node, _, _ in mailbox}
    result.skipped = sum(node.count for nid, node in tree.items() if nid not in inside)
    for node, path, role in mailbox:
        for index in range(node.count):
            where = f"{path or '/'}#{index}"
            try:
                item = node.folder.get_sub_message(index)
                yield _record(item, path, role, named_delivery)
            except Exception as exc:  # libpff raises OSError/IOError; bad data may raise others
                result.errors.append(ReadError(where, libpff_reason(exc)))


def _mailbox_folders(store: pypff.file, tree: dict[int, _Node], result: SourceResult | None = None):
    """(node, path relative to the IPM subtree, role) for each mailbox folder."""
    root = tree[store.root_folder.identifier]
    store_props = _record_set(store.message_store)
    ipm = tree.get(_entryid_nid(store_props, PR_IPM_SUBTREE_ENTRYID)) or _ipm_by_name(tree, root)
    if ipm is None:
        if result is not None:
            result.errors.append(ReadError("/", "no IPM subtree: the store has no mailbox folders"))
        return

    roles: dict[int, str] = {}
    for tag, role in STORE_ROLE_ENTRYIDS.items():
        nid = _entryid_nid(store_props, tag)
        if nid is not None:
            roles.setdefault(nid, role)

    top = [tree[nid] for nid in ipm.children]
    inbox = _find_inbox(top)
    holder_of_ipm = next((n for n in tree.values() if ipm.nid in n.children), None)
    for holder in (inbox, holder_of_ipm):
        if holder is None:
            continue
        props = _record_set(holder.folder)
        for tag, role in FOLDER_ROLE_ENTRYIDS.items():
            nid = _entryid_nid(props, tag)
            if nid is not None:
                roles.setdefault(nid, role)
        for index, nid in enumerate(_multi_entryid_nids(props, PR_ADDITIONAL_REN_ENTRYIDS)):
            if index < len(folders.ADDITIONAL_REN_ROLES) and nid is not None:
                roles.setdefault(nid, folders.ADDITIONAL_REN_ROLES[index])
    if inbox is not None:
        roles.setdefault(inbox.nid, "inbox")

    def visit(node: _Node, path: str, parent_role: str | None):
        own = roles.get(node.nid)
        if own is None:
            if node.nid & 0x1F == NID_TYPE_SEARCH_FOLDER:
                own = "search"
            elif parent_role is None:
                own = folders.role_from_name(node.name)
            elif parent_role == "sync":
                own = "sync"
            else:
                own = "other"
        yield node, path, own
        for nid in node.children:
            child = tree[nid]
            yield from visit(child, f"{path}/{child.name}" if path else child.name, own)

    # Some writers put mail straight into the IPM subtree's own folder.
    yield ipm, "", "other"
    for node in top:
        yield from visit(node, node.name, None)


def _ipm_by_name(tree: dict[int, _Node], root: _Node) -> _Node | None:
    """An OST keeps its mailbox under `Root - Mailbox/IPM_SUBTREE`; `Root - Public` is not ours."""
    for child in (tree[nid] for nid in root.children):
        if child.name.casefold() == "root - public":
            continue
        for grandchild in (tree[nid] for nid in child.children):
            if grandchild.name.upper() == "IPM_SUBTREE":
                return grandchild
    return None


def _find_inbox(top: list[_Node]) -> _Node | None:
    """The Inbox by name, else the top-level folder that carries the Inbox's entry ids."""
    for node in top:
        if folders.role_from_name(node.name) == "inbox":
            return node
    for node in top:
        props = _record_set(node.folder)
        if props is not None and props.get_entry_by_type(0x36D0) is not None:
            return node
    return None


def _record_set(item):
    try:
        return item.get_record_set(0) if item is not None and item.number_of_record_sets else None
    except OSError:
        return None


def _entryid_nid(props, tag: int) -> int | None:
    """A PST short-term entry id ends in the node id; an OST long-term id does not map."""
    if props is None:
        return None
    entry = props.get_entry_by_type(tag)
    data = entry.data if entry is not None else None
    if not data or len(data) != 24:
        return None
    return struct.unpack_from("<I", data, 20)[0]


def _multi_entryid_nids(props, tag: int) -> list[int | None]:
    if props is None:
        return []
    entry = props.get_entry_by_type(tag)
    data = entry.data if entry is not None else None
    if not data or len(data) < 4:
        return []
    count = struct.unpack_from("<I", data, 0)[0]
    if count > 64 or 4 + 4 * count > len(data):
        return []
    offsets = list(struct.unpack_from(f"<{count}I", data, 4)) + [len(data)]
    nids: list[int | None] = []
    for start, end in zip(offsets, offsets[1:], strict=False):  # consecutive pairs
        value = data[start:end]
        nids.append(struct.unpack_from("<I", value, 20)[0] if len(value) == 24 else None)
    return nids


def _named_property_ids(store: pypff.file, name: str) -> tuple[int, ...]:
    """Property ids that the store's name-to-id map gives the string name `name`.

    The map's entry stream (0x0003) holds 8-byte NAMEID records; those with the N bit
    set point into the string stream (0x0004) at a 4-byte length and UTF-16LE text.
    """
    try:
        props = _record_set(store.name_to_id_map)
    except OSError:
        return ()
    if props is None:
        return ()
    entries = props.get_entry_by_type(0x0003)
    strings = props.get_entry_by_type(0x0004)
    if entries is None or strings is None or not entries.data or not strings.data:
        return ()
    entry_data, string_data = entries.data, strings.data
    if name.encode("utf-16-le") not in string_data.lower():
        return ()
    found = []
    for offset in range(0, len(entry_data) - 7, 8):
        value, guid_and_kind, index = struct.unpack_from("<IHH", entry_data, offset)
        if not guid_and_kind & 1 or value + 4 > len(string_data):
            continue
        length = struct.unpack_from("<I", string_data, value)[0]
        text = string_data[value + 4: value + 4 + length].decode("utf-16-le", "replace")
        if text.casefold() == name:
            found.append(0x8000 + index)
    return tuple(found)


def _subject(props) -> str:
    """PR_SUBJECT in a store may start with 0x01 and a prefix length: two marker characters."""
    value = _text(props, PR_SUBJECT) or ""
    return value[2:] if value.startswith("\x01") else value


def _text(props, tag: int) -> str | None:
    entry = props.get_entry_by_type(tag)
    if entry is None:
        return None
    try:
        value = entry.data_as_string
    except (OSError, IOError):
        return None
    return value.rstrip("\x00") if value else None


def _named_text(props, tags: tuple[int, ...]) -> str | None:
    """libpff resolves ids of 0x8000 and up through the store's name-to-id map and then
    no longer finds them by number: walk the entries and match the raw id instead."""
    for entry in props.entries:
        if entry.entry_type in tags:
            try:
                value = entry.data_as_string
            except (OSError, IOError):
                return None
            return value.rstrip("\x00") if value else None
    return None


def _record(item, folder: str, role: str, named_delivery: tuple[int, ...]) -> Record:
    props = item.get_record_set(0)
    transport = _text(props, PR_TRANSPORT_HEADERS)
    picked = headers.pick(transport)

    raw_mid = _text(props, PR_INTERNET_MESSAGE_ID)
    mid_source = "mapi" if normalise.message_id(raw_mid) else None
    if mid_source is None:
        raw_mid = headers.first(picked, "message-id")
        mid_source = "headers" if normalise.message_id(raw_mid) else None

    submit = props.get_entry_by_type(PR_CLIENT_SUBMIT_TIME)
    submit_ts = None
    if submit is not None:
        ticks = submit.data_as_integer
        if ticks:
            submit_ts = (ticks - FILETIME_EPOCH) // 10_000_000
    if submit_ts is None:
        submit_ts = normalise.header_date(headers.first(picked, "date"))

    delivery = headers.first(picked, DELIVERY_HEADER)
    if delivery is None and named_delivery:
        delivery = _named_text(props, named_delivery)

    return Record(
        locator=str(item.identifier),
        folder=folder,
        role=role,
        message_id=normalise.message_id(raw_mid),
        mid_source=mid_source,
        submit_ts=submit_ts,
        subject=_subject(props),
        sender=mapi.sender(lambda tag: _text(props, tag), picked),
        recipients=normalise.recipients_key(_recipients(item, picked)),
        resent_key=normalise.resent_key(headers.first(picked, "resent-message-id"),
                                        headers.first(picked, "resent-date")),
        message_class=_text(props, PR_MESSAGE_CLASS),
        delivery_tag=delivery.strip() if delivery else None,
    )


def _recipients(item, picked: dict[str, list[str]]) -> list[str]:
    """To and Cc: from the transport headers when the item has them (the SMTP addresses
    Mimecast also reports), else from the recipient table (unsent and internal mail)."""
    if picked:  # the headers describe the internet message, Bcc-only mail included
        return normalise.addresses(picked.get("to", []) + picked.get("cc", []))
    found: list[str] = []
    try:
        # Items that are not messages (free/busy data) come as plain pypff.item.
        table = getattr(item, "recipients", None)
        sets = table.record_sets if table is not None else []
    except OSError:
        sets = []
    for props in sets:
        kind = props.get_entry_by_type(PR_RECIPIENT_TYPE)
        if kind is None or (kind.data_as_integer & 0x0F) not in (1, 2):  # To, Cc
            continue
        norm = normalise.address(_text(props, PR_SMTP_ADDRESS) or _text(props, PR_EMAIL_ADDRESS))
        if norm:
            found.append(norm)
    return found


# -- reading chosen items by node id (incremental re-index) ------------------------------

NID_MESSAGE_STORE, NID_NAME_TO_ID_MAP, NID_ROOT_FOLDER = 0x21, 0x61, 0x122
NID_RECIPIENT_TABLE = 0x692
FOLDER_TYPES = (0x02, 0x03)


class _DirectObject:
    """A folder, the store object or the name map as pypff offers them (a name and one
    record set), read on first use."""

    number_of_record_sets = 1

    def __init__(self, store: pst_items.Store, nid: int, data: int, sub: int):
        self.identifier, self._store, self._where, self._props = nid, store, (data, sub), None

    def get_record_set(self, index: int) -> pst_items.Props:
        if self._props is None:
            self._props = self._store.properties(*self._where)
        return self._props

    @property
    def name(self) -> str:
        entry = self.get_record_set(0).get_entry_by_type(0x3001)
        return entry.data_as_string.rstrip("\x00") if entry is not None else ""


class _DirectItem(_DirectObject):
    @property
    def recipients(self):
        subnodes = self._store.subnodes(self._where[1])
        table = subnodes.get(NID_RECIPIENT_TABLE)
        return _Rows(self._store.table(*table) if table else [])


@dataclass
class _Rows:
    record_sets: list


@dataclass
class _DirectView:
    root_folder: _DirectObject
    message_store: _DirectObject | None
    name_to_id_map: _DirectObject | None


class Direct:
    """A store read by node id (pst_items), for a re-index that opens only the messages
    that changed. Folder paths and roles come from the same rules as a full read."""

    def __init__(self, path: Path, others: dict[int, tuple[int, int, int]], counts: dict[int, int]):
        """`others` and `counts` as pst_nodes.Nodes has them: the folders and other nodes,
        and the number of messages under each parent."""
        self.path = path
        self.others = others
        self.counts = counts
        self.store = pst_items.Store(path)
        try:
            self._survey()
        except BaseException:
            self.store.close()
            raise

    def _survey(self) -> None:
        others = self.others

        def obj(nid: int) -> _DirectObject | None:
            found = others.get(nid)
            return _DirectObject(self.store, nid, found[0], found[1]) if found else None

        root = obj(NID_ROOT_FOLDER)
        if root is None:
            raise pst_nodes.NodeTreeError("no root folder node")
        children: dict[int, list[int]] = {}
        for nid, (_, _, parent) in others.items():
            if nid & 0x1F in FOLDER_TYPES and nid != parent:
                children.setdefault(parent, []).append(nid)
        counts = self.counts
        tree: dict[int, _Node] = {}
        stack = [NID_ROOT_FOLDER]
        while stack:  # folders reachable from the root, as pypff sees them
            nid = stack.pop()
            if nid in tree:
                continue
            kids = sorted(children.get(nid, []))
            tree[nid] = _Node(obj(nid), nid, counts.get(nid, 0), kids)
            stack.extend(kids)
        view = _DirectView(root, obj(NID_MESSAGE_STORE), obj(NID_NAME_TO_ID_MAP))
        result = SourceResult()
        self.folders = {node.nid: (path, role) for node, path, role in _mailbox_folders(view, tree, result)}
        self.errors = result.errors
        self.skipped = sum(node.count for nid, node in tree.items() if nid not in self.folders)
        self.named = _named_property_ids(view, DELIVERY_HEADER)

    def inside(self, block: pst_nodes.Block) -> list[int]:
        """The indexes in `block` of messages in mailbox folders."""
        folders = self.folders
        return [index for index, parent in enumerate(block.parents) if parent in folders]

    def records(self, block: pst_nodes.Block, indexes: Iterable[int], result: SourceResult) -> Iterator[Record]:
        """Records for the messages at `indexes` of `block`; failures go to `result.errors`."""
        for index in indexes:
            nid, parent = block.nids[index], block.parents[index]
            path, role = self.folders[parent]
            try:
                item = _DirectItem(self.store, nid, *block.message(index))
                yield _record(item, path, role, self.named)
            except pst_items.UNREADABLE as exc:
                result.errors.append(ReadError(f"{path or '/'}#{nid}", str(exc)))

    def close(self) -> None:
        self.store.close()
