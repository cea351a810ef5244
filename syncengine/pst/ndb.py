"""MS-PST node database layer (Unicode): blocks, pages, allocation maps and B-trees.

The file is written front to back in one pass. Blocks get their BID when written, so
the block B-tree's leaf entries arrive in key order and are spooled to a temporary file;
node entries arrive in order too, except the few written at the end (folders, tables),
whose NIDs are allocated from a lower range than any message's. Both trees are built
bottom-up at `close`, so memory does not grow with the number of messages.

Allocation (MS-PST 2.2.2.7): the data area is cut into sections, each opened by an AMap
page whose bits mark units in use (253,952 bytes of 64-byte units in the 512-byte page
layout). A block never spans two sections; PMap, FMap and FPMap pages sit at the
intervals the format fixes. The 4 KB-page layout of Outlook 2013+ OSTs (layout.py)
changes sizes and trailers, has AMaps only, and stores a block DEFLATE-compressed when
that makes it smaller.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

from .layout import TRAILER_4K, UNICODE, Layout

HEADER_SIZE = 564
DLIST = 0x4200                  # the density list page, just before the first AMap
BLOCK_DATA = 8176               # a data tree's and a row matrix's blocks, both layouts (heap pages: layout.block_data)
PAGES_PER_PMAP = 8              # one PMap per 8 AMaps
FMAP_FIRST, FMAP_EVERY = 128, 496
FPMAP_FIRST, FPMAP_EVERY = 128 * 8, 496 * 8

TABLE_BLOCKS = 1 << 36          # first block counter of streamed folder tables (BID = counter << 2)
PTYPE_BBT, PTYPE_NBT, PTYPE_FMAP, PTYPE_PMAP, PTYPE_AMAP, PTYPE_FPMAP = 0x80, 0x81, 0x82, 0x83, 0x84, 0x85
PTYPE_DL = 0x86

NBT_ENTRY = struct.Struct("<QQQII")     # nid (8 in Unicode), bidData, bidSub, nidParent, padding
BBT_ENTRY = struct.Struct("<QQHHI")     # bid, ib, cb, cRef, padding
BT_ENTRY = struct.Struct("<QQQ")        # key, bid, ib
TRAILER = struct.Struct("<HHIQ")        # cb, wSig, dwCRC, bid (512-byte page layout)
PAGE_TRAILER = struct.Struct("<BBHIQ")  # ptype, ptypeRepeat, wSig, dwCRC, bid


def crc(data: bytes | bytearray | memoryview) -> int:
    """MS-PST's CRC-32: the standard polynomial without zlib's pre- and post-inversion."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def signature(ib: int, bid: int) -> int:
    value = (ib ^ bid) & 0xFFFFFFFF
    return ((value >> 16) ^ value) & 0xFFFF


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _map_pages(section: int, layout: Layout = UNICODE) -> int:
    """How many map pages open section `section` (AMap, then PMap, FMap, FPMap)."""
    return len(_map_page_types(section, layout))


def _map_page_types(section: int, layout: Layout = UNICODE) -> list[int]:
    kinds = [PTYPE_AMAP]
    if layout is not UNICODE:
        return kinds              # the 4 KB layout has AMaps only
    if section % PAGES_PER_PMAP == 0:
        kinds.append(PTYPE_PMAP)
    if section >= FMAP_FIRST and (section - FMAP_FIRST) % FMAP_EVERY == 0:
        kinds.append(PTYPE_FMAP)
    if section >= FPMAP_FIRST and (section - FPMAP_FIRST) % FPMAP_EVERY == 0:
        kinds.append(PTYPE_FPMAP)
    return kinds


def _longest_free_run(bits: bytearray) -> int:
    """FMap value: the longest run of free 64-byte units in a section, capped at 255."""
    best = run = 0
    for byte in bits:
        if byte == 0:
            run += 8
        else:
            for bit in range(8):
                if byte & (0x80 >> bit):
                    best, run = max(best, run), 0
                else:
                    run += 1
        if run >= 255:
            return 255
    return min(max(best, run), 255)


