"""The two Unicode layouts of the node database, as one description that the writer
(ndb.py) and the readers by node id (readers/pst_nodes.py, pst_items.py) share.

- `UNICODE` (wVer 23): every PST, and OSTs before Outlook 2013. 512-byte pages, blocks
  aligned to 64 bytes with a 16-byte trailer, AMaps every 253,952 bytes from 0x4400.
- `UNICODE_4K` (wVer 36): the OST of Outlook 2013 and later (libpff: "64-bit with 4k
  pages"). 4,096-byte pages whose B-tree entry counts take 2 bytes, blocks aligned to
  512 bytes with a 24-byte trailer that also holds the inflated size of a block stored
  DEFLATE-compressed (zlib), AMaps from 0x22000 with one bit per 512 bytes.

Heaps differ too: the 4 KB layout gives a heap page 13 bits of a HID and its index 14
(libpff reads them so), where MS-PST gives 16 and 11; with 8,192 pages at most, a heap
there takes pages as large as a block (64 KB), or a folder of 400,000 messages would
not fit its contents table. What a layout leaves alone is shared: the entry formats of
both B-trees, the data and subnode trees (8,176-byte blocks), property and table
contexts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    name: str
    version: int                 # the header's wVer
    page: int                    # B-tree and map page size
    entries: int                 # bytes of B-tree entries in a page
    counts: struct.Struct        # cEnt, cEntMax, cbEnt, cLevel, right after the entries
    trailer_at: int              # where a page's trailer starts (ptype, ptype, wSig, dwCRC, bid)
    block_trailer: int           # bytes of a block's trailer
    block_align: int             # blocks start and end on this
    block_max: int               # a block with its trailer and padding, at most
    first_amap: int
    amap_unit: int               # bytes one AMap bit stands for
    compressed: bool             # blocks may be stored DEFLATE-compressed
    hid_shift: int               # a heap id is (page << hid_shift) | (index << 5)

    @property
    def block_data(self) -> int:
        """The most data (inflated) one block holds: a heap page at most."""
        return self.block_max - self.block_trailer

    @property
    def section(self) -> int:
        """Bytes mapped by one AMap page."""
        return self.trailer_at * 8 * self.amap_unit

    def block_size(self, stored: int) -> int:
        """Bytes a block of `stored` data bytes takes in the file, trailer and padding included."""
        return (stored + self.block_trailer + self.block_align - 1) // self.block_align * self.block_align


UNICODE = Layout("Unicode, 512-byte pages", 23, 512, 488, struct.Struct("<BBBB"), 496, 16, 64, 8192,
                 0x4400, 64, False, 16)
UNICODE_4K = Layout("Unicode, 4 KB pages (Outlook 2013+ OST)", 36, 4096, 4056, struct.Struct("<HHBB"), 4072, 24,
                    512, 65536, 0x22000, 512, True, 19)
LAYOUTS = {layout.version: layout for layout in (UNICODE, UNICODE_4K)}

# A 4 KB-layout block's trailer: cb, wSig, dwCRC, bid, (unknown), cbInflated, (unknown).
TRAILER_4K = struct.Struct("<HHIQHHI")
