"""Crash matrix: stop a replay hard after its k-th commit, for every k, resume it, and
check the final delta log equals an uninterrupted run's (as mbsync's tests do).

    python tools/crash_matrix.py                      # every scenario in fixtures/scenarios
    python tools/crash_matrix.py fixtures/scenarios/c13-outbox-sends-exactly-once

Each run is a real process (forked) that ends with os._exit right after the commit,
with no clean-up; the resume is another process opening the same store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncengine import engine, replay, store  # noqa: E402

_FORK = multiprocessing.get_context("fork")


@dataclass
class MatrixResult:
    scenario: str
    crash_points: int
    mismatches: list[int]  # values of k whose resumed log differed

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _child(scenario: str, db: str, crash_after: int | None) -> None:
    if crash_after is None:
        os.environ.pop(store.CRASH_ENV, None)
    else:
        os.environ[store.CRASH_ENV] = str(crash_after)
    try:
        replay.replay(Path(scenario), Path(db))
    except BaseException:  # a failure is the exit code; the parent reports it
        os._exit(3)
    os._exit(0)


def _run(scenario: Path, db: Path, crash_after: int | None) -> int:
    process = _FORK.Process(target=_child, args=(str(scenario), str(db), crash_after))
    process.start()
    process.join()
    return process.exitcode


def _log(db: Path) -> list[dict]:
    database = store.connect(db)
    try:
        return engine.deltas(database)
    finally:
        database.conn.close()


def _clear(db: Path) -> None:
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    shutil.rmtree(Path(f"{db}.d"), ignore_errors=True)


def run_matrix(scenario: Path, workdir: Path, limit: int = 10_000) -> MatrixResult:
    """Crash after commit k = 1, 2, ... until a run completes without reaching k.
    Every run uses the same store path, since deltas name stored content by path."""
    db = workdir / "store.db"
    if _run(scenario, db, None) != 0:
        raise RuntimeError(f"{scenario}: the uninterrupted replay failed")
    reference = _log(db)
    mismatches = []
    k = 0
    while k < limit:
        k += 1
        _clear(db)
        code = _run(scenario, db, k)
        if code == 0:  # fewer than k commits: every crash point has been tried
            break
        if code != store.CRASH_EXIT:
            raise RuntimeError(f"{scenario}: run crashing after commit {k} exited {code}")
        if _run(scenario, db, None) != 0:
            raise RuntimeError(f"{scenario}: resume after a crash at commit {k} failed")
        if _log(db) != reference:
            mismatches.append(k)
    return MatrixResult(scenario.name, k - 1, mismatches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", type=Path)
    args = parser.parse_args()
    scenarios = args.scenarios or sorted(p for p in (ROOT / "fixtures" / "scenarios").iterdir()
                                         if (p / "scenario.json").exists() and not (p / "corpus-files.json").exists())
    results = []
    for scenario in scenarios:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_matrix(scenario, Path(tmp))
        results.append(result)
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.scenario}: {result.crash_points} crash points"
              f"{', mismatches at ' + str(result.mismatches) if result.mismatches else ''}"
              f" ({time.monotonic() - started:.1f}s)")
    total = sum(r.crash_points for r in results)
    failed = [r.scenario for r in results if not r.ok]
    print(json.dumps({"scenarios": len(results), "crash_points": total, "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