class FileWriter:
    """Appends blocks and pages to a new PST file and keeps its allocation maps."""

    def __init__(self, path: Path, layout: Layout = UNICODE):
        self.path = path
        self.layout = layout
        # A new file of our own, or nothing: never a file (or a link) another user planted
        # at the temporary name, which the user's mail would be written into.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                          | getattr(os, "O_BINARY", 0), 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(self.fd, 0o600)  # the umask must not widen it
        self.buffer = bytearray()
        self.buffer_start = 0
        self.section = -1
        self.bits = bytearray(layout.trailer_at)
        self.free_units = 0                 # summed over closed sections, for cbAMapFree
        self.fmap: list[int] = []           # per closed section (128 go into the header)
        self.next_block = 1
        self.next_table_block = TABLE_BLOCKS
        self.next_page = 1
        self.bbt = tempfile.TemporaryFile(prefix="pst-bbt-")
        self.table_bbt = tempfile.TemporaryFile(prefix="pst-bbt-tables-")
        self.nbt = tempfile.TemporaryFile(prefix="pst-nbt-")
        self.late_nodes: list[tuple[int, int, int, int]] = []
        self.last_nid = 0
        self.os_write(b"\0" * HEADER_SIZE, 0)
        self._open_section(0)

    # -- raw output -------------------------------------------------------------------

    @property
    def pos(self) -> int:
        return self.buffer_start + len(self.buffer)

    def os_write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def _flush(self) -> None:
        if self.buffer:
            self.os_write(self.buffer, self.buffer_start)
            self.buffer_start += len(self.buffer)
            self.buffer = bytearray()

    def _skip_to(self, offset: int) -> None:
        self.buffer += b"\0" * (offset - self.pos)

    # -- sections and allocation -------------------------------------------------------

    def _section_start(self, section: int) -> int:
        return self.layout.first_amap + section * self.layout.section

    def _open_section(self, section: int) -> None:
        start = self._section_start(section)
        self._skip_to(start)
        self.section = section
        self.bits = bytearray(self.layout.trailer_at)
        size = _map_pages(section, self.layout) * self.layout.page
        self._mark(start, size)
        self.buffer += b"\0" * size  # written when the section closes

    def _close_section(self) -> None:
        self._flush()
        start = self._section_start(self.section)
        pages = []
        for index, kind in enumerate(_map_page_types(self.section, self.layout)):
            ib = start + index * self.layout.page
            if kind == PTYPE_AMAP:
                body = bytes(self.bits)
            else:  # PMap, FMap and FPMap are deprecated: kept present and valid, never used
                body = b"\xff" * 496 if kind != PTYPE_FMAP else bytes(496)
            pages.append(self._page(body, kind, 0, ib))
        self.os_write(b"".join(pages), start)
        free = sum(8 - bin(b).count("1") for b in self.bits)
        self.free_units += free
        self.fmap.append(_longest_free_run(self.bits))

    def _page(self, body: bytes, ptype: int, sig: int, bid: int) -> bytes:
        """A page: its body, then the trailer where the layout puts it (4 KB pages end with
        8 more bytes, left zero)."""
        return (body + PAGE_TRAILER.pack(ptype, ptype, sig, crc(body), bid)).ljust(self.layout.page, b"\0")

    def _mark(self, offset: int, size: int) -> None:
        unit_size = self.layout.amap_unit
        first = (offset - self._section_start(self.section)) // unit_size
        for unit in range(first, first + (size + unit_size - 1) // unit_size):
            self.bits[unit >> 3] |= 0x80 >> (unit & 7)

    def _allocate(self, size: int, alignment: int) -> int:
        """Offset of `size` free bytes (a multiple of the AMap unit) inside one section."""
        offset = _align(self.pos, alignment)
        if offset + size > self._section_start(self.section + 1):
            self._close_section()
            self._open_section(self.section + 1)
            offset = _align(self.pos, alignment)
        self._skip_to(offset)
        self._mark(offset, size)
        if len(self.buffer) > 1 << 20:
            self._flush()
        return offset

    # -- blocks -----------------------------------------------------------------------

    def write_block(self, data: bytes, internal: bool = False, table: bool = False) -> int:
        """Write one block (at most 8,176 bytes of data) and return its BID.

        `table` blocks (pages of a folder's table, written while messages stream in) are
        numbered from a range of their own, so a message's block ids depend only on the
        messages before it, as they do in a store Outlook edits in place."""
        if len(data) > self.layout.block_data:
            raise ValueError(f"a block holds at most {self.layout.block_data} bytes, not {len(data)}")
        if table:
            bid = (self.next_table_block << 2) | (2 if internal else 0)
            self.next_table_block += 1
        else:
            bid = (self.next_block << 2) | (2 if internal else 0)
            self.next_block += 1
        layout = self.layout
        stored = data
        if layout.compressed and not internal and len(data) > 512:
            # stored compressed only when that saves room in the file; the trailer's
            # inflated size tells a reader which blocks are
            packed = zlib.compress(data, 6)
            if layout.block_size(len(packed)) < layout.block_size(len(data)):
                stored = packed
        size = layout.block_size(len(stored))
        ib = self._allocate(size, layout.block_align)
        self.buffer += stored
        self.buffer += b"\0" * (size - len(stored) - layout.block_trailer)
        if layout is UNICODE:
            self.buffer += TRAILER.pack(len(stored), signature(ib, bid), crc(stored), bid)
        else:
            self.buffer += TRAILER_4K.pack(len(stored), signature(ib, bid), crc(stored), bid, 0, len(data), 0)
        (self.table_bbt if table else self.bbt).write(BBT_ENTRY.pack(bid, ib, len(stored), 2, 0))
        return bid

    def write_data(self, data: bytes) -> int:
        """A node's data of any size: one block, or a data tree of 8,176-byte blocks."""
        if len(data) <= BLOCK_DATA:
            return self.write_block(data)
        view = memoryview(data)
        bids = [self.write_block(bytes(view[i:i + BLOCK_DATA])) for i in range(0, len(data), BLOCK_DATA)]
        return self.write_tree(bids, len(data))

    def write_tree(self, bids: list[int], total: int, sizes: list[int] | None = None) -> int:
        """An XBLOCK (or XXBLOCK over XBLOCKs) listing data blocks in order.

        `sizes` gives each block's byte count when they differ (heap pages); otherwise
        all but the last hold 8,176 bytes."""
        if len(bids) == 1:
            return bids[0]
        per = (BLOCK_DATA - 8) // 8
        if sizes is None:
            sizes = [BLOCK_DATA] * (len(bids) - 1) + [total - BLOCK_DATA * (len(bids) - 1)]
        if len(bids) <= per:
            return self.write_block(struct.pack("<BBHI", 1, 1, len(bids), total) + array_q(bids), internal=True)
        xblocks, totals = [], []
        for start in range(0, len(bids), per):
            chunk, chunk_total = bids[start:start + per], sum(sizes[start:start + per])
            xblocks.append(self.write_block(struct.pack("<BBHI", 1, 1, len(chunk), chunk_total)
                                            + array_q(chunk), internal=True))
            totals.append(chunk_total)
        if len(xblocks) > per:
            raise ValueError("node data over ~8.5 GB does not fit an XXBLOCK")
        return self.write_block(struct.pack("<BBHI", 1, 2, len(xblocks), total) + array_q(xblocks), internal=True)

    def write_subnodes(self, entries: list[tuple[int, int, int]]) -> int:
        """An SLBLOCK (or SIBLOCK over SLBLOCKs) for (nid, bidData, bidSub) entries; 0 if none."""
        if not entries:
            return 0
        entries = sorted(entries)
        per = (BLOCK_DATA - 8) // 24
        if len(entries) <= per:
            return self._slblock(entries)
        index = []
        for start in range(0, len(entries), per):
            chunk = entries[start:start + per]
            index.append((chunk[0][0], self._slblock(chunk)))
        if len(index) > (BLOCK_DATA - 8) // 16:
            raise ValueError("too many subnodes for one SIBLOCK")
        body = b"".join(struct.pack("<QQ", nid, bid) for nid, bid in index)
        return self.write_block(struct.pack("<BBHI", 2, 1, len(index), 0) + body, internal=True)

    def _slblock(self, entries: list[tuple[int, int, int]]) -> int:
        body = b"".join(struct.pack("<QQQ", *entry) for entry in entries)
        return self.write_block(struct.pack("<BBHI", 2, 0, len(entries), 0) + body, internal=True)

    # -- nodes ------------------------------------------------------------------------

    def add_node(self, nid: int, bid_data: int, bid_sub: int, parent: int) -> None:
        """A node whose NID is above every earlier streamed one (messages)."""
        if nid <= self.last_nid:
            raise ValueError(f"node 0x{nid:x} is not above 0x{self.last_nid:x}: use add_late_node")
        self.last_nid = nid
        self.nbt.write(NBT_ENTRY.pack(nid, bid_data, bid_sub, parent, 0))

    def add_late_node(self, nid: int, bid_data: int, bid_sub: int, parent: int) -> None:
        """A node written after streamed ones but numbered below them (folders, tables)."""
        self.late_nodes.append((nid, bid_data, bid_sub, parent))

    # -- closing ----------------------------------------------------------------------

    def _write_page(self, body: bytes, ptype: int) -> tuple[int, int]:
        bid = self.next_page << 2
        self.next_page += 1
        ib = self._allocate(self.layout.page, self.layout.page)
        self.buffer += self._page(body, ptype, signature(ib, bid), bid)
        return bid, ib

    def _btree_page(self, entries: bytes, count: int, entry_size: int, level: int, ptype: int) -> tuple[int, int]:
        layout = self.layout
        footer = layout.counts.pack(count, layout.entries // entry_size, entry_size, level)
        body = entries.ljust(layout.entries, b"\0") + footer
        return self._write_page(body.ljust(layout.trailer_at, b"\0"), ptype)

    def _btree(self, entries: Iterator[bytes], entry_size: int, ptype: int) -> tuple[int, int]:
        """Leaves from sorted packed entries, then index levels until one root page."""
        keys, bids, ibs = array("Q"), array("Q"), array("Q")
        per = self.layout.entries // entry_size
        chunk: list[bytes] = []
        for entry in entries:
            chunk.append(entry)
            if len(chunk) == per:
                self._leaf(chunk, entry_size, ptype, keys, bids, ibs)
                chunk = []
        if chunk or not keys:
            self._leaf(chunk, entry_size, ptype, keys, bids, ibs)
        level = 1
        while len(keys) > 1:
            next_keys, next_bids, next_ibs = array("Q"), array("Q"), array("Q")
            per = self.layout.entries // BT_ENTRY.size
            for start in range(0, len(keys), per):
                body = b"".join(BT_ENTRY.pack(keys[i], bids[i], ibs[i])
                                for i in range(start, min(start + per, len(keys))))
                bid, ib = self._btree_page(body, min(per, len(keys) - start), BT_ENTRY.size, level, ptype)
                next_keys.append(keys[start])
                next_bids.append(bid)
                next_ibs.append(ib)
            keys, bids, ibs = next_keys, next_bids, next_ibs
            level += 1
        return bids[0], ibs[0]

    def _leaf(self, chunk: list[bytes], entry_size: int, ptype: int, keys: array, bids: array, ibs: array) -> None:
        bid, ib = self._btree_page(b"".join(chunk), len(chunk), entry_size, 0, ptype)
        keys.append(struct.unpack_from("<Q", chunk[0])[0] if chunk else 0)
        bids.append(bid)
        ibs.append(ib)

    def close(self, rgnid: list[int]) -> None:
        """Build both B-trees, close the last section and write the header."""
        late = sorted(self.late_nodes)
        if late and self.last_nid and late[-1][0] >= self.last_nid:
            raise ValueError("a late node is numbered above the streamed nodes")
        nodes = [NBT_ENTRY.pack(nid, data, sub, parent, 0) for nid, data, sub, parent in late]
        nbt_root = self._btree(_chain(nodes, _spooled(self.nbt, NBT_ENTRY.size)), NBT_ENTRY.size, PTYPE_NBT)
        if self.next_block >= TABLE_BLOCKS:
            raise ValueError("more blocks than the message range holds")
        bbt_root = self._btree(_chain(_spooled(self.bbt, BBT_ENTRY.size), _spooled(self.table_bbt, BBT_ENTRY.size)),
                               BBT_ENTRY.size, PTYPE_BBT)
        # The file ends on a section boundary (MS-PST 2.6.1.1.2).
        end = self._section_start(self.section + 1)
        self._close_section()
        os.ftruncate(self.fd, end)
        self._write_header(end, rgnid, nbt_root, bbt_root)
        os.fsync(self.fd)
        os.close(self.fd)
        for spool in (self.bbt, self.table_bbt, self.nbt):
            spool.close()

    def abort(self) -> None:
        os.close(self.fd)
        for spool in (self.bbt, self.table_bbt, self.nbt):
            spool.close()

    def _write_header(self, eof: int, rgnid: list[int], nbt: tuple[int, int], bbt: tuple[int, int]) -> None:
        self._flush()
        if self.layout is UNICODE:
            # An empty density list (no pages ranked, backfill not complete), as in a store
            # Outlook has just made: MS-PST makes it optional, Outlook always writes one.
            dlist_bid = self.next_page << 2
            self.next_page += 1
            self.os_write(self._page(bytes(496), PTYPE_DL, signature(DLIST, dlist_bid), dlist_bid), DLIST)
        header = bytearray(HEADER_SIZE)
        header[0:4] = b"!BDN"
        content = 0x4D53 if self.layout is UNICODE else 0x4F53     # "SM" a PST; "SO" an OST
        struct.pack_into("<HHHBB", header, 8, content, self.layout.version, 19, 1, 1)
        struct.pack_into("<Q", header, 32, self.next_page << 2)         # bidNextP
        struct.pack_into("<I", header, 40, 1)                           # dwUnique
        struct.pack_into("<32I", header, 44, *rgnid)
        last_amap = self._section_start(self.section)
        struct.pack_into("<IQQQQQQQQBBH", header, 180, 0, eof, last_amap, self.free_units * self.layout.amap_unit, 0,
                         nbt[0], nbt[1], bbt[0], bbt[1], 2, 0, 0)       # ROOT, fAMapValid = VALID_AMAP2
        fmap = bytes(self.fmap[:128]).ljust(128, b"\xff")
        header[256:384] = fmap
        header[384:512] = b"\xff" * 128
        header[512] = 0x80                                              # bSentinel
        header[513] = 0                                                 # bCryptMethod: none
        struct.pack_into("<Q", header, 516, self.next_table_block << 2)  # bidNextB, above both ranges
        struct.pack_into("<I", header, 4, crc(header[8:8 + 471]))
        struct.pack_into("<I", header, 524, crc(header[8:8 + 516]))
        self.os_write(bytes(header), 0)


def array_q(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def _spooled(spool, size: int) -> Iterator[bytes]:
    spool.flush()
    spool.seek(0)
    while True:
        data = spool.read(size * 4096)
        if not data:
            return
        for start in range(0, len(data), size):
            yield data[start:start + size]


def _chain(first: Iterable[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest
