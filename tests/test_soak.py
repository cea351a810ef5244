"""The soak (tools/soak.py) in the suite: a one-minute scripted week on a fixed seed, with
real processes (the daemon beside a standalone poller, three apply clients, a relay, the
contract Mimecast server), faults and kill -9, checked against its ground truth. Longer
runs with random seeds: `python tools/soak.py --minutes 30 --seed $RANDOM`."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_a_one_minute_soak_of_the_whole_loop_keeps_every_invariant(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--minutes", "1", "--seed", "7",
                             "--keep", str(tmp_path / "soak")], capture_output=True, text=True, timeout=420)
    verdict = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert result.returncode == 0 and verdict and verdict[0].startswith("PASS"), \
        "\n".join(verdict + result.stdout.splitlines()[-12:] + result.stderr.splitlines()[-12:])
    assert "kills {" in verdict[0] and "'daemon': 1" in verdict[0]  # it did inject
