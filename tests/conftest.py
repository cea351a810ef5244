"""Shared test helpers: the corpus (skipped with a reason when absent), stores, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from syncengine import store

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CORPUS = Path(os.environ.get("SYNCENGINE_CORPUS", ROOT.parent / "shared" / "corpus"))

# Every command finds a default config (the user's config folder, $SYNCENGINE_CONFIG): the
# suite must never read, or write, the config of whoever runs it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="syncengine-test-config-")
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="syncengine-test-data-")
os.environ.pop("SYNCENGINE_CONFIG", None)


def corpus_rows() -> list[dict]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest, encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def needs_corpus():
    return pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").exists(),
                              reason=f"shared corpus not found at {CORPUS} (set SYNCENGINE_CORPUS)")


@pytest.fixture
def db(tmp_path):
    database = store.connect(tmp_path / "store.db")
    yield database
    database.conn.close()


def run_cli(*args: str, cwd: Path | None = None, check: bool = False,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a real process (`env`: variables added to ours)."""
    result = subprocess.run([sys.executable, "-m", "syncengine", *args], capture_output=True, text=True,
                            cwd=cwd, timeout=300, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
