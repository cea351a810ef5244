"""Start-up benchmark: how long a user waits for `syncengine --help` and `status`.

    python tools/bench/startup_bench.py [--runs 15]

Runs the installed entry point (the `syncengine` script beside this Python, as pip
or pipx installs it), not an in-process import, so interpreter start, site-packages
and click are all counted. Baseline, in the same run: `python -c pass` from the same
interpreter. Target (issue 23): median under 0.3 s for `--help` and `status`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.3


def entry_point() -> str:
    beside = Path(sys.executable).parent / "syncengine"
    found = str(beside) if beside.exists() else shutil.which("syncengine")
    if not found:
        sys.exit("no installed `syncengine` script: pip install . first")
    return found


def timed(argv: list[str], runs: int) -> float:
    """The median wall time of `runs` runs (after one warm-up, so .pyc files exist)."""
    subprocess.run(argv, capture_output=True, check=False)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    script = entry_point()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store.db"
        demo = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "demo"
        subprocess.run([script, "replay", str(demo), "--db", str(db), "--quiet"], capture_output=True, check=True)
        baseline = timed([sys.executable, "-c", "pass"], runs)
        cases = {
            "syncengine --help": [script, "--help"],
            "syncengine status --db (demo store)": [script, "status", "--db", str(db)],
            "syncengine deltas --db (demo store)": [script, "deltas", "--db", str(db)],
            "syncengine index --help": [script, "index", "--help"],
        }
        print(f"{'command':40} {'median':>8} {'x python':>9}  target")
        print(f"{'python -c pass (baseline)':40} {baseline * 1000:6.0f}ms {1.0:8.2f}x")
        worst = 0.0
        for name, argv in cases.items():
            took = timed(argv, runs)
            worst = max(worst, took) if name.split()[1] in ("--help", "status") else worst
            verdict = "ok" if took < TARGET_S else f"over {TARGET_S}s"
            print(f"{name:40} {took * 1000:6.0f}ms {took / baseline:8.2f}x  {verdict}")
    print(f"slowest of --help/status: {worst * 1000:.0f} ms (target < {TARGET_S * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
