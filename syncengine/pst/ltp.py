"""MS-PST lists, tables and properties layer: heap-on-node, BTH, PC and TC.

A heap (HN) is a node's data cut into pages of at most 8,176 bytes, each a block of the
node's data tree; allocations are addressed by HID (page, index). Property contexts (PC)
and table contexts (TC) are BTHs in a heap. Values that do not fit a heap allocation
(over 3,580 bytes) go to a subnode of the same node. A table's rows go to a subnode as
soon as they outgrow one allocation; large tables (a folder's contents) are streamed:
full heap pages and full row blocks are written as they fill.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone

from .layout import Layout
from .ndb import BLOCK_DATA, FileWriter

HN_SIG = 0xEC
CLIENT_TC, CLIENT_BTH, CLIENT_PC = 0x7C, 0xB5, 0xBC
ALLOC_MAX = 3580

# Property types (MS-OXCDATA 2.11.1).
PT_SHORT, PT_LONG, PT_BOOLEAN, PT_I8 = 0x0002, 0x0003, 0x000B, 0x0014
PT_UNICODE, PT_SYSTIME, PT_BINARY, PT_MV_BINARY = 0x001F, 0x0040, 0x0102, 0x1102
FIXED = {PT_SHORT: 2, PT_LONG: 4, PT_BOOLEAN: 1, PT_I8: 8, PT_SYSTIME: 8}
INLINE = {PT_SHORT, PT_LONG, PT_BOOLEAN}  # held in a PC record's 4 bytes

NID_TYPE_LTP = 0x1F
FILETIME_EPOCH = 116444736000000000


def filetime(when: datetime | int) -> int:
    """100 ns ticks since 1601 from an aware datetime or unix seconds."""
    seconds = when.astimezone(timezone.utc).timestamp() if isinstance(when, datetime) else when
    return int(seconds * 10_000_000) + FILETIME_EPOCH


def encode(kind: int, value) -> bytes:
    """A property value's bytes as the PC/TC stores them (strings UTF-16LE, no terminator)."""
    if kind == PT_UNICODE:
        return value.encode("utf-16-le")
    if kind == PT_BINARY:
        return bytes(value)
    if kind == PT_MV_BINARY:
        offsets, data, at = [], b"", 4 + 4 * len(value)
        for item in value:
            offsets.append(at + len(data))
            data += item
        return struct.pack(f"<I{len(value)}I", len(value), *offsets) + data
    if kind in (PT_SYSTIME, PT_I8):
        return struct.pack("<q", filetime(value) if kind == PT_SYSTIME else value)
    if kind == PT_LONG:
        return struct.pack("<i" if value < 0 else "<I", value)
    if kind == PT_SHORT:
        return struct.pack("<h", value)
    if kind == PT_BOOLEAN:
        return b"\x01" if value else b"\x00"
    raise ValueError(f"property type 0x{kind:04x} is not written")


def _fill_level(free: int) -> int:
    for level, floor in enumerate((3584, 2560, 2048, 1792, 1536, 1280, 1024, 768, 512, 256, 128, 64, 32, 16, 8)):
        if free >= floor:
            return level
    return 15


class _Page:
    """One heap page being filled: `room` is what one more allocation may use, after the
    page map grows by its offset (2 bytes) and a possible pad byte."""

    __slots__ = ("index", "header", "allocations", "room")

    def __init__(self, index: int, header: int, size: int):
        self.index = index
        self.header = header                      # bytes before the first allocation
        self.allocations: list[bytes] = []
        self.room = size - header - 4 - 2 - 1     # cAlloc, cFree, the closing offset, pad

    def free(self) -> int:
        return max(0, self.room)


