"""The structure of a Unicode PST, as a comparable description: header counters, every
node (id, parent, what its data is: property context, table context, or raw bytes), each
heap's layout (where its header sits), each table's columns and row-block sizes, and
each property context's tags.

    python tools/pst_anatomy.py ../shared/corpus/pst/outlook-pst-rs__Empty.pst
    python tools/pst_anatomy.py out.pst --json

tests/test_pst_outlook.py compares a PST we write with one Outlook wrote through this.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncengine.readers.pst_items import ItemError, Store, _Heap  # noqa: E402

NID_TYPES = {0x01: "internal", 0x02: "folder", 0x03: "search folder", 0x04: "message",
             0x05: "attachment", 0x06: "search update queue", 0x07: "search criteria",
             0x08: "associated message", 0x0A: "contents table index", 0x0B: "receive folder table",
             0x0C: "outgoing queue table", 0x0D: "hierarchy table", 0x0E: "contents table",
             0x0F: "associated contents table", 0x10: "search contents table",
             0x11: "attachment table", 0x12: "recipient table", 0x13: "search table index",
             0x1F: "ltp"}


@dataclass
class Node:
    nid: int
    kind: str
    parent: int
    data: str                      # "pc", "tc", "bytes", "empty"
    size: int = 0                  # total bytes of the node's data
    root_hid: int = 0              # the heap's user root (PC BTH or TCINFO)
    bth_hid: int = 0               # a TC's row-index BTH
    tags: list[int] = field(default_factory=list)        # PC property tags (id << 16 | type)
    columns: list[int] = field(default_factory=list)     # TC column tags
    row_size: int = 0
    rows: int = 0
    row_blocks: list[int] = field(default_factory=list)  # sizes of subnode row blocks
    subnodes: int = 0


@dataclass
class Anatomy:
    version: int
    crypt: int
    rgnid: list[int]
    dlist: bool                    # a density list page at 0x4200
    nodes: dict[int, Node]


def read(path: Path) -> Anatomy:
    store = Store(path)
    try:
        header = os.pread(store.fd, 564, 0)
        rgnid = list(struct.unpack_from("<32I", header, 44))
        nbt = struct.unpack_from("<Q", header, 224)[0]
        page = os.pread(store.fd, 512, 0x4200)
        dlist = len(page) == 512 and page[496] == 0x86
        nodes = {}
        for nid, data, sub, parent in _leaves(store, nbt):
            nodes[nid] = _node(store, nid, data, sub, parent)
        return Anatomy(struct.unpack_from("<H", header, 10)[0], header[513], rgnid, dlist, nodes)
    finally:
        store.close()


def _leaves(store: Store, ib: int):
    layout = store.layout
    page = os.pread(store.fd, layout.page, ib)
    count, _, _, level = layout.counts.unpack_from(page, layout.entries)
    if level == 0:
        for i in range(count):
            nid, data, sub, parent = struct.unpack_from("<QQQI", page, i * 32)
            yield nid & 0xFFFFFFFF, data, sub, parent
        return
    for i in range(count):
        yield from _leaves(store, struct.unpack_from("<Q", page, i * 24 + 16)[0])


def _node(store: Store, nid: int, data_bid: int, sub_bid: int, parent: int) -> Node:
    node = Node(nid, NID_TYPES.get(nid & 0x1F, hex(nid & 0x1F)), parent, "empty")
    if not data_bid:
        return node
    blocks = store.data(data_bid)
    node.size = sum(map(len, blocks))
    subnodes = store.subnodes(sub_bid)
    node.subnodes = len(subnodes)
    first = blocks[0]
    if len(first) < 12 or first[2] != 0xEC or first[3] not in (0xBC, 0x7C):
        node.data = "bytes"
        return node
    heap = _Heap(blocks, first[3], store.layout.hid_shift)
    node.root_hid = heap.root
    if first[3] == 0xBC:
        node.data = "pc"
        node.bth_hid = heap.root
        node.tags = sorted(int.from_bytes(k, "little") << 16 | struct.unpack("<HI", v)[0]
                           for k, v in heap.bth(heap.root))
        return node
    node.data = "tc"
    info = heap.get(heap.root)
    count = info[1]
    node.row_size = struct.unpack_from("<H", info, 8)[0]
    node.bth_hid = struct.unpack_from("<I", info, 10)[0]
    rows_ref = struct.unpack_from("<I", info, 14)[0]
    node.columns = [struct.unpack_from("<I", info, 22 + 8 * i)[0] for i in range(count)]
    if rows_ref and rows_ref & 0x1F:
        node.row_blocks = [len(b) for b in store._subnode_data(subnodes, rows_ref)]
    node.rows = len(heap.bth(node.bth_hid)) if node.bth_hid else 0
    return node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pst", type=Path)
    parser.add_argument("--json", action="store_true", help="the whole description as JSON")
    args = parser.parse_args()
    try:
        anatomy = read(args.pst)
    except (OSError, ItemError) as error:
        print(f"{args.pst}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(anatomy), indent=1))
        return 0
    print(f"wVer {anatomy.version}, crypt {anatomy.crypt}, DList {'yes' if anatomy.dlist else 'no'}")
    print("rgnid", " ".join(f"{i:x}:{v:x}" for i, v in enumerate(anatomy.rgnid) if v != 0x400))
    for nid, node in sorted(anatomy.nodes.items()):
        line = f"0x{nid:05x} {node.kind:<22} parent 0x{node.parent:x} {node.data:<5} {node.size:>6} B"
        if node.data == "pc":
            line += f" root 0x{node.root_hid:x} tags " + " ".join(f"{t >> 16:04x}" for t in node.tags)
        elif node.data == "tc":
            line += (f" root 0x{node.root_hid:x} rows {node.rows} x {node.row_size} blocks {node.row_blocks}"
                     f" cols " + " ".join(f"{t:08x}" for t in node.columns))
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
