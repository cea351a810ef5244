"""Index benchmark: messages/s beside baselines measured in the same run.

    python tools/bench/index_bench.py [--corpus ../shared/corpus] [--msg-files 20000]

(a) PST/OST: `syncengine index` against a raw pypff walk reading the same properties
    (target ratio >= 0.8, single process);
(b) the same stores through `readpst` (apt package pst-utils; target >= 3x faster), ours
    on both cores;
(c) a generated tree of MSG files: `syncengine index` (worker processes, one SQLite
    writer) against single-process `extract_msg.openMsg` reading the same fields
    (target >= 1.5x); peak RSS for a quarter of the tree and for all of it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import extract_msg
import pypff

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from syncengine import index, store  # noqa: E402

PROPS = (0x1035, 0x007D, 0x0039, 0x0037, 0x001A, 0x5D01, 0x5D02, 0x0C1F, 0x0065)


def good_stores(corpus: Path) -> list[Path]:
    rows = csv.DictReader(open(corpus / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t")
    return [corpus / r["file"] for r in rows if r["kind"] in ("pst", "ost") and "BAD-INPUT" not in r["notes"]]


def raw_pypff(paths: list[Path]) -> int:
    """Every item of every folder, the same property reads and recipient table, nothing else."""
    count = 0
    for path in paths:
        handle = pypff.file()
        handle.open(str(path))
        stack = [handle.root_folder]
        while stack:
            folder = stack.pop()
            stack.extend(folder.sub_folders)
            for i in range(folder.number_of_sub_messages):
                try:
                    item = folder.get_sub_message(i)
                    props = item.get_record_set(0)
                    for tag in PROPS:
                        entry = props.get_entry_by_type(tag)
                        if entry is not None and entry.value_type in (0x1F, 0x1E):
                            _ = entry.data_as_string  # the read is the work measured
                    if props.get_entry_by_type(0x007D) is None:  # no headers: recipient table, as ours
                        table = getattr(item, "recipients", None)
                        for rec in (table.record_sets if table is not None else []):
                            for tag in (0x0C15, 0x39FE, 0x3003):
                                rec.get_entry_by_type(tag)
                    count += 1
                except OSError:
                    pass
        handle.close()
    return count


def ours(paths: list[Path], workdir: Path, workers: int | None = None) -> int:
    db_path = workdir / f"bench-{time.monotonic_ns()}.db"
    db = store.connect(db_path)
    summary = index.run(db, paths, "bench@example.org", workers=workers)
    db.conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return summary.messages


def timed(fn, *args, repeat: int = 1) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, count


def readpst(paths: list[Path], workdir: Path) -> int:
    for path in paths:
        out = Path(tempfile.mkdtemp(dir=workdir))
        subprocess.run(["readpst", "-q", "-o", str(out), str(path)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(out)
    return 0


def raw_extract_msg(paths: list[Path]) -> int:
    for path in paths:
        msg = extract_msg.openMsg(str(path))
        _ = (msg.messageId, msg.date, msg.subject, msg.sender, msg.to, msg.cc, msg.classType, msg.header)
        msg.close()
    return len(paths)


def make_msg_tree(root: Path, total: int, distinct: int = 400) -> list[Path]:
    from make_fixtures import Spec, write_message
    seeds = []
    for i in range(distinct):
        spec = Spec(f"seed/{i:05d}.msg", f"Bench message {i}", f"sender{i % 37}@example.org",
                    ["bench@example.org"], cc=[f"cc{i % 11}@example.org"], message_id=f"<bench-{i}@example.org>",
                    date=f"2026-03-01T{i % 24:02d}:{i % 60:02d}:00Z")
        seeds.append(write_message(spec, root))
    files = []
    for n in range(total):
        target = root / "tree" / f"Folder{n % 20:02d}" / f"{n:06d}.msg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seeds[n % distinct], target)
        files.append(target)
    shutil.rmtree(root / "seed")
    return files


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of `syncengine index` in a fresh process (workers included)."""
    code = ("import resource, sys; from syncengine.cli import cli; "
            "sys.argv = ['syncengine'] + sys.argv[1:]\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass\n"
            "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print('RSS', max(own, kids), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("RSS")][-1]
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--msg-files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stores = good_stores(args.corpus) * 10
        raw_s, raw_n = timed(raw_pypff, stores, repeat=args.repeat)
        our_s, our_n = timed(ours, stores, work, 1, repeat=args.repeat)
        results["pst"] = {"messages": our_n, "raw_items": raw_n, "ours_per_s": round(our_n / our_s),
                          "raw_pypff_per_s": round(raw_n / raw_s), "ratio": round(raw_s / our_s, 2),
                          "target": ">= 0.8"}
        print(f"(a) PST/OST x10: ours {our_n / our_s:,.0f} msg/s, raw pypff {raw_n / raw_s:,.0f} items/s, "
              f"ratio (time) {raw_s / our_s:.2f} (target >= 0.8)")
        if shutil.which("readpst"):
            rp_s, _ = timed(readpst, good_stores(args.corpus), work, repeat=1)
            one_s, one_n = timed(ours, good_stores(args.corpus), work, None, repeat=args.repeat)
            results["readpst"] = {"readpst_s": round(rp_s, 3), "ours_s": round(one_s, 3),
                                  "speedup": round(rp_s / one_s, 1), "target": ">= 3", "cores": os.cpu_count()}
            print(f"(b) readpst {rp_s:.3f}s vs ours {one_s:.3f}s (both cores) on the same {one_n} messages: "
                  f"{rp_s / one_s:.1f}x faster (target >= 3)")
        else:
            print("(b) readpst not installed (apt-get install pst-utils): skipped")

        tree_root = work / "msgs"
        files = make_msg_tree(tree_root, args.msg_files)
        base_s, base_n = timed(raw_extract_msg, files)
        ours_s, ours_n = timed(ours, [tree_root / "tree"], work)
        results["msg"] = {"files": base_n, "indexed": ours_n, "ours_per_s": round(ours_n / ours_s),
                          "extract_msg_per_s": round(base_n / base_s), "ratio": round(base_s / ours_s, 2),
                          "target": ">= 1.5", "cores": os.cpu_count()}
        print(f"(c) {base_n} MSG files: ours {ours_n / ours_s:,.0f}/s, single-process openMsg "
              f"{base_n / base_s:,.0f}/s, ratio {base_s / ours_s:.2f} (target >= 1.5)")
        quarter = work / "quarter"
        for folder in sorted((tree_root / "tree").iterdir())[:5]:
            shutil.copytree(folder, quarter / folder.name)
        small = peak_rss_mb(["index", str(quarter), "--db", str(work / "q.db"), "--mailbox", "b@x.org"])
        large = peak_rss_mb(["index", str(tree_root / "tree"), "--db", str(work / "a.db"), "--mailbox", "b@x.org"])
        results["rss_mb"] = {"quarter": round(small, 1), "all": round(large, 1)}
        print(f"    peak RSS: {small:.0f} MB for {args.msg_files // 4} files, {large:.0f} MB for {args.msg_files}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
