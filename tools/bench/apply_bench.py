"""Apply-client benchmark: deliveries written into the mailbox tree, fsync on.

    python tools/bench/apply_bench.py [--deliveries 2000] [--size 50000] [--latency-samples 50]

(a) deltas applied per second (deliveries of 50 KB messages: read the stored content,
    add the delivery header, write durably, journal, in this process) beside the raw
    rate of writing and renaming the same files with the same fsyncs;
(b) commit -> applied on disk: one delivery committed at a time to a store served by
    `syncengine serve`, a `syncengine apply` process following it; the time until the
    file is in Inbox, median and p99 (this process watches the folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncengine import engine, files, store  # noqa: E402
from syncengine.apply.client import Applier  # noqa: E402
from syncengine.apply.mailbox import Layout  # noqa: E402

MAILBOX = "alice@acme.example"


def message(n: int, size: int) -> bytes:
    return f"Message-ID: <a{n}@bench>\r\nSubject: {n}\r\n\r\n".encode() + b"x" * size


def throughput(work: Path, count: int, size: int) -> tuple[float, float]:
    content = work / "content"
    content.mkdir()
    for n in range(count):
        (content / f"{n}.eml").write_bytes(message(n, size))
    applier = Applier(Layout(work / "mail", False), None, lambda d: None)
    started = time.perf_counter()
    for n in range(count):
        applier.apply({"seq": n + 1, "mailbox_seq": n + 1, "event": "bench", "mailbox": MAILBOX,
                       "action": "deliver", "content": str(content / f"{n}.eml"), "message_id": f"<a{n}@bench>"})
    ours = count / (time.perf_counter() - started)
    applier.close()
    raw_dir = work / "raw"
    raw_dir.mkdir()
    started = time.perf_counter()
    for n in range(count):
        data = (content / f"{n}.eml").read_bytes()
        partial, target = raw_dir / f".{n}.part", raw_dir / f"{n}.eml"
        with open(partial, "wb") as handle:
            handle.write(data)
            os.fsync(handle.fileno())
        os.replace(partial, target)
        files.fsync_dir(raw_dir)
    raw = count / (time.perf_counter() - started)
    return ours, raw


def latency(work: Path, samples: int) -> list[float]:
    db, mail = work / "store.db", work / "mail"
    database = store.connect(db)
    engine.start_event(database, "ev1", [MAILBOX], False, 1000.0, no_local_mail=[MAILBOX])
    server = subprocess.Popen([sys.executable, "-m", "syncengine", "serve", "--db", str(db)], stderr=subprocess.DEVNULL)
    client = subprocess.Popen([sys.executable, "-m", "syncengine", "apply", "--mailbox", MAILBOX, "--mailbox-dir",
                               str(mail), "--db", str(db)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    times = []
    try:
        time.sleep(1.0)  # a benchmark, not a test: let both processes start
        for n in range(samples):
            snap = work / f"snap-{n}"
            (snap / "m").mkdir(parents=True)
            (snap / "m" / "x.eml").write_bytes(message(100_000 + n, 50_000))
            (snap / "snapshot.json").write_text(
                '{"meta": {"status": 200, "snapshot": {"address": "%s", "kind": "mailbox"}}, "fail": [], "data": '
                '[{"id": "l%d", "received": "2026-03-02T08:00:00Z", "mimeMessageId": "<l%d@bench>", '
                '"from": {"emailAddress": "x@example.org"}, "subject": "l", "content": "m/x.eml"}]}' % (MAILBOX, n, n))
            engine.add_snapshot(database, snap, 1000.0 + 60 * (n + 1))
            engine.poll(database, 1000.0 + 60 * (n + 1))
            committed = time.monotonic()
            seq = database.execute("SELECT max(seq) FROM deltas").fetchone()[0]
            target = mail / "Inbox" / f"syncengine-ev1-{seq}.eml"
            while not target.exists():
                time.sleep(0.0002)
            times.append(time.monotonic() - committed)
    finally:
        client.terminate()
        server.terminate()
        client.wait(10)
        server.wait(10)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="apply-bench-") as temp:
        (Path(temp) / "t").mkdir()
        ours, raw = throughput(Path(temp) / "t", args.deliveries, args.size)
        print(f"(a) {args.deliveries} deliveries of {args.size // 1000} KB: {ours:.0f} applied/s; raw write+fsync+rename "
              f"{raw:.0f}/s; ratio {ours / raw:.2f}x")
        (Path(temp) / "l").mkdir()
        times = latency(Path(temp) / "l", args.latency_samples)
        ordered = sorted(times)
        print(f"(b) commit -> applied on disk: median {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000:.1f} ms over {len(times)}")


if __name__ == "__main__":
    main()
