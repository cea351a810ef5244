"""N1/C1: a hard stop after any commit, then a restart, yields the same final log.

The matrix stops a real (forked) replay process with os._exit right after its k-th
commit, for every k, resumes it from the store, and compares the delta logs.
`python tools/crash_matrix.py` runs it over the whole library.
"""

from __future__ import annotations

import sys

import pytest

from .conftest import FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from crash_matrix import run_matrix  # noqa: E402

# Every scenario of the library that needs no corpus file: outbox sends (c13), several
# restarts (c1), the post-event window (c14), lists (c16), bad input (n3) among them.
SCENARIOS = sorted(p.name for p in (FIXTURES / "scenarios").iterdir()
                   if (p / "scenario.json").exists() and not (p / "corpus-files.json").exists())


@pytest.mark.parametrize("name", SCENARIOS)
def test_n1_crash_after_every_commit_resumes_to_the_same_log(tmp_path, name):
    result = run_matrix(FIXTURES / "scenarios" / name, tmp_path)
    assert result.crash_points >= 20  # the store's migrations, the index, each step and poll
    assert result.mismatches == []
