"""EML and Maildir read from the header block alone (issue 25): the same records as a parse
of the whole message, on every corpus EML, a generated Maildir and the awkward separators
a header block can end with."""

from __future__ import annotations

import subprocess
import sys
from email import policy
from email.parser import BytesParser

import pytest

from syncengine import headers, normalise
from syncengine.readers import eml
from syncengine.record import Record

from .conftest import CORPUS, ROOT


def _whole_message_record(data: bytes) -> Record:
    """The reader as it was: the parser given every byte of the message."""
    message = BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)

    def get(name: str) -> str | None:
        value = message.get(name)
        return str(value) if value is not None else None

    cls = "IPM.Note"
    if message.get_content_maintype() == "multipart" or message.get_content_type() == "text/calendar":
        cls, _ = headers.class_of_mime(data)
    delivery = get("X-Syncengine-Delivery")
    mid = normalise.message_id(get("Message-ID"))
    return Record("x", "Inbox", "inbox", mid, "mime" if mid else None, normalise.header_date(get("Date")),
                  headers.decoded(get("Subject")), normalise.address(headers.decoded(get("From"))),
                  normalise.recipients_key(normalise.addresses(
                      [str(v) for v in message.get_all("To", []) + message.get_all("Cc", [])])),
                  normalise.resent_key(get("Resent-Message-ID"), get("Resent-Date")), cls,
                  delivery.strip() if delivery else None)


def _same(data: bytes) -> None:
    assert eml.parse(data, "x", "Inbox", "inbox") == _whole_message_record(data)


def test_every_corpus_eml_reads_the_same_from_its_header_block():
    files = sorted((CORPUS / "eml").glob("*.eml")) if (CORPUS / "eml").is_dir() else []
    if not files:
        pytest.skip(f"the corpus is absent ({CORPUS}): the generated mailbox below still runs")
    for path in files:
        data = path.read_bytes()
        if data.strip() and b":" in eml.header_block(data):
            _same(data)


def test_a_generated_maildir_reads_the_same_from_header_blocks(tmp_path):
    out = tmp_path / "box"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_mailbox.py"), str(out), "--messages", "400",
                    "--format", "maildir", "--seed", "5"], check=True, capture_output=True, timeout=300)
    files = [p for p in out.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]
    assert len(files) >= 400
    classes = set()
    for path in files:
        data = path.read_bytes()
        _same(data)
        classes.add(eml.parse(data, "x", "Inbox", "inbox").message_class)
    assert "IPM.Schedule.Meeting.Request" in classes   # calendar parts are still found in bodies


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r"])
def test_any_line_ending_ends_the_header_block_where_the_parser_ends_it(separator):
    lines = [b"From: Bob <bob@example.org>", b"To: alice@acme.example,", b"\tcarol@example.org",
             b"Subject: =?utf-8?q?caf=C3=A9?=", b"Message-ID: <a@b>", b"Date: Mon, 2 Mar 2026 10:00:00 +0000",
             b"Content-Type: multipart/mixed; boundary=x", b"", b"--x", b"Content-Type: text/calendar",
             b"", b"METHOD:REQUEST", b"--x--", b""]
    _same(separator.join(lines))
    _same(b"From: a@b\nSubject: no body")                 # no blank line at all
    _same(b"From: a@b\r\n\nTo: not-a-header@c\n\nbody")   # "\r\n\n" ends it early
    _same(b"From: a@b\n\r\nTo: not-a-header@c\n")         # and "\n\r\n"


_PIECES = [b"From: Bob <bob@example.org>", b"To: a@b,", b"\tc@d", b" e@f", b"Subject: =?utf-8?q?caf=C3=A9?=",
           b"Subject:no space", b"Subject:   \t lots", b"subject: lower", b"X-Odd", b": no name", b"\tstray",
           b"Message-ID: <a@b>", b"Content-Type: MULTIPART/Mixed; boundary=x", b"Content-Type: text",
           b"Content-Type: text/calendar/x", b"Content-Type:  text/Calendar ;method=REQUEST", b"Date: bad",
           b"Name With Space: x", b"Cc:", b"Cc: \"Last, First\" <f@l>", b"From x@y Mon Jan 1", b"To: caf\xc3\xa9@x",
           b"", b"X-Syncengine-Delivery:  tag  ", b"Resent-Date: Mon, 2 Mar 2026 10:00:00 +0000"]


def test_picked_header_fields_equal_the_email_parsers_on_odd_blocks():
    """The fast field picker against compat32 on 3,000 seeded blocks of awkward lines
    (stray continuations, names with spaces, empty values, 8-bit bytes, "From " lines)."""
    import random

    rng = random.Random(25)
    picked = plain = 0
    for _ in range(3000):
        ending = rng.choice([b"\n", b"\r\n", b"\r"])
        head = ending.join(rng.choice(_PIECES) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5:
            head += ending
        found = eml.fields(head)
        plain += head.isascii() and eml._PLAIN_BLOCK.fullmatch(head.decode("ascii")) is not None
        if found is not None:
            picked += 1
            assert found == eml._parsed_fields(head), head
        if head.strip() and b":" in eml.header_block(head):
            try:
                record = eml.parse(head, "x", "Inbox", "inbox")
            except eml.EmlError:
                with pytest.raises(eml.EmlError):
                    _whole_message_record_or_error(head)
            else:
                assert record == _whole_message_record(head), head
    assert picked > 1500  # most blocks are picked; the rest are the parser's
    assert plain > 200    # and many of those in one regex pass


def _whole_message_record_or_error(data: bytes) -> Record:
    message = BytesParser(policy=policy.compat32).parsebytes(eml.header_block(data), headersonly=True)
    if not message.keys():
        raise eml.EmlError("no header fields")
    return _whole_message_record(data)


def test_a_record_row_gives_the_record_back_field_for_field():
    """Workers send a clean read as its row; the writer stages rows in this order."""
    import dataclasses

    record = Record("l", "f", "inbox", "m@x", "mime", 5, "s", "a@b", "c@d", "id:r", "IPM.Note", "tag")
    assert record.row() == tuple(getattr(record, f.name) for f in dataclasses.fields(Record))
    assert Record(*record.row()) == record
