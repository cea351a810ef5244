"""What durability at commit (N1: synchronous=FULL, content fsynced before its commit)
costs, beside the way it was before (synchronous=NORMAL, content copied without
fsync), measured in the same run on the same files and disk.

    python tools/bench/durability_bench.py [--msg-files 5000] [--polls 200]

(a) an index run of a generated MSG tree (many files, one transaction per batch);
(b) a poll that adds a snapshot of 10 entries with content and decides them;
(c) an idle poll (nothing new): the commit alone;
(d) a burst of 1,000 acks committed together, as the notification server does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

from index_bench import make_msg_tree  # noqa: E402

from syncengine import engine, files, index, store  # noqa: E402
from syncengine.store import transaction  # noqa: E402

MAILBOX = "alice@acme.example"


def snapshot(folder: Path, number: int) -> Path:
    snap = folder / f"snap-{number}"
    (snap / "messages").mkdir(parents=True)
    data = []
    for n in range(10):
        mid = f"<p{number}-{n}@bench.example>"
        (snap / "messages" / f"{n}.eml").write_bytes(
            f"Message-ID: {mid}\r\nSubject: poll {number}\r\n\r\n".encode() + b"x" * 50_000)
        data.append({"id": f"p{number}-{n}", "received": "2026-03-02T08:00:00Z", "mimeMessageId": mid,
                     "headerDate": "2026-03-02T08:00:00Z", "from": {"emailAddress": "x@example.org"},
                     "subject": f"poll {number}", "content": f"messages/{n}.eml"})
    (snap / "snapshot.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
        "address": MAILBOX, "kind": "mailbox"}}, "data": data, "fail": []}))
    return snap


def measure(durable: bool, tree: Path, work: Path, polls: int) -> dict[str, float]:
    store.SYNCHRONOUS = "FULL" if durable else "NORMAL"
    files.os_fsync = files.os.fsync if durable else (lambda fd: None)
    folder = work / store.SYNCHRONOUS
    folder.mkdir()
    db = store.connect(folder / "store.db")
    started = time.perf_counter()
    index.run(db, [tree], MAILBOX, now=1000.0)
    figures = {"index": time.perf_counter() - started}
    engine.start_event(db, "ev1", [MAILBOX], False, 1000.0)
    snaps = [snapshot(folder, n) for n in range(polls)]
    busy, idle = [], []
    for n, snap in enumerate(snaps):
        now = 1000.0 + 60 * (n + 1)
        started = time.perf_counter()
        engine.add_snapshot(db, snap, now)
        engine.poll(db, now)
        busy.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.poll(db, now + 30)
        idle.append(time.perf_counter() - started)
    figures["poll with 10 new entries (median)"] = statistics.median(busy)
    figures["idle poll (median)"] = statistics.median(idle)
    started = time.perf_counter()
    with transaction(db.conn) as conn:
        conn.executemany("INSERT INTO client_acks VALUES (?, ?, ?, ?) ON CONFLICT (client, mailbox) DO UPDATE"
                         " SET mailbox_seq = max(mailbox_seq, excluded.mailbox_seq)",
                         [(f"c{n}", MAILBOX, n, 0.0) for n in range(1000)])
    figures["1,000 acks in one commit"] = time.perf_counter() - started
    db.conn.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--msg-files", type=int, default=5000)
    parser.add_argument("--polls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="durability-bench-") as temp:
        work = Path(temp)
        tree = work / "tree"
        make_msg_tree(tree, args.msg_files)
        normal = measure(False, tree, work, args.polls)
        full = measure(True, tree, work, args.polls)
    print(f"{'':40}{'before':>12}{'durable':>12}{'ratio':>8}")
    for name in normal:
        scale, unit = (1, "s") if name == "index" else (1000, "ms")
        print(f"{name:40}{normal[name] * scale:>10.2f}{unit:>2}{full[name] * scale:>10.2f}{unit:>2}"
              f"{full[name] / normal[name]:>7.2f}x")
    print(f"(index: {args.msg_files} MSG files; polls: {args.polls}, each with a 10-entry snapshot of 50 KB messages)")


if __name__ == "__main__":
    main()
