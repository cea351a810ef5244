"""A generated mailbox (tools/make_mailbox.py) indexes to exactly its ground truth, in
every format the generator writes: PST (through syncengine.pst), MSG, EML and Maildir."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from syncengine import index, store

from .conftest import ROOT

FIELDS = ("message_id", "submit_ts", "subject", "sender", "recipients", "message_class", "folder")


@pytest.mark.parametrize("fmt", ["pst", "ost4k", "eml", "msg", "maildir"])
def test_index_of_a_generated_mailbox_equals_its_ground_truth(tmp_path, fmt):
    out = tmp_path / {"pst": "box.pst", "ost4k": "box.ost"}.get(fmt, "box")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(out), "--messages", "300",
                    "--format", fmt, "--seed", "7"], check=True, capture_output=True, timeout=300)
    truth = json.loads(out.with_name(out.name + ".truth.json").read_text())
    assert len(truth) >= 300
    db = store.connect(tmp_path / "store.db")
    summary = index.run(db, [out], "alice@acme.example", workers=1)
    assert summary.error == 0 and summary.messages == len(truth)
    rows = {r["locator"]: r for r in db.query(
        "SELECT l.locator, l.folder, m.message_id, m.submit_ts, m.subject, m.sender, m.recipients, m.message_class"
        " FROM locations l JOIN messages m ON m.id = l.message")}
    assert set(rows) == set(truth)
    for locator, wanted in truth.items():
        assert {k: rows[locator][k] for k in FIELDS} == {k: wanted[k] for k in FIELDS}, locator


def test_the_same_seed_writes_the_same_mailbox(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(tmp_path / name),
                        "--messages", "50", "--format", "eml", "--seed", "3"], check=True, capture_output=True)
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.eml")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.eml")}
    assert first == second and len(first) >= 50


def test_the_same_seed_writes_the_same_pst_bytes(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(tmp_path / name / "box.pst"),
                        "--messages", "50", "--format", "pst", "--seed", "3"], check=True, capture_output=True)
    assert (tmp_path / "a" / "box.pst").read_bytes() == (tmp_path / "b" / "box.pst").read_bytes()
