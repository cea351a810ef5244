"""Phase-1 reconcile benchmark: a 1,000,000-message index against a 100,000-entry snapshot.

    python tools/bench/reconcile_bench.py [--messages 1000000] [--entries 100000]

The index is built through the index's own writer (staging and merge), the snapshot
has 90% overlap with it, 1% of entries without Message-ID and some Message-ID
collisions (one id stamped on messages with other submit times). It prints the
end-to-end reconcile (snapshot parse and store, match, delta writes: `snapshot add`
then `event start`) beside the floor measured in the same run: an indexed SQL
anti-join of the snapshot's Message-IDs against the index plus a bare JSON decode of
the snapshot. Target: <= 5x the floor; peak RSS of the reconcile process <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from syncengine import coverage, engine, index, store
from syncengine.record import Record

MAILBOX = "bench@acme.example"
BASE = 1_700_000_000


def build_index(db_path: Path, messages: int) -> None:
    db = store.connect(db_path)
    writer = index.Writer(db, MAILBOX, now=float(BASE))
    task = index.Task(Path("/bench/export.pst"), Path("/bench/export.pst"), "pst", "", "", "inbox")
    source_id = writer._source_id(task)
    batch = []
    for n in range(messages):
        mid = None if n % 100 == 99 else f"m{n}@bench.example"
        batch.append(writer._staged(source_id, Record(
            str(n), "Inbox" if n % 3 else "Archive", "inbox" if n % 3 else "other", mid,
            "mapi" if mid else None, BASE - n, f"Subject {n}", f"s{n % 5000}@ext.example", MAILBOX,
            None, "IPM.Note", None)))
        if len(batch) == 50_000:
            writer._stage(batch)
            batch = []
    writer._stage(batch)
    with store.transaction(db.conn):
        writer._merge([source_id])
        coverage.record_read(db.conn, MAILBOX, str(task.path), None, False, float(BASE))  # a whole index (C19)
    db.conn.close()


def write_snapshot(path: Path, messages: int, entries: int, new: float = 0.1) -> None:
    rng = random.Random(7)
    data = []
    for k in range(entries):
        if rng.random() < new:               # not in the mailbox (10% by default)
            n, mid = messages + k, f"new{k}@bench.example"
        else:                                # otherwise: present locally
            n = rng.randrange(messages)
            mid = f"m{n}@bench.example"
        ts = BASE - n
        if k % 100 == 1:
            mid = None                       # 1% without Message-ID
        elif k % 250 == 2:
            ts -= 3600                       # collisions: the same id, another submit time
        item = {"id": f"e{k}", "received": _iso(ts + 5), "headerDate": _iso(ts),
                "from": {"emailAddress": f"s{n % 5000}@ext.example"}, "to": [{"emailAddress": MAILBOX}],
                "subject": f"Subject {n}", "status": "ARCHIVED"}
        if mid:
            item["mimeMessageId"] = f"<{mid}>"
        data.append(item)
    page = {"meta": {"status": 200, "snapshot": {"address": MAILBOX, "kind": "mailbox"}}, "data": data, "fail": []}
    path.write_text(json.dumps(page))


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ts))


def floor(db_path: Path, snapshot: Path, mailbox: str = MAILBOX) -> float:
    """Bare JSON decode plus one indexed anti-join of the snapshot's ids against the index."""
    db = store.connect(db_path)
    started = time.perf_counter()
    page = json.loads(snapshot.read_bytes())
    mids = [(e["mimeMessageId"].strip("<>"),) for e in page["data"] if "mimeMessageId" in e]
    db.conn.execute("CREATE TEMP TABLE ids (message_id TEXT PRIMARY KEY) WITHOUT ROWID")
    db.conn.executemany("INSERT OR IGNORE INTO ids VALUES (?)", mids)
    # CROSS JOIN fixes the order: the Message-ID index, then locations by message.
    missing = db.conn.execute("SELECT count(*) FROM ids WHERE NOT EXISTS (SELECT 1 FROM messages m"
                              " CROSS JOIN locations l ON l.message = m.id WHERE m.message_id = ids.message_id"
                              " AND l.mailbox = ? AND l.received = 1)", (mailbox,)).fetchone()[0]
    elapsed = time.perf_counter() - started
    db.conn.close()
    assert missing > 0
    return elapsed


