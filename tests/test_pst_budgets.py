"""A PST reader that no crafted file can hang (issues 22 and 24, N3): the files are built here from
a real PST the writer makes, with valid CRCs and levels, and read through `index` (the
node-id reader, then pypff) in a real process: one clean error, in bounded time and
memory. And export-pst's temporary file is the user's own, created exclusively."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest

from syncengine.pst import ndb
from syncengine.pst.layout import TRAILER_4K, UNICODE, UNICODE_4K
from syncengine.pst.writer import Attachment, Message, PstWriter
from syncengine.readers import pst_items, pst_nodes
from syncengine.record import SourceResult

from .conftest import run_cli

ALICE = "alice@acme.example"


def _pst(path: Path, attachment: bytes = b"") -> Path:
    with PstWriter(path) as pst:
        for n in range(5):
            pst.add("Inbox", Message(subject=f"m{n}", sender="a@example.org", to=[ALICE], message_id=f"<m{n}@x>",
                                     submit_time=1_700_000_000 + n, body="hi",
                                     attachments=[Attachment("big.bin", attachment)] if attachment and n == 0 else []))
    return path


def _headers_fixed(data: bytearray) -> bytes:
    struct.pack_into("<Q", data, 184, len(data))  # ibFileEof
    struct.pack_into("<I", data, 4, ndb.crc(bytes(data[8:8 + 471])))
    struct.pack_into("<I", data, 524, ndb.crc(bytes(data[8:8 + 516])))
    return bytes(data)


def _page_listed_many_times(tmp_path: Path) -> Path:
    """13 KB-class: above the real root, index pages each listing the page below 20 times,
    up to the depth the format allows (the old walk: 20^6 leaf visits, memory rising)."""
    data = bytearray(_pst(tmp_path / "base.pst").read_bytes())
    below, level = struct.unpack_from("<Q", data, 224)[0], data[struct.unpack_from("<Q", data, 224)[0] + 491]
    for level in range(level + 1, level + 7):
        body = bytearray(496)
        for i in range(20):
            struct.pack_into("<QQQ", body, i * 24, 0x21 + i, 0x1000 + level, below)
        body[488:492] = bytes([20, 20, 24, level])
        below = len(data)
        data += bytes(body) + ndb.PAGE_TRAILER.pack(0x81, 0x81, 0, ndb.crc(bytes(body)), 0x1000 + level)
    struct.pack_into("<QQ", data, 216, 0x1000 + level, below)
    crafted = tmp_path / "crafted.pst"
    crafted.write_bytes(_headers_fixed(data))
    return crafted


def _run_limited(*args: str) -> subprocess.CompletedProcess:
    """A real process under a 1 GB address-space limit: a runaway allocation fails, and the
    timeout bounds the time (a hang fails the test instead of the machine)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    return subprocess.run([sys.executable, "-m", "syncengine", *args], capture_output=True, text=True,
                          timeout=60, preexec_fn=limit)


