"""A PST's node B-tree read directly: every node's id, data block, subnode block and parent.

Blocks in a PST are never rewritten in place: a changed message gets new blocks, so a
node whose (data BID, subnode BID, parent) is what the index saw last time holds what
it held then. That lets a re-index find what changed in a store of a million items
from the node B-tree alone (a few megabytes of 512-byte pages), and open only those
items. Both Unicode layouts are read (syncengine/pst/layout.py: wVer 23, PSTs and
pre-2013 OSTs; wVer 36, the 4 KB-page OST of Outlook 2013+); for any other `read`
returns None and the caller reads the whole store.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..pst.layout import LAYOUTS, Layout

PTYPE_NBT = 0x81
NID_TYPE_MESSAGE = 0x04
OTHER_TYPES = {0x01, 0x02, 0x03}   # internal (store object, name map), folders, search folders
LEAF = struct.Struct("<QQQII")      # nid (8), bidData, bidSub, nidParent, padding
INDEX = struct.Struct("<QQQ")       # key, bid, ib
MAX_DEPTH = 8                       # a real node B-tree of any size is under 6 levels


class NodeTreeError(Exception):
    """The node B-tree is not what the header says: read the store the slow way."""


BLOCK = 4096   # message nodes per block: what a reader of the store holds at once


@dataclass
class Block:
    """A run of message nodes in node-id order (parallel arrays)."""
    nids: array       # 32-bit: the upper half of a leaf's 8-byte NID is unused
    parents: array
    versions: array
    data: array
    subs: array

    def message(self, index: int) -> tuple[int, int]:
        return self.data[index], self.subs[index]

    def __len__(self) -> int:
        return len(self.nids)


_TYPECODES = ("I", "I", "q", "Q", "Q")   # nids, parents, versions, data, subs


def _empty_block() -> Block:
    return Block(*(array(code) for code in _TYPECODES))


class Nodes:
    """Every normal message of a store in node-id order, and every other node that is not
    a table or a subnode-owned item (folders, the store object, the name map) with the
    number of messages under each. Messages are kept as blocks spilled to a temporary
    file, read back one at a time: a million-item store costs its reader a block's
    memory, not 32 MB (issue 25)."""

    def __init__(self) -> None:
        self.others: dict[int, tuple[int, int, int]] = {}  # nid -> (data BID, subnode BID, parent)
        self.counts: dict[int, int] = {}                     # parent nid -> messages in it
        self.count = 0
        self._tail = _empty_block()
        self._spilled: list[int] = []   # offsets of full blocks in the spill file
        self._spill = None
        self._last = -1

    def add(self, nid: int, parent: int, data: int, sub: int) -> None:
        if nid <= self._last:  # the merge of a re-index depends on node-id order
            raise NodeTreeError(f"node B-tree keys out of order at node {nid:#x}: a crafted or broken tree")
        self._last = nid
        tail = self._tail
        tail.nids.append(nid)
        tail.parents.append(parent)
        tail.versions.append(version(data, sub, parent))
        tail.data.append(data)
        tail.subs.append(sub)
        self.counts[parent] = self.counts.get(parent, 0) + 1
        self.count += 1
        if len(tail) == BLOCK:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="syncengine-nodes-")
            self._spilled.append(self._spill.seek(0, os.SEEK_END))
            self._spill.write(b"".join(column.tobytes() for column in _columns(tail)))
            self._spill.flush()
            self._tail = _empty_block()

    def blocks(self) -> Iterator[Block]:
        """The message blocks in node-id order (each read back from the spill file)."""
        for offset in self._spilled:
            block = _empty_block()
            for column in _columns(block):
                size = BLOCK * column.itemsize
                column.frombytes(os.pread(self._spill.fileno(), size, offset))
                offset += size
            yield block
        if len(self._tail):
            yield self._tail

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _columns(block: Block) -> tuple[array, ...]:
    return block.nids, block.parents, block.versions, block.data, block.subs


def read(path: Path) -> Nodes | None:
    """Every node the index needs, or None for a format not read here. The walk has
    budgets a crafted file cannot get round (N3): no page is read twice, each child is
    exactly one level below its parent, and no more pages than the file holds; messages
    come in node-id order or not at all. The caller closes what it gets."""
    # non-blocking: a FIFO put where the store was fails the read (ESPIPE), never hangs it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    try:
        header = os.pread(fd, 564, 0)
        if len(header) < 564 or header[:4] != b"!BDN":
            raise NodeTreeError("no PST header")
        layout = LAYOUTS.get(struct.unpack_from("<H", header, 10)[0])
        if layout is None:
            return None
        size = os.fstat(fd).st_size
        cut = cut_short(header, size)
        if cut:
            raise NodeTreeError(cut)
        nbt_ib = struct.unpack_from("<Q", header, 224)[0]
        nodes = Nodes()
        try:
            _walk(fd, layout, nbt_ib, None, nodes, set(), size // layout.page)
        except BaseException:
            nodes.close()
            raise
        return nodes
    finally:
        os.close(fd)


def cut_short(header: bytes, size: int) -> str | None:
    """Why a Unicode store (its header's first 192 bytes at least) of `size` bytes is not
    whole, or None: shorter than the end of file its header states (a copy still running,
    a disk that filled). Read anyway, such a file can look whole where its end held only
    free space (a 4 KB-layout OST ends in megabytes of it) and miss whatever the cut took."""
    eof = struct.unpack_from("<Q", header, 184)[0]
    if size < eof:
        return f"the file is {size:,} bytes where its header says {eof:,}: cut short, or still being copied"
    return None


def version(data: int, sub: int, parent: int) -> int:
    """Changes with any change to the message, its recipients or attachments, or a move;
    stable across runs and Python versions (it is stored)."""
    return (data * 0x9E3779B97F4A7C15 ^ sub * 0xC2B2AE3D27D4EB4F ^ parent) & 0x7FFFFFFFFFFFFFFF


def _walk(fd: int, layout: Layout, ib: int, expected: int | None, nodes: Nodes, seen: set[int], pages: int) -> None:
    if ib in seen:
        raise NodeTreeError(f"node B-tree page at offset {ib} is reached twice: a crafted or broken tree")
    if len(seen) >= pages:
        raise NodeTreeError("node B-tree has more pages than the file can hold")
    seen.add(ib)
    page = os.pread(fd, layout.page, ib)
    at = layout.trailer_at
    if len(page) < layout.page or page[at] != PTYPE_NBT or page[at + 1] != PTYPE_NBT:
        raise NodeTreeError(f"no node B-tree page at offset {ib}")
    if zlib.crc32(page[:at], 0xFFFFFFFF) ^ 0xFFFFFFFF != struct.unpack_from("<I", page, at + 4)[0]:
        raise NodeTreeError(f"node B-tree page at offset {ib} fails its CRC")
    count, _, size, level = layout.counts.unpack_from(page, layout.entries)
    if level > MAX_DEPTH or (expected is not None and level != expected):
        raise NodeTreeError(f"node B-tree page at offset {ib} has level {level} where {expected} belongs")
    if level == 0:
        if size != LEAF.size or count > layout.entries // LEAF.size:
            raise NodeTreeError(f"node B-tree leaf at offset {ib} is malformed")
        for nid, data, sub, parent, _ in LEAF.iter_unpack(page[:count * LEAF.size]):
            kind = nid & 0x1F
            if kind == NID_TYPE_MESSAGE:
                nodes.add(nid & 0xFFFFFFFF, parent, data, sub)
            elif kind in OTHER_TYPES:
                nodes.others[nid & 0xFFFFFFFF] = (data, sub, parent)
        return
    if size != INDEX.size or count > layout.entries // INDEX.size:
        raise NodeTreeError(f"node B-tree page at offset {ib} is malformed")
    for _, _, child in INDEX.iter_unpack(page[:count * INDEX.size]):
        _walk(fd, layout, child, level - 1, nodes, seen, pages)