def reconcile(db_path: Path, snapshot: Path, mailbox: str = MAILBOX, now: float = float(BASE)) -> None:
    """Run in its own process so that its peak RSS is its own."""
    db = store.connect(db_path)
    started = time.perf_counter()
    engine.add_snapshot(db, snapshot, now + 10)
    parsed = time.perf_counter()
    written = engine.start_event(db, "bench", [mailbox], False, now + 20)
    done = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": done - started, "snapshot_s": parsed - started, "match_and_write_s": done - parsed,
                      "deltas": len(written), "rss_mb": rss}))


def start_only(db_path: Path, mailbox: str = MAILBOX, now: float = float(BASE)) -> None:
    """Child: `event start` alone on a store whose snapshot is ingested: its own time and RSS."""
    db = store.connect(db_path)
    started = time.perf_counter()
    written = engine.start_event(db, "bench", [mailbox], False, now + 20)
    print(json.dumps({"seconds": time.perf_counter() - started, "deltas": len(written),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def ingest_only(db_path: Path, snapshot: Path, now: float = float(BASE)) -> None:
    """Child: `snapshot add` alone."""
    db = store.connect(db_path)
    engine.add_snapshot(db, snapshot, now + 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--new", type=float, default=0.1, help="share of entries not in the mailbox (delivered)")
    parser.add_argument("--reconcile", nargs="+", help=argparse.SUPPRESS)  # DB SNAPSHOT [MAILBOX NOW]
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            build_index(Path(rest[0]), int(rest[1]))
        elif kind == "snapshot":
            write_snapshot(Path(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]))
        elif kind == "ingest":
            ingest_only(Path(rest[0]), Path(rest[1]))
        else:
            start_only(Path(rest[0]))
        return
    if args.reconcile:
        db_path, snapshot, *rest = args.reconcile
        reconcile(Path(db_path), Path(snapshot), *(rest[:1]), *(float(x) for x in rest[1:2]))
        return
    # Everything big happens in children, and this process stays small: a child's peak
    # RSS starts from its parent's (fork, then exec keeps the high-water mark).
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", "build", str(work / "base.db"), str(args.messages)],
                       check=True)
        print(f"index of {args.messages:,} messages built in {time.perf_counter() - started:.1f}s")
        subprocess.run([sys.executable, __file__, "--child", "snapshot", str(work / "snapshot.json"),
                        str(args.messages), str(args.entries), str(args.new)], check=True)
        shutil.copy(work / "base.db", work / "run.db")
        os.sync()  # the copy's writeback is not the reconcile's: its commits fsync, the floor does not
        result = subprocess.run([sys.executable, __file__, "--reconcile", str(work / "run.db"),
                                 str(work / "snapshot.json")], capture_output=True, text=True, check=True)
        run = json.loads(result.stdout.strip().splitlines()[-1])
        # event start on its own, on a copy of the store with the snapshot ingested
        shutil.copy(work / "base.db", work / "start.db")
        subprocess.run([sys.executable, __file__, "--child", "ingest", str(work / "start.db"),
                        str(work / "snapshot.json")], check=True)
        os.sync()
        result = subprocess.run([sys.executable, __file__, "--child", "start", str(work / "start.db")],
                                capture_output=True, text=True, check=True)
        start = json.loads(result.stdout.strip().splitlines()[-1])
        floors = []
        for _ in range(3):
            shutil.copy(work / "base.db", work / "floor.db")
            floors.append(floor(work / "floor.db", work / "snapshot.json"))
    best_floor = min(floors)
    ratio = run["seconds"] / best_floor
    print(f"reconcile {args.entries:,} entries: {run['seconds']:.2f}s (snapshot {run['snapshot_s']:.2f}s, "
          f"match+write {run['match_and_write_s']:.2f}s), {run['deltas']:,} deltas")
    print(f"floor (JSON decode + indexed anti-join): {best_floor:.2f}s; ratio {ratio:.1f}x (target <= 5x)")
    print(f"peak RSS of the reconcile process: {run['rss_mb']:.0f} MB (target <= 300 MB)")
    print(f"event start alone (snapshot already added): {start['seconds']:.2f}s, peak RSS {start['rss_mb']:.0f} MB, "
          f"{start['deltas']:,} deltas")
    print(json.dumps({"reconcile_s": round(run["seconds"], 2), "floor_s": round(best_floor, 2),
                      "ratio": round(ratio, 1), "rss_mb": round(run["rss_mb"]), "deltas": run["deltas"],
                      "event_start_s": round(start["seconds"], 2), "event_start_rss_mb": round(start["rss_mb"])}))


if __name__ == "__main__":
    main()