class Heap:
    """An HN being built. With `ndb`, full pages are written as blocks as soon as no
    later allocation can change them (streamed tables); otherwise all stay in memory."""

    def __init__(self, client: int, layout: Layout, ndb: FileWriter | None = None):
        self.client = client
        self.hid_shift = layout.hid_shift
        self.max_pages = 1 << (32 - layout.hid_shift)
        self.page_size = layout.block_data
        self.allocs_per_page = (1 << (layout.hid_shift - 5)) - 1
        self.ndb = ndb
        self.pages: dict[int, _Page] = {0: _Page(0, 12, self.page_size)}
        self.current = self.pages[0]
        self.written: dict[int, tuple[int, int]] = {}   # page index -> (bid, size)
        self.levels: dict[int, int] = {}

    @staticmethod
    def _header_size(index: int) -> int:
        if index == 0:
            return 12                     # HNHDR
        return 66 if (index - 8) % 128 == 0 and index >= 8 else 2  # HNBITMAPHDR or HNPAGEHDR

    def allocate(self, data: bytes) -> int:
        size = len(data) + 2
        page = self.current
        if size > page.room or len(page.allocations) >= self.allocs_per_page:
            if size > ALLOC_MAX + 2:
                raise ValueError(f"a heap allocation holds at most {ALLOC_MAX} bytes")
            self._next_page()
            page = self.current
        page.allocations.append(data)
        page.room -= size
        return (page.index << self.hid_shift) | (len(page.allocations) << 5)

    def reserve(self, size: int) -> int:
        """A HID for an allocation whose bytes are known later (`fill`): Outlook puts a PC's
        BTH header, and a TC's row index header and TCINFO, first (HID 0x20, 0x40), and
        readers in the wild (java-libpst, pst-extractor) assume it."""
        return self.allocate(bytes(size))

    def fill(self, hid: int, data: bytes) -> None:
        page = self.pages[hid >> self.hid_shift]   # reserved on page 0, which is written last
        index = (hid >> 5 & 0x7FF) - 1
        if len(page.allocations[index]) != len(data):
            raise ValueError("a reserved heap allocation is filled with bytes of its own size")
        page.allocations[index] = data

    def _next_page(self) -> None:
        index = self.current.index + 1
        if index >= self.max_pages:
            raise ValueError(f"a heap holds at most {self.max_pages:,} pages")
        previous = self.current
        self.levels[previous.index] = _fill_level(previous.free())
        self.current = self.pages[index] = _Page(index, self._header_size(index), self.page_size)
        if self.ndb is not None:
            self._write_settled()

    def _write_settled(self) -> None:
        """Write pages whose bytes are final: not page 0 (its header names the root, known
        last) and not a bitmap page until the pages it describes are full."""
        for number in sorted(self.pages):
            if number == 0 or number >= self.current.index:
                continue
            if number >= 8 and (number - 8) % 128 == 0 and self.current.index < number + 128:
                continue
            page = self.pages.pop(number)
            data = self._page_bytes(page, 0)
            self.written[number] = (self.ndb.write_block(data, table=True), len(data))

    def _page_bytes(self, page: _Page, root: int) -> bytes:
        body = b"".join(page.allocations)
        start = page.header
        offsets, at = [], start
        for allocation in page.allocations:
            offsets.append(at)
            at += len(allocation)
        offsets.append(at)
        map_at = at + (at & 1)
        page_map = struct.pack(f"<HH{len(offsets)}H", len(page.allocations), 0, *offsets)
        if page.index == 0:
            levels = [self.levels.get(i, _fill_level(page.free()) if i == 0 else 0) for i in range(8)]
            head = struct.pack("<HBBI", map_at, HN_SIG, self.client, root) + _nibbles(levels, 4)
        elif page.header == 66:
            levels = [self.levels.get(i, 0) for i in range(page.index, page.index + 128)]
            head = struct.pack("<H", map_at) + _nibbles(levels, 64)
        else:
            head = struct.pack("<H", map_at)
        return head + body + (b"\0" if at & 1 else b"") + page_map

    def write(self, ndb: FileWriter, root: int) -> int:
        """Write the heap as the node's data and return its BID."""
        self.levels[self.current.index] = _fill_level(self.current.free())
        for number in sorted(self.pages):
            data = self._page_bytes(self.pages[number], root)
            self.written[number] = (ndb.write_block(data), len(data))
        self.pages = {}
        order = sorted(self.written)
        bids = [self.written[i][0] for i in order]
        sizes = [self.written[i][1] for i in order]
        return ndb.write_tree(bids, sum(sizes), sizes)


def _nibbles(levels: list[int], size: int) -> bytes:
    out = bytearray(size)
    for i, level in enumerate(levels[: size * 2]):
        out[i // 2] |= (level & 0xF) << (4 * (i % 2))
    return bytes(out)


def bth(heap: Heap, key_size: int, data_size: int, records: list[bytes], header: int) -> None:
    """A BTH over sorted packed records (key then data), its header into `header`."""
    leaves = []
    per = ALLOC_MAX // (key_size + data_size)
    for start in range(0, len(records), per):
        chunk = records[start:start + per]
        leaves.append((chunk[0][:key_size], heap.allocate(b"".join(chunk))))
    bth_from_leaves(heap, key_size, data_size, leaves, header)


def bth_from_leaves(heap: Heap, key_size: int, data_size: int, leaves: list[tuple[bytes, int]],
                    header: int) -> None:
    """The index levels of a BTH whose leaves are already allocated, and its header into
    the allocation `header` reserved for it."""
    levels, nodes = 0, leaves
    per = ALLOC_MAX // (key_size + 4)
    while len(nodes) > 1:
        upper = []
        for start in range(0, len(nodes), per):
            chunk = nodes[start:start + per]
            upper.append((chunk[0][0], heap.allocate(b"".join(key + struct.pack("<I", hid) for key, hid in chunk))))
        nodes, levels = upper, levels + 1
    root = nodes[0][1] if nodes else 0
    heap.fill(header, struct.pack("<BBBBI", CLIENT_BTH, key_size, data_size, levels, root))


class Subnodes:
    """The subnodes of one node as they are written: (nid, bidData, bidSub)."""

    def __init__(self, ndb: FileWriter):
        self.ndb = ndb
        self.entries: list[tuple[int, int, int]] = []
        self.next_index = 0x400

    def add(self, data: bytes | None = None, nid_type: int = NID_TYPE_LTP, *, nid: int | None = None,
            bid: int = 0, sub: int = 0) -> int:
        if nid is None:
            nid = (self.next_index << 5) | nid_type
            self.next_index += 1
        if data is not None:
            bid = self.ndb.write_data(data)
        self.entries.append((nid, bid, sub))
        return nid

    def write(self) -> int:
        return self.ndb.write_subnodes(self.entries)


def _value_ref(heap: Heap, subnodes: Subnodes, data: bytes) -> int:
    """HNID of a variable-size value: 0 when empty, a HID, or a subnode's NID."""
    if not data:
        return 0
    if len(data) <= ALLOC_MAX:
        return heap.allocate(data)
    return subnodes.add(data)


Prop = tuple[int, int, object]  # (property id, type, value)


def property_context(ndb: FileWriter, props: list[Prop], subnodes: Subnodes | None = None) -> tuple[int, int]:
    """Write a PC node's data and subnodes; returns (bidData, bidSub)."""
    subnodes = subnodes or Subnodes(ndb)
    heap = Heap(CLIENT_PC, ndb.layout)
    root = heap.reserve(8)
    records = []
    for prop_id, kind, value in sorted(props, key=lambda p: p[0]):
        data = encode(kind, value)
        if kind in INLINE:
            ref = struct.unpack("<I", data.ljust(4, b"\0"))[0]
        else:
            ref = _value_ref(heap, subnodes, data)
        records.append(struct.pack("<HHI", prop_id, kind, ref))
    bth(heap, 2, 6, records, root)
    return heap.write(ndb, root), subnodes.write()


@dataclass(frozen=True)
class Column:
    prop_id: int
    kind: int


ROW_ID, ROW_VERSION = Column(0x67F2, PT_LONG), Column(0x67F3, PT_LONG)


@dataclass(frozen=True)
class _Layout:
    """Where each column lives in a row (MS-PST 2.3.4.1): 8- and 4-byte cells first, the
    row id and version leading, then 2-byte, then 1-byte cells, then the cell existence
    bitmap, whose bit 0 is the row id. `cells` is in TCOLDESC order (by property tag)."""

    cells: tuple[tuple[int, int, int, int, int], ...]    # (prop_id, kind, offset, width, bit)
    ends: tuple[int, int, int, int]                      # rgib: TCI_4b, TCI_2b, TCI_1b, TCI_bm
    bitmap_at: int
    row_size: int


@lru_cache(maxsize=None)
def _layout(columns: tuple[Column, ...]) -> _Layout:
    cols = sorted({ROW_ID, ROW_VERSION, *columns}, key=lambda c: c.prop_id)
    width = {c: FIXED.get(c.kind, 4) for c in cols}
    order = [ROW_ID, ROW_VERSION] + [c for size in (8, 4, 2, 1) for c in cols
                                     if width[c] == size and c not in (ROW_ID, ROW_VERSION)]
    offsets, at, ends = {}, 0, []
    for group in ((8, 4), (2,), (1,)):
        for column in order:
            if width[column] in group:
                offsets[column] = at
                at += width[column]
        ends.append(at)
    bits = {column: bit for bit, column in enumerate(order)}
    row_size = at + (len(cols) + 7) // 8
    cells = tuple((c.prop_id, c.kind, offsets[c], width[c], bits[c]) for c in cols)
    return _Layout(cells, (*ends, row_size), at, row_size)


class Table:
    """A TC built row by row. With `stream=True` its heap pages and row blocks go to the
    file as they fill, so a folder's contents table of any size holds little memory."""

    def __init__(self, ndb: FileWriter, columns: list[Column], stream: bool = False):
        self.ndb = ndb
        self.layout = _layout(tuple(columns))
        self.row_size = self.layout.row_size
        self.heap = Heap(CLIENT_TC, ndb.layout, ndb if stream else None)
        self.index_hid = self.heap.reserve(8)
        self.info_hid = self.heap.reserve(22 + 8 * len(self.layout.cells))
        self.subnodes = Subnodes(ndb)
        self.rows_per_block = BLOCK_DATA // self.row_size
        self.block = bytearray()
        self.row_bids: list[int] = []
        self.index_records: list[bytes] = []
        self.index_leaves: list[tuple[bytes, int]] = []
        self.count = 0
        self.stream = stream

    def add(self, row_id: int, values: dict[int, tuple[int, object]] | list[Prop]) -> None:
        """A row: `values` maps property id to (type, value); absent cells stay unset.
        Row ids must come in increasing order (they key the row index BTH)."""
        if isinstance(values, list):
            values = {prop_id: (kind, value) for prop_id, kind, value in values}
        layout = self.layout
        row = bytearray(layout.row_size)
        bitmap_at = layout.bitmap_at
        for prop_id, kind, at, width, bit in layout.cells:
            if prop_id == 0x67F2:
                data = struct.pack("<I", row_id)
            elif prop_id == 0x67F3:
                data = b"\0\0\0\0"
            else:
                cell = values.get(prop_id)
                if cell is None or cell[1] is None:
                    continue
                data = encode(kind, cell[1])
                if kind not in FIXED:
                    data = struct.pack("<I", _value_ref(self.heap, self.subnodes, data))
            row[at:at + width] = data
            row[bitmap_at + (bit >> 3)] |= 0x80 >> (bit & 7)
        self.block += row
        self.index_records.append(struct.pack("<II", row_id, self.count))
        self.count += 1
        if self.stream:
            if len(self.block) >= self.rows_per_block * self.row_size:
                self.row_bids.append(self.ndb.write_block(bytes(self.block).ljust(BLOCK_DATA, b"\0"), table=True))
                self.block = bytearray()
            if len(self.index_records) == ALLOC_MAX // 8:
                self.index_leaves.append((self.index_records[0][:4], self.heap.allocate(b"".join(self.index_records))))
                self.index_records = []

    def write(self) -> tuple[int, int]:
        """(bidData, bidSub) of the finished table. Row ids must have been added in order."""
        per = ALLOC_MAX // 8
        for start in range(0, len(self.index_records), per):
            chunk = self.index_records[start:start + per]
            self.index_leaves.append((chunk[0][:4], self.heap.allocate(b"".join(chunk))))
        bth_from_leaves(self.heap, 4, 4, self.index_leaves, self.index_hid)
        rows_size = self.count * self.row_size
        if not self.count:
            rows = 0
        elif rows_size <= ALLOC_MAX and not self.row_bids:
            rows = self.heap.allocate(bytes(self.block))
        else:
            # Every row block but the last is padded to 8,176 bytes, as Outlook writes them.
            full = self.rows_per_block * self.row_size
            blocks = [bytes(self.block[i:i + full]) for i in range(0, len(self.block), full)]
            blocks = [block.ljust(BLOCK_DATA, b"\0") for block in blocks[:-1]] + blocks[-1:]
            bids = self.row_bids + [self.ndb.write_block(b) for b in blocks]
            sizes = [BLOCK_DATA] * len(self.row_bids) + [len(block) for block in blocks]
            rows = self.subnodes.add(bid=self.ndb.write_tree(bids, sum(sizes), sizes))
        layout = self.layout
        info = struct.pack("<BB4HIII", CLIENT_TC, len(layout.cells), *layout.ends, self.index_hid, rows, 0)
        for prop_id, kind, at, width, bit in layout.cells:
            info += struct.pack("<IHBB", (prop_id << 16) | kind, at, width, bit)
        self.heap.fill(self.info_hid, info)
        root = self.info_hid
        return self.heap.write(self.ndb, root), self.subnodes.write()

