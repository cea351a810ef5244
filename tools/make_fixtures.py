"""Write the generated mailbox fixtures under fixtures/mailboxes/.

    python tools/make_fixtures.py            # (re)write fixtures/mailboxes
    python tools/make_fixtures.py --out DIR  # somewhere else

EML files come from the standard library, MSG files from aspose-email-foss. Next to
each tree, `<name>.expected.json` lists every file's fingerprint fields as the spec
below defines them, so the index tests compare what the readers recover with what
was written. The same `write_message` is used by the benchmark to make large trees.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from aspose.email_foss.msg import (
    CommonMessagePropertyId, MapiMessage, MapiNamedProperty,
    PropertyTypeCode,
)

PS_INTERNET_HEADERS = "00020386-0000-0000-c000-000000000046"
PR_CLIENT_SUBMIT_TIME = 0x0039  # not among aspose-email-foss's named tags
PR_CONVERSATION_INDEX = 0x0071
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Spec:
    path: str                          # relative to the tree root
    subject: str
    sender: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    message_id: str | None = None      # with brackets, as written
    date: str | None = "2026-03-02T07:00:00Z"
    message_class: str = "IPM.Note"    # for MSG; EML derives it from text/calendar
    resent_message_id: str | None = None
    resent_date: str | None = None
    delivery: str | None = None        # X-Syncengine-Delivery
    delivery_as_named_property: bool = False  # MSG: named property only, no header
    mid_in_headers_only: bool = False  # MSG: no 0x1035, Message-ID only in 0x007D
    calendar: str | None = None        # EML: a text/calendar body part (ICS text)


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def email_message(spec: Spec) -> EmailMessage:
    message = EmailMessage()
    if spec.message_id:
        message["Message-ID"] = spec.message_id
    message["From"] = spec.sender
    message["To"] = ", ".join(spec.to)
    if spec.cc:
        message["Cc"] = ", ".join(spec.cc)
    message["Subject"] = spec.subject
    if spec.date:
        message["Date"] = format_datetime(_ts(spec.date))
    if spec.resent_message_id:
        message["Resent-Message-ID"] = spec.resent_message_id
    if spec.resent_date:
        message["Resent-Date"] = format_datetime(_ts(spec.resent_date))
    if spec.delivery and not spec.delivery_as_named_property:
        message["X-Syncengine-Delivery"] = spec.delivery
    if spec.calendar:
        message.set_content("See the invitation.")
        message.add_alternative(spec.calendar.encode(), maintype="text", subtype="calendar",
                                params={"method": "REQUEST"})
        message.set_boundary("==" + _digest(spec, 16) + "==")  # stable bytes when regenerated
    else:
        message.set_content("Hello.\n")
    return message


def _digest(spec: Spec, length: int) -> str:
    return hashlib.sha256(f"{spec.path}|{spec.subject}|{spec.message_id}".encode()).hexdigest()[:length]


def write_message(spec: Spec, root: Path) -> Path:
    target = root / spec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    message = email_message(spec)
    if target.suffix == ".eml":
        target.write_bytes(bytes(message))
        return target
    mapi = MapiMessage.from_email_message(message)
    mapi.message_class = spec.message_class
    # A received message keeps its whole header block in 0x007D; the converter drops
    # the address and id fields from it, which real stores do not.
    header_block = bytes(message).split(b"\n\n", 1)[0].decode() + "\r\n\r\n"
    mapi.set_property(CommonMessagePropertyId.TRANSPORT_MESSAGE_HEADERS, PropertyTypeCode.PTYP_STRING,
                      header_block)
    if spec.date:
        mapi.set_property(PR_CLIENT_SUBMIT_TIME, PropertyTypeCode.PTYP_TIME, _ts(spec.date))
    if spec.date is None:  # the converter stamps "now" into the conversation index otherwise
        mapi.set_property(PR_CONVERSATION_INDEX, PropertyTypeCode.PTYP_BINARY,
                          b"\x01" + bytes.fromhex(_digest(spec, 42)))
    if spec.mid_in_headers_only:
        mapi.properties.remove(int(CommonMessagePropertyId.INTERNET_MESSAGE_ID))
    if spec.delivery_as_named_property:
        mapi.set_named_property(MapiNamedProperty.string("X-Syncengine-Delivery", PS_INTERNET_HEADERS),
                                PropertyTypeCode.PTYP_STRING, spec.delivery)
    mapi.save(target)
    return target


def expected(spec: Spec) -> dict:
    """The fingerprint fields the index must recover (normalised as continuity.md says)."""
    mid = spec.message_id.strip().strip("<>") if spec.message_id else None
    if spec.resent_message_id:
        resent = "id:" + spec.resent_message_id.strip().strip("<>")
    elif spec.resent_date:
        resent = f"date:{int(_ts(spec.resent_date).timestamp())}"
    else:
        resent = None
    if spec.path.endswith(".eml") and spec.calendar:
        cls = "IPM.Schedule.Meeting.Request" if "METHOD:REQUEST" in spec.calendar else "IPM.Schedule.Meeting.Resp.Pos"
    elif spec.path.endswith(".eml"):
        cls = "IPM.Note"
    else:
        cls = spec.message_class
    source = None
    if mid:
        source = "headers" if spec.mid_in_headers_only else ("mime" if spec.path.endswith(".eml") else "mapi")
    return {
        "message_id": mid, "mid_source": source,
        "submit_ts": int(_ts(spec.date).timestamp()) if spec.date else None,
        "subject": spec.subject, "sender": spec.sender.lower(),
        "recipients": "\t".join(sorted({a.lower() for a in spec.to + spec.cc})),
        "resent_key": resent, "message_class": cls, "delivery_tag": spec.delivery,
    }


ICS_REQUEST = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Planning\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
ICS_REPLY = ("BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@acme.example"
             "\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
ALICE, BOB = "alice@acme.example", "bob@example.org"

ALICE_TREE = [
    Spec("Inbox/plain.eml", "Quarterly numbers", BOB, [ALICE], message_id="<q3@mail.example>"),
    Spec("Inbox/plain.msg", "Budget review", BOB, [ALICE], cc=["carol@acme.example"],
         message_id="<budget@mail.example>", date="2026-03-01T10:15:30Z"),
    Spec("Inbox/headers-only-mid.msg", "Id in transport headers", BOB, [ALICE],
         message_id="<hdr-only@mail.example>", mid_in_headers_only=True),
    Spec("Inbox/no-mid-1.eml", "No id  at ALL", BOB, [ALICE], date="2026-03-01T09:00:00Z"),
    Spec("Inbox/no-mid-2.eml", "No id  at ALL", BOB, [ALICE], date="2026-03-01T09:00:00Z"),
    Spec("Inbox/no-mid.msg", "Unsent note", ALICE, [BOB], date=None),
    Spec("Inbox/stamped-1.eml", "Ticket 1", "noreply@app.example", [ALICE],
         message_id="<same@app.example>", date="2026-03-01T08:00:00Z"),
    Spec("Inbox/stamped-2.eml", "Ticket 2", "noreply@app.example", [ALICE],
         message_id="<same@app.example>", date="2026-03-01T11:00:00Z"),
    Spec("Inbox/resent.eml", "Quarterly numbers", BOB, [ALICE], message_id="<q3@mail.example>",
         resent_message_id="<resend-1@mail.example>"),
    Spec("Inbox/resent-date.msg", "Quarterly numbers", BOB, [ALICE], message_id="<q3@mail.example>",
         resent_date="2026-03-02T07:30:00Z"),
    Spec("Inbox/smime.msg", "Signed", BOB, [ALICE], message_id="<signed@mail.example>",
         message_class="IPM.Note.SMIME.MultipartSigned"),
    Spec("Inbox/meeting-request.eml", "Planning", BOB, [ALICE], message_id="<plan@mail.example>",
         calendar=ICS_REQUEST),
    Spec("Inbox/meeting-reply.eml", "Accepted: Planning", "carol@acme.example", [ALICE],
         message_id="<plan-reply@mail.example>", calendar=ICS_REPLY),
    Spec("Inbox/delivered-header.eml", "Delivered by continuity", BOB, [ALICE],
         message_id="<cont-1@mail.example>", delivery="ev1/17"),
    Spec("Inbox/delivered-named.msg", "Delivered by continuity too", BOB, [ALICE],
         message_id="<cont-2@mail.example>", delivery="ev1/18", delivery_as_named_property=True),
    Spec("Inbox/Projects/Q4/nested.eml", "Deep folder", BOB, [ALICE], message_id="<deep@mail.example>"),
    Spec("Inbox/self.eml", "Note to self", ALICE, [ALICE], message_id="<self@acme.example>"),
    Spec("Sent Items/self.eml", "Note to self", ALICE, [ALICE], message_id="<self@acme.example>"),
    Spec("Sent Items/reply.msg", "RE: Budget review", ALICE, [BOB], message_id="<re-budget@acme.example>",
         date="2026-03-01T10:20:00Z"),
    Spec("Sync Issues/Conflicts/conflict.msg", "Conflict", ALICE, [ALICE], message_id="<conflict@acme.example>"),
    Spec("Deleted Items/old.msg", "Old news", BOB, [ALICE], message_id="<old@mail.example>",
         date="2026-02-01T12:00:00Z"),
    Spec("Outbox/pending.msg", "Going out", ALICE, [BOB], message_id="<pending@acme.example>", date=None),
    Spec("Calendar/appointment.msg", "Dentist", ALICE, [ALICE], message_class="IPM.Appointment",
         message_id="<appt@acme.example>"),
]


def write_tree(specs: list[Spec], root: Path) -> dict:
    if root.exists():
        shutil.rmtree(root)
    for spec in specs:
        write_message(spec, root)
    return {spec.path: expected(spec) for spec in specs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "mailboxes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = write_tree(ALICE_TREE, args.out / "alice")
    (args.out / "alice.expected.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(manifest)} messages under {args.out / 'alice'}")


if __name__ == "__main__":
    main()