def test_n3_a_node_btree_page_listed_many_times_is_one_error_not_a_hang(tmp_path):
    crafted = _page_listed_many_times(tmp_path)
    with pytest.raises(pst_nodes.NodeTreeError, match="reached twice"):
        pst_nodes.read(crafted)
    result = _run_limited("index", str(crafted), "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    assert report["status"] == "error" and report["errors"][0]["reason"]


def test_n3_a_data_tree_naming_one_block_thousands_of_times_is_one_error(tmp_path):
    """An XXBLOCK that names the same XBLOCK in every entry, each of whose entries would
    name the same block: terabytes asked of a small file. The budget stops it at once."""
    path = _pst(tmp_path / "big.pst", attachment=os.urandom(9 << 20))  # 9 MB: an XXBLOCK over XBLOCKs
    with pst_nodes.read(path) as nodes, pst_items.Store(path) as store:
        def trees(sub: int):  # every data tree under a subnode tree, depth first
            for data, inner in store.subnodes(sub).values():
                yield data
                if inner:
                    yield from trees(inner)
        attachment_bid = next(bid for block in nodes.blocks() for sub in block.subs for bid in trees(sub)
                              if bid & 2 and store.block(bid)[1] == 2)  # an XXBLOCK: level 2
        ib, size = store._locate(attachment_bid)
    data = bytearray(path.read_bytes())
    count = struct.unpack_from("<H", data, ib + 2)[0]
    one = struct.unpack_from("<Q", data, ib + 8)[0]
    for i in range(count):  # every entry the same XBLOCK
        struct.pack_into("<Q", data, ib + 8 + 8 * i, one)
    trailer = ib + UNICODE.block_size(size) - ndb.TRAILER.size
    cb, sig, _, bid = ndb.TRAILER.unpack_from(data, trailer)
    ndb.TRAILER.pack_into(data, trailer, cb, sig, ndb.crc(bytes(data[ib:ib + size])), bid)
    path.write_bytes(bytes(data))
    with pst_items.Store(path) as store, pytest.raises(pst_items.ItemError, match="twice"):
        store.data(attachment_bid)


@pytest.mark.skipif(os.getuid() != 0, reason="planting a file as another user needs root")
def test_export_pst_never_writes_into_a_partial_file_another_user_planted(tmp_path):
    replay = tmp_path / "replay.db"
    from .conftest import FIXTURES
    run_cli("replay", str(FIXTURES / "scenarios" / "demo"), "--db", str(replay), "-q", check=True)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # a shared, non-sticky folder
    planted = shared / ".out.pst.partial"
    planted.write_bytes(b"")
    os.chmod(planted, 0o666)
    os.chown(planted, 65534, 65534)
    result = run_cli("export-pst", "--db", str(replay), "--event", "outage", str(shared / "out.pst"))
    assert result.returncode == 0, result.stderr
    assert planted.read_bytes() == b""  # the other user's file got nothing of the user's mail
    out = shared / "out.pst"
    info = out.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o600 and out.read_bytes().startswith(b"!BDN")


def test_n3_libpff_that_makes_no_progress_is_stopped_by_the_watchdog_and_named(tmp_path, monkeypatch):
    """libpff reads in a watched child: here it waits forever on a FIFO where a store should
    be (the index never hands it one; a crafted store could hang libpff the same way)."""
    from syncengine.readers import pst

    fifo = tmp_path / "store.pst"
    os.mkfifo(fifo)
    monkeypatch.setattr(pst, "PYPFF_STALL_SECONDS", 2.0)
    result = SourceResult()
    assert list(pst.read_pypff(fifo, result)) == []
    assert result.fatal and "libpff read nothing more for 2 s: stopped" in result.errors[0].reason


def _compressed_block(path: Path) -> tuple[int, int, int]:
    """(BID, offset, stored size) of a block stored compressed in a 4 KB-layout store."""
    with pst_nodes.read(path) as nodes, pst_items.Store(path) as store:
        for data_bid in (bid for block in nodes.blocks() for bid in block.data):
            ib, size = store._locate(data_bid)
            stored, _, _, _, _, inflated, _ = TRAILER_4K.unpack_from(
                os.pread(store.fd, UNICODE_4K.block_size(size), ib), UNICODE_4K.block_size(size) - TRAILER_4K.size)
            if inflated != stored:
                return data_bid, ib, size
    raise AssertionError("no compressed block was written")


def test_n3_a_compressed_block_that_inflates_past_its_stated_size_is_one_error(tmp_path):
    path = tmp_path / "cached.ost"
    with PstWriter(path, layout=UNICODE_4K) as pst:
        for n in range(5):
            pst.add("Inbox", Message(subject=f"m{n}", sender="a@example.org", to=[ALICE], message_id=f"<m{n}@x>",
                                     submit_time=1_700_000_000 + n, body="compressible text " * 200))
    bid, ib, size = _compressed_block(path)
    data = bytearray(path.read_bytes())
    trailer = ib + UNICODE_4K.block_size(size) - TRAILER_4K.size
    fields = list(TRAILER_4K.unpack_from(data, trailer))
    fields[5] -= 100                                   # the trailer now understates what it inflates to
    TRAILER_4K.pack_into(data, trailer, *fields)
    path.write_bytes(bytes(data))
    with pst_items.Store(path) as store, pytest.raises(pst_items.ItemError, match="does not inflate to"):
        store.block(bid)
    result = _run_limited("index", str(path), "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    assert report["errors"] and all(e["reason"] for e in report["errors"])


def test_n3_a_deflate_bomb_stops_at_the_size_its_trailer_states():
    """16 MB of zeros deflate to 16 KB; the reader asks zlib for no more than the block
    may hold, so neither time nor memory follows the bomb."""
    bomb = zlib.compress(bytes(16 << 20), 9)
    tracemalloc.start()
    try:
        with pytest.raises(pst_items.ItemError, match="does not inflate to"):
            pst_items._inflate(bomb, 8176, 0x44)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("layout", [UNICODE, UNICODE_4K], ids=["pst", "ost4k"])
def test_a_store_shorter_than_its_header_says_is_an_error_not_a_smaller_mailbox(tmp_path, layout):
    """A copy still running: the blocks all there, the free space at the end not yet. Read
    anyway it looks whole; it is one error naming both sizes, in both readers' path."""
    path = tmp_path / ("copying.pst" if layout is UNICODE else "copying.ost")
    with PstWriter(path, layout=layout) as pst:
        pst.add("Inbox", Message(subject="m", sender="a@example.org", to=[ALICE], message_id="<m@x>"))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - layout.page])
    with pytest.raises(pst_nodes.NodeTreeError, match="cut short"):
        pst_nodes.read(path)
    result = _run_limited("index", str(path), "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json")
    report = json.loads(result.stdout.splitlines()[0])
    assert report["status"] == "error" and f"where its header says {len(data):,}" in report["errors"][0]["reason"]


