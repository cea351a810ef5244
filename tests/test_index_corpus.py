"""The shared corpus of real PST/OST/MSG/EML files, checked against its MANIFEST."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncengine import index

from .conftest import CORPUS, corpus_rows, needs_corpus

pytestmark = needs_corpus()
ROWS = corpus_rows()
STORES = [r for r in ROWS if r["kind"] in ("pst", "ost") and "BAD-INPUT" not in r["notes"]]
BAD = [r for r in ROWS if "BAD-INPUT" in r["notes"]]
MSGS = [r for r in ROWS if r["kind"] in ("msg", "eml") and "BAD-INPUT" not in r["notes"]]


def _ids(rows):
    return [r["file"] for r in rows]


def _index_one(db, row):
    reports = []
    index.run(db, [CORPUS / row["file"]], "user@corpus.example", on_file=reports.append)
    assert len(reports) == 1
    return reports[0]


def _pypff_only_failures(row) -> int:
    """Items pypff cannot read but readpst can ('pypff partial (N item errors); readpst ok'):
    the index reads such stores by node id (readers/pst_items) and gets them too."""
    found = re.search(r"pypff partial \((\d+) item errors\); readpst ok", row["readable_by"])
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("row", STORES, ids=_ids(STORES))
def test_store_item_count_matches_manifest(db, row):
    report = _index_one(db, row)
    # MANIFEST counts the items pypff reads in every folder; the index keeps mailbox
    # folders and counts the rest (free/busy data outside the IPM subtree) as skipped.
    extra = _pypff_only_failures(row)
    assert report.messages + report.skipped == int(row["messages"] or 0) + extra
    assert report.messages == db.execute("SELECT count(*) FROM locations").fetchone()[0]
    if "PARTLY-READABLE" in row["notes"] and not extra:
        assert report.status == "partial" and report.errors
    else:
        assert report.status == "ok", report.errors


@pytest.mark.parametrize("row", STORES, ids=_ids(STORES))
def test_store_message_id_count_matches_manifest_notes(db, row):
    _index_one(db, row)
    readable = re.search(r"Message-ID 0x1035 readable on (\d+)/", row["notes"])
    mapi = db.execute("SELECT count(*) FROM locations WHERE mid_source = 'mapi'").fetchone()[0]
    # Empty stores carry no such note. The items outside the IPM subtree (free/busy
    # data) have no Message-ID in this corpus, so the counts compare directly.
    assert mapi == (int(readable.group(1)) if readable else 0)


@pytest.mark.parametrize("row", BAD, ids=_ids(BAD))
def test_n3_bad_input_gets_a_recorded_error_naming_the_reason(db, row):
    report = _index_one(db, row)
    assert report.status == "error"
    assert len(report.errors) == 1 and report.errors[0].reason
    recorded = list(db.query("SELECT * FROM source_errors"))
    if Path(report.path).suffix.lower() in (".txt", ".bin") and not recorded:
        # an unrecognised file type is reported but has no source row to hang on
        assert "not a PST" in report.errors[0].reason or "truncated" in report.errors[0].reason
    else:
        assert recorded and recorded[0]["path"] == str(CORPUS / row["file"])


@pytest.mark.parametrize("row", MSGS, ids=_ids(MSGS))
def test_every_corpus_msg_and_eml_is_indexed_with_its_class(db, row):
    report = _index_one(db, row)
    assert report.status == "ok", report.errors
    found = db.execute("SELECT m.message_class, l.mid_source FROM locations l"
                       " JOIN messages m ON m.id = l.message").fetchone()
    klass = re.search(r"class=([\w.]+)", row["notes"])
    if klass:
        assert found[0] == klass.group(1)
    if "prop 0x1035=yes" in row["notes"]:
        assert found[1] == "mapi"
    elif "prop 0x1035=no" in row["notes"]:
        assert found[1] != "mapi"


def test_exchange_ost_resolves_roles_by_name_fallbacks(db):
    _index_one(db, {"file": "pst/aspose-email-net__SampleOstFile.ost"})
    roles = dict(db.execute("SELECT folder, role FROM locations GROUP BY folder").fetchall())
    assert roles == {"Inbox": "inbox", "Inbox/sub1": "other", "Inbox/sub2": "other", "Sent Items": "sent",
                     "Deleted Items": "deleted", "Calendar": "calendar", "Sync Issues": "sync"}
    assert not db.execute("SELECT count(*) FROM locations WHERE folder LIKE 'Root - %'").fetchone()[0]


def test_pst_roles_come_from_store_entry_ids(db):
    _index_one(db, {"file": "pst/aspose-email-net__Outlook.pst"})
    roles = dict(db.execute("SELECT folder, role FROM locations GROUP BY folder").fetchall())
    assert roles["Sent Items"] == "sent" and roles["Inbox"] == "inbox" and roles["Calendar"] == "calendar"


def test_same_items_in_two_stores_are_one_message_with_two_locations(db):
    index.run(db, [CORPUS / "pst/aspose-email-net__Outlook.pst", CORPUS / "pst/aspose-email-net__Outlook_1.pst"],
              "user@corpus.example")
    with_id = db.execute("SELECT count(*) FROM messages WHERE identity NOT LIKE 'nomid:%'").fetchone()[0]
    locations = db.execute("SELECT count(*) FROM locations l JOIN messages m ON m.id = l.message"
                           " WHERE m.identity NOT LIKE 'nomid:%'").fetchone()[0]
    assert with_id and locations == 2 * with_id


def test_whole_corpus_run_goes_on_past_every_bad_file(db):
    summary = index.run(db, [CORPUS / "pst", CORPUS / "msg", CORPUS / "eml"], "user@corpus.example")
    tree_bad = [r for r in BAD if Path(r["file"]).suffix.lower() in (".pst", ".ost", ".msg", ".eml")]
    assert summary.error == len(tree_bad)
    assert summary.ok + summary.partial + summary.error == summary.files
    assert summary.messages > 450
