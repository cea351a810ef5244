"""The PST reader by node id (readers/pst_nodes, pst_items) against libpff (pypff): the
same records from every readable corpus store and from a generated one, except items
libpff cannot read; and the stores it does not read directly go to pypff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncengine.pst.layout import UNICODE, UNICODE_4K
from syncengine.pst.writer import Attachment, Message, PstWriter
from syncengine.readers import pst, pst_nodes
from syncengine.record import SourceResult

from .conftest import CORPUS, corpus_rows, run_cli

STORES = [r for r in corpus_rows() if r["kind"] in ("pst", "ost") and "BAD-INPUT" not in r["notes"]]


def _both(path: Path) -> tuple[dict, SourceResult, dict, SourceResult]:
    by_pypff, by_nodes = SourceResult(), SourceResult()
    pypff_records = {r.locator: r for r in pst.read_pypff(path, by_pypff)}
    node_records = {r.locator: r for r in pst.read(path, by_nodes)}
    return pypff_records, by_pypff, node_records, by_nodes


@pytest.mark.skipif(not STORES, reason=f"shared corpus not found at {CORPUS}")
@pytest.mark.parametrize("row", STORES, ids=[r["file"] for r in STORES])
def test_reading_by_node_id_gives_pypffs_records(row):
    path = CORPUS / row["file"]
    pypff_records, by_pypff, node_records, by_nodes = _both(path)
    assert not by_nodes.errors and by_nodes.skipped == by_pypff.skipped
    # Where libpff fails an item (a table value of type 0x0000), the node reader reads it.
    assert {k: v for k, v in node_records.items() if k in pypff_records} == pypff_records
    assert len(node_records) - len(pypff_records) == len(by_pypff.errors)


@pytest.mark.parametrize("layout", [UNICODE, UNICODE_4K], ids=["pst", "ost4k"])
def test_a_generated_store_reads_the_same_both_ways(tmp_path, layout):
    path = tmp_path / "g.pst"
    with PstWriter(path, layout=layout) as writer:
        for n in range(300):
            writer.add(["Inbox", "Sent Items", "Inbox/A/B", "Calendar"][n % 4],
                       Message(subject=f"S{n} ünï", sender="b@example.org", to=["a@acme.example"],
                               cc=["c@example.org"] if n % 2 else [], message_id=f"<{n}@x>" if n % 7 else None,
                               submit_time=1767225600 + n, headers=None if n % 3 else f"To: z{n}@example.org\r\n\r\n",
                               attachments=[Attachment("a", b"x" * 9000)] if n % 50 == 0 else [],
                               delivery_tag=f"ev/{n}" if n % 11 == 0 else None))
    pypff_records, by_pypff, node_records, by_nodes = _both(path)
    assert node_records == pypff_records and len(node_records) == 300
    assert not by_pypff.errors and not by_nodes.errors


def test_formats_not_read_by_node_id_still_read_through_pypff():
    ansi = [r for r in STORES if "ANSI" in r["notes"] or "32-bit" in r["file"]]
    if not ansi:
        pytest.skip(f"no ANSI store in the corpus at {CORPUS}")
    path = CORPUS / ansi[0]["file"]
    assert pst_nodes.read(path) is None
    result = SourceResult()
    assert len(list(pst.read(path, result))) + result.skipped == int(ansi[0]["messages"] or 0)


def test_a_store_parsed_by_two_processes_gives_the_same_records_in_node_order(tmp_path, monkeypatch):
    path = tmp_path / "p.pst"
    with PstWriter(path) as writer:
        for n in range(700):
            writer.add(["Inbox", "Archive", "Sent Items"][n % 3],
                       Message(subject=f"S{n}", sender="b@example.org", to=["a@acme.example"], message_id=f"<{n}@x>"))
    single = SourceResult()
    expected = list(pst.read(path, single))
    monkeypatch.setattr(pst, "PARALLEL_FROM", 100)  # the real threshold is 20,000 messages
    monkeypatch.setattr(pst_nodes, "BLOCK", 64)  # blocks of 64 nodes: many sent to each worker
    parallel = SourceResult()
    got = list(pst.read(path, parallel, workers=2))
    assert got == expected and len(got) == 700 and not parallel.errors


def test_corrupt_bytes_anywhere_past_the_header_give_recorded_errors_never_a_crash_n3(tmp_path):
    """Found by corrupting stores at random: a damaged item raised IndexError (or an
    offset too large for pread, OverflowError) out of the reader instead of an error."""
    import random
    path = tmp_path / "c.pst"
    with PstWriter(path) as writer:
        for n in range(120):
            writer.add(["Inbox", "Sent Items", "Inbox/A"][n % 3],
                       Message(subject=f"S{n}", sender="b@example.org", to=["a@acme.example"], message_id=f"<{n}@x>",
                               headers="To: a@acme.example\r\n\r\n" if n % 2 else None))
    good = path.read_bytes()
    rng = random.Random(3)
    damaged = 0
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.choice([1, 5, 50, 500])):
            data[rng.randrange(0x4400, len(data))] = rng.randrange(256)
        path.write_bytes(data)
        result = SourceResult()
        records = list(pst.read(path, result))  # must not raise
        assert all(e.where and e.reason for e in result.errors)
        damaged += bool(result.errors or result.fatal or len(records) != 120)
    assert damaged > 0  # the corruption did reach the reader


def test_index_json_names_the_reader_of_each_store_and_why(tmp_path):
    """Issue 24: a 4 KB-page OST is read by node id, whole and then incrementally; a
    format the node reader does not read goes to libpff, and the report says why."""
    ost = tmp_path / "cached.ost"
    with PstWriter(ost, layout=UNICODE_4K) as writer:
        writer.add("Inbox", Message(subject="s", sender="b@example.org", to=["a@acme.example"], message_id="<1@x>"))
    db = str(tmp_path / "store.db")
    first = json.loads(run_cli("index", str(ost), "--db", db, "--mailbox", "a@acme.example", "--json",
                               check=True).stdout.splitlines()[0])
    assert first["reader"] == "node id" and first["messages"] == 1
    with PstWriter(ost, layout=UNICODE_4K) as writer:
        for n in range(2):
            writer.add("Inbox", Message(subject=f"s{n}", sender="b@example.org", to=["a@acme.example"],
                                        message_id=f"<{n + 1}@x>"))
    again = json.loads(run_cli("index", str(ost), "--db", db, "--mailbox", "a@acme.example", "--json",
                               check=True).stdout.splitlines()[0])
    assert again["reader"].startswith("node id, incremental: 1 new or changed") and again["messages"] == 2
    ansi = [r for r in STORES if "ansi" in r["file"].lower()]
    if not ansi:
        pytest.skip(f"no ANSI store in the corpus at {CORPUS}")
    report = json.loads(run_cli("index", str(CORPUS / ansi[0]["file"]), "--db", db, "--mailbox", "a@acme.example",
                                "--json", check=True).stdout.splitlines()[0])
    assert report["reader"].startswith("libpff: a format read by libpff only")
