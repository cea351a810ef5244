"""`syncengine export-pst`: what continuity delivered in an event, as a PST that readers
open and that our own index recognises as continuity's copies (C12 delivery tags)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest

from syncengine.readers import pst as pst_reader
from syncengine.record import SourceResult

from .conftest import FIXTURES, run_cli


@pytest.fixture
def replayed(tmp_path):
    db = tmp_path / "store.db"
    run_cli("replay", str(FIXTURES / "scenarios" / "demo"), "--db", str(db), "--quiet", check=True)
    return db


def _delivered(db, event: str, mailbox: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT mailbox_seq, message_id, content FROM deltas WHERE event = ? AND mailbox = ?"
                            " AND action = 'deliver' ORDER BY seq", (event, mailbox)).fetchall()


def test_export_holds_each_delivered_message_tagged_with_its_delta_c12(replayed, tmp_path):
    out = tmp_path / "recovered.pst"
    result = run_cli("export-pst", "--db", str(replayed), "--event", "outage", str(out))
    assert result.returncode == 0, result.stderr
    delivered = _delivered(replayed, "outage", "alice@acme.example")
    assert len(delivered) == 5 and "wrote 5 message(s)" in result.stdout
    read = SourceResult()
    records = list(pst_reader.read(out, read))
    assert not read.errors
    got = sorted((r.delivery_tag, r.message_id, r.folder) for r in records)
    assert got == sorted((f"outage/{seq}", mid.strip("<>"), "Inbox") for seq, mid, _ in delivered)
    assert all(r.sender and r.recipients == "alice@acme.example" and r.submit_ts for r in records)


def test_readpst_opens_the_export(replayed, tmp_path):
    if shutil.which("readpst") is None:
        pytest.skip("readpst is not installed (apt-get install pst-utils)")
    out = tmp_path / "recovered.pst"
    run_cli("export-pst", "--db", str(replayed), "--event", "outage", str(out), check=True)
    (tmp_path / "mbox").mkdir()
    run = subprocess.run(["readpst", "-j", "0", "-M", "-o", str(tmp_path / "mbox"), str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == ""
    texts = [p.read_text(errors="replace") for p in (tmp_path / "mbox").rglob("*") if p.is_file()]
    assert len(texts) == 5 and all("X-Syncengine-Delivery: outage/" in t for t in texts)


def test_a_delivery_whose_stored_copy_is_gone_is_exported_from_the_delta_and_named(replayed, tmp_path):
    seq, message_id, content = _delivered(replayed, "outage", "alice@acme.example")[0]
    content_path = tmp_path / "moved-away"
    shutil.move(content, content_path)
    out = tmp_path / "recovered.pst"
    result = run_cli("export-pst", "--db", str(replayed), "--event", "outage", str(out))
    assert result.returncode == 3
    assert f"warning: {content}: content not readable" in result.stderr
    records = {r.delivery_tag: r for r in pst_reader.read(out, SourceResult())}
    assert len(records) == 5 and records[f"outage/{seq}"].message_id == message_id.strip("<>")


def test_an_unknown_event_or_a_missing_mailbox_choice_is_refused_with_the_choices(tmp_path):
    db = tmp_path / "store.db"
    run_cli("replay", str(FIXTURES / "scenarios" / "c2-two-mailboxes-one-event"), "--db", str(db), "--quiet",
            check=True)
    with sqlite3.connect(db) as conn:
        event, = conn.execute("SELECT name FROM events").fetchone()
        mailboxes = [r[0] for r in conn.execute(
            "SELECT DISTINCT mailbox FROM deltas WHERE action = 'deliver' ORDER BY mailbox")]
    assert len(mailboxes) == 2
    unknown = run_cli("export-pst", "--db", str(db), "--event", "no-such-event", str(tmp_path / "a.pst"))
    assert unknown.returncode == 4 and f"(events: {event})" in unknown.stderr
    ambiguous = run_cli("export-pst", "--db", str(db), "--event", event, str(tmp_path / "b.pst"))
    assert ambiguous.returncode == 4 and "--mailbox" in ambiguous.stderr and mailboxes[0] in ambiguous.stderr
    stranger = run_cli("export-pst", "--db", str(db), "--event", event, "--mailbox", "eve@elsewhere.example",
                       str(tmp_path / "d.pst"))
    assert stranger.returncode == 4 and "does not cover eve@elsewhere.example" in stranger.stderr
    assert not any((tmp_path / name).exists() for name in ("a.pst", "b.pst", "d.pst"))
    chosen = run_cli("export-pst", "--db", str(db), "--event", event, "--mailbox", mailboxes[1], str(tmp_path / "c.pst"))
    assert chosen.returncode == 0, chosen.stderr
    records = list(pst_reader.read(tmp_path / "c.pst", SourceResult()))
    assert records and {r.delivery_tag.split("/")[0] for r in records} == {event}
    assert len(records) == len(_delivered(db, event, mailboxes[1]))


def test_a_link_planted_at_the_exports_old_temporary_name_is_never_followed(replayed, tmp_path):
    """The temporary file has a name of its own, created exclusively: a link planted where
    it used to be written is left alone, and so is what it points to."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    (tmp_path / ".recovered.pst.partial").symlink_to(elsewhere)
    result = run_cli("export-pst", "--db", str(replayed), "--event", "outage", str(tmp_path / "recovered.pst"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert elsewhere.read_bytes() == b"keep" and (tmp_path / ".recovered.pst.partial").is_symlink()
    assert (tmp_path / "recovered.pst").read_bytes().startswith(b"!BDN")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial") and not p.is_symlink()]
