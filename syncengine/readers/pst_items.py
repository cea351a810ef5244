"""Single items of a Unicode PST/OST read by node id, without opening the whole store.

libpff builds its whole item tree when it opens a file (1.5 s for 20,000 items here,
so over a minute for a million), which is the right trade for reading everything and
the wrong one for reading the hundred items that changed. This reader follows MS-PST
from the node id down: block B-tree, blocks (decoding the "compressible" permutation,
inflating the compressed blocks of Outlook 2013+ OSTs),
data trees, subnode trees, heap-on-node, BTH, and property and table contexts. It reads
only what the index needs, and offers it to readers/pst.py in the shape pypff does, so
both paths build records with the same code.
"""

from __future__ import annotations

import os
import struct
import zlib
from bisect import bisect_right
from pathlib import Path

from ..pst.layout import LAYOUTS, TRAILER_4K, UNICODE
from .pst_nodes import NodeTreeError

CRYPT_NONE, CRYPT_PERMUTE = 0, 1
# MS-PST 5.1 mpbbCrypt, first table (R): the "compressible" encoding is b -> R[b].
_R = bytes.fromhex(
    "41361362a8216ebbf416cc047f64e85d1ef2cb2a74c55e35d295479e962d9a88"
    "4c7d843fdbac31b6485ff6c4d8398be7233b388ec8c1df25b120a546604e9cfb"
    "aad35651457c550007c92b9d859b09a08fadb30f63ab894bd7a7155a716642bf"
    "264a6b98faea7753b270052cfd593a867ece06eb827857c78d43afb41cd45bcd"
    "e2e9274fc3087280cfb0eff5286dbe304d3492d50e3c2232e5e4f99fc2d10a81"
    "12e1ee918376e397e6618a1779a4b7dc907a5c8c02a6ca69de501a1193b95287"
    "58fced1d37491b6ae0293399bd6cd994f340546ff0c673b8d63e6518441fdd67"
    "10f10c19ecae03a1147ba90bfff8a3c0a201f72ebc2468750dfeba2fb5d0da3d"
)
SUBNODE, XBLOCK = 0x02, 0x01
# Parsed block B-tree pages kept. Messages are read in node order and their blocks were
# written in that order, so the pages needed next are those just used: a thousand do.
PAGE_CACHE = 1024
FIXED = {0x0002: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x000B: 1, 0x0005: 8, 0x0006: 8, 0x0007: 8,
         0x0014: 8, 0x0040: 8, 0x0048: 16}
INLINE = {0x0002, 0x0003, 0x0004, 0x000A, 0x000B}


class ItemError(OSError):
    """An item, or the structure leading to it, cannot be read; the text says where.
    An OSError, as libpff's own failures are, so both readers' callers treat it alike."""


# What malformed store bytes raise in this reader or pst_nodes: a store or item that
# cannot be read, never a crash of the caller (UnicodeDecodeError is a ValueError;
# OverflowError is an offset past what pread takes).
UNREADABLE = (NodeTreeError, OSError, ValueError, struct.error, IndexError, OverflowError)


class Entry:
    """One property, shaped as pypff's record entry (what readers/pst.py asks of it);
    its value is read from the heap or a subnode when first asked for."""

    __slots__ = ("entry_type", "value_type", "codepage", "_raw", "_load")

    def __init__(self, entry_type: int, value_type: int, raw, load, codepage: str):
        self.entry_type, self.value_type, self.codepage, self._raw, self._load = \
            entry_type, value_type, codepage, raw, load

    @property
    def data(self) -> bytes:
        return self._load(self.value_type, self._raw)

    @property
    def data_as_string(self) -> str | None:
        if self.value_type == 0x001F:
            return self.data.decode("utf-16-le", "replace")
        if self.value_type == 0x001E:
            return self.data.decode(self.codepage, "replace")
        raise ItemError(f"property 0x{self.entry_type:04x} is not a string")  # as libpff refuses

    @property
    def data_as_integer(self) -> int:
        return int.from_bytes(self.data, "little")


