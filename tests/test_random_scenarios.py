"""Random scenarios (tools/random_scenarios.py), each replayed and checked against the
invariants of continuity.md: no message listed during an event and missing from the
mailbox is left undelivered, nothing is delivered twice in an event beyond C5/C6, no
purge that N2 forbids. The 60 seeds are fixed; `python tools/random_scenarios.py --count
1000` runs more (1,000 from seed 1 gave no violation; the engine before issue 26's fixes
failed 93 of the first 100)."""

from __future__ import annotations

import sys

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from random_scenarios import check  # noqa: E402


@pytest.mark.parametrize("first", range(1, 61, 20))
def test_c5_c8_c19_n2_random_scenarios_keep_the_invariants(tmp_path, first):
    found = {seed: check(seed, tmp_path) for seed in range(first, first + 20)}
    assert {seed: lines for seed, lines in found.items() if lines} == {}
