"""Snapshot ingestion memory: peak RSS of `syncengine snapshot add` for one big page, and
for four of them (issue 19: memory must not grow with the number of pages).

    python tools/bench/snapshot_bench.py [--page-mb 250]

Each page holds entries of about 2 KB (a long subject, recipients, headers) up to the
size asked; each run is its own process, so its peak RSS is its own. Printed: pages,
entries, seconds, peak RSS, and the 4-page run's RSS against the 1-page run's (the
baseline measured in the same run; the target is 1.0x, that is, flat).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAILBOX = "alice@acme.example"


def write_page(path: Path, number: int, megabytes: int) -> int:
    subject = "Quarterly figures and the plan for the next quarter " * 28  # ~1.5 KB
    entries, size = [], 0
    while size < megabytes << 20:
        n = len(entries)
        entry = {"id": f"p{number}-e{n}", "received": "2026-11-28T08:59:12+0000",
                 "headerDate": "2026-11-28T08:59:02+0000", "mimeMessageId": f"<p{number}-{n}@bench.example>",
                 "from": {"emailAddress": f"s{n % 997}@example.org", "displayableName": "Sender"},
                 "to": [{"emailAddress": MAILBOX}], "cc": [{"emailAddress": f"c{n % 13}@acme.example"}],
                 "subject": f"{n} {subject}", "status": "ARCHIVED", "size": 48211,
                 "headers": [{"name": "X-Bench", "values": ["1"]}]}
        entries.append(entry)
        size += len(json.dumps(entry)) + 2
    page = {"meta": {"status": 200, "snapshot": {"address": MAILBOX, "kind": "mailbox"}}, "data": entries, "fail": []}
    path.write_text(json.dumps(page))
    return len(entries)


def ingest(folder: Path, db: Path) -> dict:
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run([sys.executable, "-m", "syncengine", "snapshot", "add", str(folder), "--db", str(db)],
                            capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "rss_mb": max(peak, before) / 1024, "said": result.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page-mb", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as temp:
        work = Path(temp)
        one, four = work / "one", work / "four"
        one.mkdir()
        four.mkdir()
        entries = write_page(one / "snapshot.json", 1, args.page_mb)
        for number in range(1, 5):
            write_page(four / f"snapshot-{number:04d}.json", number, args.page_mb)
        # the 1-page run first: RUSAGE_CHILDREN is a high-water mark over the children so far
        first = ingest(one, work / "one.db")
        second = ingest(four, work / "four.db")
    print(f"1 page of {args.page_mb} MB ({entries:,} entries): {first['seconds']:.1f} s, peak RSS {first['rss_mb']:.0f} MB"
          f"  [{first['said']}]")
    print(f"4 pages of {args.page_mb} MB: {second['seconds']:.1f} s, peak RSS {second['rss_mb']:.0f} MB"
          f"  [{second['said']}]")
    print(f"peak RSS, 4 pages vs 1: {second['rss_mb'] / first['rss_mb']:.2f}x (flat is 1.00x)")


if __name__ == "__main__":
    main()