class Props:
    """A property context or a table row, shaped as pypff's record set. Values are
    decoded when asked for: a record needs about ten of a message's thirty properties."""

    def __init__(self, cells: dict[int, tuple[int, object]], load, codepage: str):
        self._cells = cells          # prop id -> (type, raw reference or bytes)
        self._load = load            # (type, raw) -> bytes
        self._codepage = codepage

    @property
    def entries(self) -> list[Entry]:
        return [self.get_entry_by_type(tag) for tag in self._cells]

    def get_entry_by_type(self, tag: int) -> Entry | None:
        cell = self._cells.get(tag)
        if cell is None:
            return None
        return Entry(tag, cell[0], cell[1], self._load, self._codepage)


class Store:
    """An open PST/OST read by node id. Node locations come from pst_nodes (the caller
    read the node B-tree already); blocks are found in the block B-tree on demand."""

    def __init__(self, path: Path, codepage: str = "cp1252"):
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.codepage = codepage
        self._pages: dict[int, tuple] = {}
        header = os.pread(self.fd, 564, 0)
        self.layout = LAYOUTS.get(struct.unpack_from("<H", header, 10)[0]) if len(header) >= 564 else None
        if header[:4] != b"!BDN" or self.layout is None:
            os.close(self.fd)
            raise NodeTreeError("not a Unicode PST/OST in a layout read here")
        self.crypt = header[513]
        if self.crypt not in (CRYPT_NONE, CRYPT_PERMUTE):
            raise NodeTreeError(f"encryption method {self.crypt} is not read here")
        self.decode = bytes(_R.index(i) for i in range(256)) if self.crypt == CRYPT_PERMUTE else None
        self.bbt_root = struct.unpack_from("<Q", header, 240)[0]
        self.size = os.fstat(self.fd).st_size  # no node's data or subnodes can be larger (N3)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- NDB --------------------------------------------------------------------------

    def _page(self, ib: int) -> tuple[int, list[int], list[tuple[int, int]]]:
        """A block B-tree page as (level, sorted keys, (offset, size) or (child offset, 0))."""
        parsed = self._pages.get(ib)
        if parsed is None:
            layout = self.layout
            page = os.pread(self.fd, layout.page, ib)
            if len(page) < layout.page or page[layout.trailer_at] != 0x80:
                raise ItemError(f"no block B-tree page at offset {ib}")
            count, _, _, level = layout.counts.unpack_from(page, layout.entries)
            if count > layout.entries // 24:
                raise ItemError(f"block B-tree page at offset {ib} is malformed")
            if level == 0:
                rows = [(key & ~1, (at, size)) for key, at, size, _, _ in struct.iter_unpack("<QQHHI", page[:count * 24])]
            else:
                rows = [(key & ~1, (at, 0)) for key, _, at in struct.iter_unpack("<QQQ", page[:count * 24])]
            parsed = (level, [key for key, _ in rows], [value for _, value in rows])
            if len(self._pages) > PAGE_CACHE:
                self._pages.clear()
            self._pages[ib] = parsed
        return parsed

    def _locate(self, bid: int) -> tuple[int, int]:
        """(offset, size) of block `bid`, by a descent of the block B-tree."""
        key, ib = bid & ~1, self.bbt_root
        for _ in range(16):
            level, keys, values = self._page(ib)
            at = bisect_right(keys, key) - 1
            if at < 0:
                break
            if level == 0:
                if keys[at] == key:
                    return values[at]
                break
            ib = values[at][0]
        raise ItemError(f"block 0x{bid:x} is not in the block B-tree")

    def block(self, bid: int) -> bytes:
        ib, size = self._locate(bid)
        if self.layout is UNICODE:
            data = os.pread(self.fd, size, ib)
            inflated = size
        else:  # the trailer says whether the block is stored compressed, and how large it inflates
            whole = os.pread(self.fd, self.layout.block_size(size), ib)
            if len(whole) < self.layout.block_size(size):
                raise ItemError(f"block 0x{bid:x} runs past the end of the file")
            stored, _, _, _, _, inflated, _ = TRAILER_4K.unpack_from(whole, len(whole) - TRAILER_4K.size)
            if stored != size:
                raise ItemError(f"block 0x{bid:x}: its trailer says {stored} bytes, the block B-tree {size}")
            data = whole[:size]
        if len(data) < size:
            raise ItemError(f"block 0x{bid:x} runs past the end of the file")
        if inflated and inflated != size:
            data = _inflate(data, inflated, bid)
        # Inflated first, then decoded, in libpff's order (a compressed block of an
        # encrypted OST holds the encoded bytes, compressed); internal blocks are never encoded.
        if self.decode is not None and not bid & 2:
            data = data.translate(self.decode)
        return data

    def data(self, bid: int) -> list[bytes]:
        """A node's data blocks in order (one, or the leaves of an XBLOCK/XXBLOCK). N3: a
        data tree lists each block once, and all of them hold no more than the file, so
        a small crafted file cannot ask for terabytes by naming one block many times."""
        if not bid & 2:
            return [self.block(bid)]
        out: list[bytes] = []
        self._tree(bid, 2, out, set(), [0])
        return out

    def _tree(self, bid: int, levels: int, out: list[bytes], seen: set[int], total: list[int]) -> None:
        raw = self.block(bid)
        kind, level, count = raw[0], raw[1], struct.unpack_from("<H", raw, 2)[0]
        if kind != XBLOCK or level not in (1, 2) or level > levels or 8 + 8 * count > len(raw):
            raise ItemError(f"block 0x{bid:x} is not a data tree")
        if struct.unpack_from("<I", raw, 4)[0] > self.size:
            raise ItemError(f"data tree 0x{bid:x} says it holds more than the file")
        for child in struct.unpack_from(f"<{count}Q", raw, 8):
            if child & ~1 in seen:
                raise ItemError(f"data tree 0x{bid:x} lists block 0x{child:x} twice")
            seen.add(child & ~1)
            if level == 2:
                self._tree(child, 1, out, seen, total)
                continue
            block = self.block(child)
            total[0] += len(block)
            if total[0] > self.size:
                raise ItemError(f"data tree 0x{bid:x} holds more than the file")
            out.append(block)

    def subnodes(self, bid: int, levels: int = 1, seen: set[int] | None = None) -> dict[int, tuple[int, int]]:
        """nid -> (data BID, subnode BID) for a node's subnode tree (SIBLOCK over SLBLOCKs);
        each block of the tree read once (N3)."""
        if not bid:
            return {}
        seen = set() if seen is None else seen
        if bid & ~1 in seen:
            raise ItemError(f"subnode tree lists block 0x{bid:x} twice")
        seen.add(bid & ~1)
        raw = self.block(bid)
        kind, level, count = raw[0], raw[1], struct.unpack_from("<H", raw, 2)[0]
        if kind != SUBNODE or level not in (0, 1) or level > levels:
            raise ItemError(f"block 0x{bid:x} is not a subnode tree")
        found: dict[int, tuple[int, int]] = {}
        if level == 0:
            for nid, data, sub in struct.iter_unpack("<QQQ", raw[8:8 + 24 * count]):
                found[nid & 0xFFFFFFFF] = (data, sub)
        else:
            for _, child in struct.iter_unpack("<QQ", raw[8:8 + 16 * count]):
                found.update(self.subnodes(child, 0, seen))
        return found

    # -- LTP --------------------------------------------------------------------------

    def properties(self, data_bid: int, sub_bid: int) -> Props:
        """A property context (a message, folder or the store object)."""
        heap = _Heap(self.data(data_bid), 0xBC, self.layout.hid_shift)
        subnodes = self.subnodes(sub_bid)
        cells = {}
        for key, value in heap.bth(heap.root):
            kind, ref = struct.unpack("<HI", value)
            cells[int.from_bytes(key, "little")] = (kind, ref)
        return Props(cells, lambda kind, ref: self._value(heap, subnodes, kind, ref), self.codepage)

    def table(self, data_bid: int, sub_bid: int) -> list[Props]:
        """The rows of a table context (a message's recipients)."""
        heap = _Heap(self.data(data_bid), 0x7C, self.layout.hid_shift)
        subnodes = self.subnodes(sub_bid)
        info = heap.get(heap.root)
        if info[0] != 0x7C:
            raise ItemError("table context without TCINFO")
        columns = info[1]
        row_size = struct.unpack_from("<H", info, 8)[0]
        rows_ref = struct.unpack_from("<I", info, 14)[0]
        cols = [struct.unpack_from("<IHBB", info, 22 + 8 * i) for i in range(columns)]
        if not rows_ref or not row_size:
            return []
        blocks = [heap.get(rows_ref)] if rows_ref & 0x1F == 0 else self._subnode_data(subnodes, rows_ref)
        def load(kind: int, cell: bytes) -> bytes:
            return cell if kind in FIXED else self._value(heap, subnodes, kind, int.from_bytes(cell, "little"))

        rows = []
        for block in blocks:
            for start in range(0, len(block) - row_size + 1, row_size):
                row = block[start:start + row_size]
                cells = {}
                for tag, at, width, bit in cols:
                    if row[row_size - (columns + 7) // 8 + bit // 8] & (0x80 >> (bit % 8)):
                        cells[tag >> 16] = (tag & 0xFFFF, row[at:at + width])
                rows.append(Props(cells, load, self.codepage))
        return rows

    def _value(self, heap: _Heap, subnodes: dict, kind: int, ref: int) -> bytes:
        if kind in INLINE:
            return struct.pack("<I", ref)[:FIXED[kind]]
        if not ref:
            return b""
        if ref & 0x1F == 0:
            return heap.get(ref)
        return b"".join(self._subnode_data(subnodes, ref))

    def _subnode_data(self, subnodes: dict, nid: int) -> list[bytes]:
        if nid not in subnodes:
            raise ItemError(f"subnode 0x{nid:x} is missing")
        return self.data(subnodes[nid][0])


def _inflate(data: bytes, size: int, bid: int) -> bytes:
    """A compressed block's data, which must inflate to exactly the size its trailer
    states (at most 64 KB: the field has 16 bits). N3: the output is capped at that size,
    so a crafted block cannot make the reader allocate more."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, size)
    except zlib.error as exc:
        raise ItemError(f"block 0x{bid:x} does not inflate: {exc}") from None
    if len(out) != size or inflater.unconsumed_tail or not inflater.eof:
        raise ItemError(f"block 0x{bid:x} does not inflate to the {size} bytes its trailer states")
    return out


class _Heap:
    def __init__(self, pages: list[bytes], client: int, shift: int):
        self.pages = pages
        self.shift = shift
        first = pages[0]
        if len(first) < 12 or first[2] != 0xEC or first[3] != client:
            raise ItemError(f"not a heap of kind 0x{client:02x}")
        self.root = struct.unpack_from("<I", first, 4)[0]

    def get(self, hid: int) -> bytes:
        block, index = hid >> self.shift, (hid >> 5) & ((1 << (self.shift - 5)) - 1)
        if block >= len(self.pages) or index == 0:
            raise ItemError(f"heap id 0x{hid:x} out of range")
        page = self.pages[block]
        map_at = struct.unpack_from("<H", page, 0)[0]
        count = struct.unpack_from("<H", page, map_at)[0]
        if index > count:
            raise ItemError(f"heap id 0x{hid:x} out of range")
        start, end = struct.unpack_from("<HH", page, map_at + 4 + 2 * (index - 1))
        return page[start:end]

    def bth(self, hid: int) -> list[tuple[bytes, bytes]]:
        header = self.get(hid)
        if header[0] != 0xB5:
            raise ItemError("BTH header expected")
        key_size, data_size, levels, root = header[1], header[2], header[3], struct.unpack_from("<I", header, 4)[0]
        if not key_size or not data_size or levels > 8:
            raise ItemError("BTH header is malformed")
        out: list[tuple[bytes, bytes]] = []
        if root:
            self._records(root, levels, key_size, data_size, out, set())
        return out

    def _records(self, hid: int, level: int, key_size: int, data_size: int, out: list, seen: set[int]) -> None:
        if hid in seen:  # N3: each node of the tree once
            raise ItemError(f"BTH node 0x{hid:x} is reached twice")
        seen.add(hid)
        node = self.get(hid)
        if level == 0:
            width = key_size + data_size
            out.extend((node[i:i + key_size], node[i + key_size:i + width]) for i in range(0, len(node), width))
            return
        width = key_size + 4
        for i in range(0, len(node), width):
            self._records(struct.unpack_from("<I", node, i + key_size)[0], level - 1, key_size, data_size, out, seen)
