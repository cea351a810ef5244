"""Index rate and peak RSS of a generated mailbox (tools/make_mailbox.py) as an MSG tree
and as Maildir++, beside single-process baselines reading the same fields, in the same run.

    python tools/bench/tree_bench.py [--messages 100000] [--formats msg,maildir]
    python tools/bench/tree_bench.py --maildir /tmp/md1m   # an existing make_mailbox Maildir

- MSG tree: `syncengine index` (worker processes, one SQLite writer) against
  single-process `extract_msg.openMsg` reading Message-ID, date, subject and sender;
- Maildir: `syncengine index` against Python's `mailbox.Maildir` walk parsing the same
  headers, for every folder (target: >= 1x).
Each side runs in its own process: its wall time and its peak RSS (the index's worker
processes included); each runs `--rounds` times in turn, the best of each counts (the
first run of either reads the files into the page cache). A generated mailbox lives in a temporary folder and is removed
afterwards; one given with --maildir is only read.
"""

from __future__ import annotations

import argparse
import json
import mailbox
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "bench"))

from pst_bench import run_measured  # noqa: E402

OWNER = "alice@acme.example"


def generate(out: Path, count: int, fmt: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(out), "--messages", str(count),
                    "--format", fmt, "--seed", "1"], check=True, capture_output=True)


def ours(root: Path, work: Path) -> tuple[int, float, float]:
    work.mkdir()
    seconds, rss, result = run_measured([sys.executable, "-m", "syncengine", "index", str(root), "--db",
                                         str(work / f"bench-{root.name}.db"), "--mailbox", OWNER])
    summary = re.search(r"(\d+) messages in", result.stdout + result.stderr)
    return int(summary.group(1)), seconds, rss


def extract_msg_walk(root: Path) -> None:
    """Child: the MSG baseline."""
    import extract_msg
    count = 0
    for path in root.rglob("*.msg"):
        with extract_msg.openMsg(str(path), delayAttachments=True) as message:
            _ = (message.messageId, message.date, message.subject, message.sender)
        count += 1
    print(count)


def maildir_walk(root: Path) -> None:
    """Child: the Maildir baseline."""
    count = 0
    top = mailbox.Maildir(root, factory=None, create=False)
    for box in [top] + [top.get_folder(name) for name in top.list_folders()]:
        for message in box:
            _ = (message["Message-ID"], message["Date"], message["Subject"], message["From"])
            count += 1
    print(count)


BASELINES = {"msg": ("single-process extract-msg", "msg-walk"), "maildir": ("mailbox.Maildir walk", "maildir-walk")}


def measure(fmt: str, root: Path, work: Path, rounds: int) -> dict:
    """Best of `rounds` of each, taken in turn (ours, the baseline, ours, ...): whichever
    runs first pays for reading the files into the page cache."""
    name, child = BASELINES[fmt]
    runs, bases = [], []
    for round_ in range(rounds):
        runs.append(ours(root, work / str(round_)))
        bases.append(run_measured([sys.executable, __file__, "--child", child, str(root)]))
    count, seconds, rss = min(runs, key=lambda run: run[1])
    base_seconds, base_rss, result = min(bases, key=lambda run: run[0])
    base_count = int(result.stdout.strip())
    ratio = count / seconds / (base_count / base_seconds)
    print(f"{fmt}: {count:,} messages in {seconds:.1f} s = {count / seconds:,.0f}/s, peak RSS {rss:.0f} MB; {name}: "
          f"{base_count:,} in {base_seconds:.1f} s = {base_count / base_seconds:,.0f}/s, peak RSS {base_rss:.0f} MB; "
          f"ratio {ratio:.2f}x")
    return {f"{fmt}_messages": count, f"{fmt}_s": round(seconds, 1), f"{fmt}_rss_mb": round(rss),
            f"{fmt}_baseline_s": round(base_seconds, 1), f"{fmt}_baseline_rss_mb": round(base_rss),
            f"{fmt}_ratio": round(ratio, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--formats", default="msg,maildir")
    parser.add_argument("--maildir", type=Path, help="an existing Maildir to measure (read only)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side; the best counts")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (extract_msg_walk if args.child[0] == "msg-walk" else maildir_walk)(Path(args.child[1]))
        return
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="tree-bench-") as temp:
        work = Path(temp)
        if args.maildir:
            figures.update(measure("maildir", args.maildir, work, args.rounds))
        else:
            for fmt in args.formats.split(","):
                root = work / fmt
                generate(root, args.messages, fmt)
                figures.update(measure(fmt, root, work, args.rounds))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
