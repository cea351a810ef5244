"""Index rate of a generated mailbox (tools/make_mailbox.py) as an MSG tree and as
Maildir++, beside single-process baselines reading the same fields, in the same run.

    python tools/bench/tree_bench.py [--messages 100000]

- MSG tree: `syncengine index` (worker processes, one SQLite writer) against
  single-process `extract_msg.openMsg` reading Message-ID, date, subject and sender;
- Maildir: `syncengine index` against Python's `mailbox.Maildir` walk parsing the same
  headers, for every folder.
The mailbox is generated in a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import mailbox
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import extract_msg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncengine import index, store  # noqa: E402


def generate(out: Path, count: int, fmt: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(out), "--messages", str(count),
                    "--format", fmt, "--seed", "1"], check=True, capture_output=True)


def ours(root: Path, work: Path) -> tuple[int, float]:
    db = store.connect(work / f"bench-{root.name}.db")
    started = time.perf_counter()
    summary = index.run(db, [root], "alice@acme.example")
    return summary.messages, time.perf_counter() - started


def extract_msg_walk(root: Path) -> tuple[int, float]:
    started, count = time.perf_counter(), 0
    for path in root.rglob("*.msg"):
        with extract_msg.openMsg(str(path), delayAttachments=True) as message:
            _ = (message.messageId, message.date, message.subject, message.sender)
        count += 1
    return count, time.perf_counter() - started


def maildir_walk(root: Path) -> tuple[int, float]:
    started, count = time.perf_counter(), 0
    top = mailbox.Maildir(root, factory=None, create=False)
    for box in [top] + [top.get_folder(name) for name in top.list_folders()]:
        for message in box:
            _ = (message["Message-ID"], message["Date"], message["Subject"], message["From"])
            count += 1
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tree-bench-") as temp:
        work = Path(temp)
        for fmt, baseline, name in (("msg", extract_msg_walk, "single-process extract-msg"),
                                    ("maildir", maildir_walk, "mailbox.Maildir walk")):
            root = work / fmt
            generate(root, args.messages, fmt)
            count, seconds = ours(root, work)
            base_count, base_seconds = baseline(root)
            print(f"{fmt}: {count} messages in {seconds:.1f} s = {count / seconds:.0f}/s; {name}: "
                  f"{base_count} in {base_seconds:.1f} s = {base_count / base_seconds:.0f}/s; "
                  f"ratio {count / seconds / (base_count / base_seconds):.2f}x")


if __name__ == "__main__":
    main()