def test_a_fifo_where_a_store_was_is_an_error_never_a_hang(tmp_path, monkeypatch):
    """Swapped in after the walk saw a file: neither the header check nor the node reader
    blocks on it; libpff's watched child stops it."""
    from syncengine.readers import pst
    fifo = tmp_path / "store.ost"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        pst_nodes.read(fifo)
    monkeypatch.setattr(pst, "PYPFF_STALL_SECONDS", 2.0)
    result = SourceResult()
    assert list(pst.read(fifo, result)) == [] and result.fatal


def _leaf_with_messages(data: bytes) -> int:
    """Offset of a node B-tree leaf page holding two or more messages (512-byte layout)."""
    stack = [struct.unpack_from("<Q", data, 224)[0]]
    while stack:
        ib = stack.pop()
        count, _, _, level = data[ib + 488:ib + 492]
        if level:
            stack.extend(struct.unpack_from("<QQQ", data, ib + i * 24)[2] for i in range(count))
        elif sum(struct.unpack_from("<Q", data, ib + i * 32)[0] & 0x1F == 4 for i in range(count)) >= 2:
            return ib
    raise AssertionError("no leaf with two messages")


def test_n3_node_btree_keys_out_of_order_are_an_error_and_the_store_is_read_another_way(tmp_path):
    """A re-index merges the store's nodes against the index in node-id order; a tree
    whose leaf lists them out of order must not pass for one that lost messages."""
    data = bytearray(_pst(tmp_path / "base.pst").read_bytes())
    ib = _leaf_with_messages(data)
    entries = [data[ib + i * 32:ib + i * 32 + 32] for i in range(data[ib + 488])]
    at = [i for i, entry in enumerate(entries) if struct.unpack_from("<Q", entry)[0] & 0x1F == 4][:2]
    entries[at[0]], entries[at[1]] = entries[at[1]], entries[at[0]]
    data[ib:ib + 32 * len(entries)] = b"".join(entries)
    struct.pack_into("<I", data, ib + 500, ndb.crc(bytes(data[ib:ib + 496])))
    crafted = tmp_path / "crafted.pst"
    crafted.write_bytes(bytes(data))
    with pytest.raises(pst_nodes.NodeTreeError, match="out of order"):
        pst_nodes.read(crafted)
    result = run_cli("index", str(crafted), "--db", str(tmp_path / "store.db"), "--mailbox", ALICE, "--json")
    report = json.loads(result.stdout.splitlines()[0])
    assert "Traceback" not in result.stderr and report["reader"].startswith("libpff: its node B-tree is not read")
