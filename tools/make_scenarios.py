"""Write the replay scenario library under fixtures/scenarios/ (and the bundled demo).

    python tools/make_scenarios.py

Each scenario is named for the rule(s) it exercises and carries `expect`: the whole
delta log it must produce, worked out by hand from continuity.md. Messages, their
snapshot entries and the entries' content all come from one `Spec` (make_fixtures),
so a scenario cannot disagree with itself. Scenarios built on a corpus PST/OST list
it in `corpus-files.json`; tests copy it in at run time (corpus files are not
committed).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from email.utils import format_datetime

from make_fixtures import Spec, _ts, email_message, write_message

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "scenarios"
DAY = datetime(2026, 3, 2, tzinfo=timezone.utc)


def t(hhmmss: str) -> str:
    """A time on the scenario day, e.g. t('09:00:30')."""
    h, m, s = (int(x) for x in (hhmmss.split(":") + ["0"])[:3])
    return (DAY + timedelta(hours=h, minutes=m, seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def mimecast_time(iso: str) -> str:
    return iso.replace("Z", "+0000")


class Scenario:
    def __init__(self, name: str, **settings):
        self.name = name
        self.settings = {"poll_interval": 60, "post_event_window": 600, "calendar_items": True, **settings}
        self.mailboxes: dict[str, list[Spec] | str | None] = {}
        self.exports: dict[str, list[Spec]] = {}
        self.corpus: dict[str, str] = {}
        self.timeline: list[dict] = []
        self.expect: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.directory: dict | None = None
        self.until = t("10:00")
        self.exact = True

    # mailboxes and directory
    def mailbox(self, address: str, specs: list[Spec]) -> "Scenario":
        self.mailboxes[address] = specs
        return self

    def no_local_mail(self, address: str) -> "Scenario":
        """A mailbox declared to have no local mail at all (C19): no export."""
        self.mailboxes[address] = None
        return self

    def corpus_mailbox(self, address: str, corpus_file: str) -> "Scenario":
        name = "mailbox/" + Path(corpus_file).name
        self.mailboxes[address] = name
        self.corpus[name] = corpus_file
        return self

    def with_directory(self, users=(), groups=None, delegates=(), synced="06:00") -> "Scenario":
        self.directory = _directory(users, groups or {}, delegates, synced)
        return self

    # timeline
    def snapshot(self, at: str, address: str, entries: list[dict], kind: str = "mailbox",
                 pages: list[dict] | None = None, name: str | None = None) -> "Scenario":
        folder = f"snapshots/{name or (address.split('@')[0] + '-' + at.replace(':', ''))}"
        if pages is None:
            pages = [page(address, entries, kind)]
        for item in (e for p in pages if isinstance(p, dict) for e in p["data"]):
            spec = item.pop("_spec", None)
            if spec is not None:
                self.files[f"{folder}/{item['content']}"] = bytes(email_message(spec))
        for number, body in enumerate(pages, start=1):
            file = "snapshot.json" if len(pages) == 1 else f"snapshot-{number:04d}.json"
            data = body if isinstance(body, bytes) else json.dumps(body, indent=1).encode()
            self.files[f"{folder}/{file}"] = data
        return self._step(at, "snapshot", path=folder)

    def missing_snapshot(self, at: str) -> "Scenario":
        return self._step(at, "snapshot", path="snapshots/does-not-exist")

    def start(self, at: str, event: str, mailboxes: list[str], expand: bool = False,
              no_local_mail: list[str] = ()) -> "Scenario":
        fields = {"no_local_mail": list(no_local_mail)} if no_local_mail else {}
        return self._step(at, "start_event", event=event, mailboxes=mailboxes, expand_distribution_lists=expand,
                          **fields)

    def add_export(self, at: str, mailbox: str, name: str, specs: list[Spec]) -> "Scenario":
        """An export (a folder tree of `specs`) declared and read at `at` (C19 late coverage)."""
        self.exports[f"exports/{name}"] = specs
        return self._step(at, "add_export", mailbox=mailbox, path=f"exports/{name}")

    def end(self, at: str, event: str) -> "Scenario":
        return self._step(at, "end_event", event=event)

    def exchange(self, at: str, mailbox: str, folder: str, spec: Spec, name: str | None = None) -> "Scenario":
        path = f"exchange/{name or Path(spec.path).name}"
        self.files[path] = _message_bytes(spec, path)
        return self._step(at, "exchange_deliver", mailbox=mailbox, folder=folder, path=path)

    def outbox(self, at: str, mailbox: str, spec: Spec) -> "Scenario":
        path = f"outbox/{Path(spec.path).name}"
        self.files[path] = _message_bytes(spec, path)
        return self._step(at, "outbox_add", mailbox=mailbox, path=path)

    def remove(self, at: str, mailbox: str, path: str) -> "Scenario":
        return self._step(at, "exchange_remove", mailbox=mailbox, path=path)

    def directory_sync(self, at: str, users=(), groups=None, delegates=(), synced="06:00",
                       name: str = "directory-2.json") -> "Scenario":
        self.files[name] = json.dumps(_directory(users, groups or {}, delegates, synced), indent=1).encode()
        return self._step(at, "directory_sync", path=name)

    def restart(self, at: str) -> "Scenario":
        return self._step(at, "restart")

    def _step(self, at: str, do: str, **fields) -> "Scenario":
        self.timeline.append({"at": t(at), "do": do, **fields})
        return self

    # expectations
    def expects(self, action: str, mailbox: str, message_id: str | None = None, source: str | None = None,
                folder: str | None = None) -> "Scenario":
        item = {"action": action, "mailbox": mailbox}
        for key, value in (("message_id", message_id), ("source", source), ("folder", folder)):
            if value is not None:
                item[key] = value
        self.expect.append(item)
        return self

    def write(self, root: Path) -> Path:
        folder = root / self.name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        mailboxes = []
        for address, content in self.mailboxes.items():
            if content is None:
                mailboxes.append({"address": address, "no_local_mail": True})
                continue
            if isinstance(content, str):
                mailboxes.append({"address": address, "export": content})
                continue
            export = f"mailbox/{address.split('@')[0]}"
            (folder / export).mkdir(parents=True, exist_ok=True)
            # git keeps no empty folder, and a missing export is waiting-for-index (C19):
            # an empty mailbox is a folder, kept by a dot-file the index passes over.
            if not content:
                (folder / export / ".keep").write_text("an empty mailbox export\n")
            for spec in content:
                write_message(spec, folder / export)
            mailboxes.append({"address": address, "export": export})
        for export, specs in self.exports.items():
            (folder / export).mkdir(parents=True, exist_ok=True)
            for spec in specs:
                write_message(spec, folder / export)
        for path, data in self.files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        doc = {"name": self.name, "settings": self.settings, "mailboxes": mailboxes}
        if self.directory is not None:
            (folder / "directory.json").write_text(json.dumps(self.directory, indent=1) + "\n")
            doc["directory"] = "directory.json"
        doc.update({"timeline": self.timeline, "until": self.until, "expect": self.expect})
        if not self.exact:
            doc["exact"] = False
        (folder / "scenario.json").write_text(json.dumps(doc, indent=1) + "\n")
        if self.corpus:
            (folder / "corpus-files.json").write_text(json.dumps(self.corpus, indent=1) + "\n")
            copies = "\n".join(f"    cp ../shared/corpus/{source} {folder.relative_to(ROOT)}/{dest}"
                               for dest, source in self.corpus.items())
            (folder / "README.md").write_text(
                f"# {self.name}\n\nBuilt on a real export from the shared corpus, which is not committed. "
                f"The tests copy it in; to replay by hand, from the repository root:\n\n{copies}\n")
        return folder


def _message_bytes(spec: Spec, path: str) -> bytes:
    if path.endswith(".msg"):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            return write_message(replace(spec, path=Path(path).name), Path(tmp)).read_bytes()
    return bytes(email_message(spec))


def _directory(users, groups, delegates, synced) -> dict:
    """users: addresses, or (address, [aliases]); groups: {group: [members]}, a member
    that is itself a key of `groups` is a nested list."""
    def user(item):
        address, aliases = (item, []) if isinstance(item, str) else item
        return {"emailAddress": address, "aliases": list(aliases)}
    return {"synced": t(synced), "users": [user(u) for u in users],
            "groups": [{"emailAddress": g, "groupMembers": [
                {"emailAddress": m, "type": "group" if m in groups else "user"} for m in members]}
                for g, members in groups.items()],
            "delegates": [{"mailbox": m, "delegate": d} for m, d in delegates]}


def page(address: str, entries: list[dict], kind: str = "mailbox", status: int = 200, fail=()) -> dict:
    return {"meta": {"status": status, "snapshot": {"address": address, "kind": kind, "taken": t("08:00")},
                     "pagination": {"pageSize": 500}},
            "data": entries, "fail": list(fail)}


def entry(entry_id: str, spec: Spec, content: bool = True, **fields) -> dict:
    """A snapshot entry for the message `spec`, as the Mimecast API shapes it."""
    data = {"id": entry_id, "status": "ARCHIVED", "expired": False,
            "received": mimecast_time(spec.date) if spec.date else t("08:00"),
            "from": {"emailAddress": spec.sender, "displayableName": spec.sender.split("@")[0]},
            "to": [{"emailAddress": a, "displayableName": a.split("@")[0]} for a in spec.to],
            "cc": [{"emailAddress": a, "displayableName": a.split("@")[0]} for a in spec.cc],
            "subject": spec.subject, "size": 2000, "attachmentCount": 0}
    if spec.date:
        data["headerDate"] = mimecast_time(spec.date)
    if spec.message_id:
        data["mimeMessageId"] = spec.message_id
    headers = []
    if spec.resent_message_id:
        headers.append({"name": "Resent-Message-ID", "values": [spec.resent_message_id]})
    if spec.resent_date:  # header values come raw, as RFC 5322 writes them
        headers.append({"name": "Resent-Date", "values": [format_datetime(_ts(spec.resent_date))]})
    if headers:
        data["headers"] = headers
    if content:
        data["content"] = f"messages/{entry_id}.eml"
        data["_spec"] = spec
    data.update(fields)
    return data


ALICE, BOB, CAROL = "alice@acme.example", "bob@acme.example", "carol@acme.example"
EXT = "partner@example.org"


def mail(name: str, subject: str, at: str, sender: str = EXT, to=(ALICE,), folder: str = "Inbox", **kw) -> Spec:
    return Spec(f"{folder}/{name}.eml", subject, sender, list(to), message_id=f"<{name}@mail.example>",
                date=t(at), **kw)


def scenarios() -> list[Scenario]:
    made = []

    # --- C1 lifecycle and restarts, N1 durability ------------------------------------------------
    welcome, invoice, late = mail("welcome", "Welcome", "07:00"), mail("invoice", "Invoice 7", "08:50"), \
        mail("late", "Late news", "09:10")
    made.append(Scenario("c1-n1-lifecycle-with-restarts")
                .mailbox(ALICE, [welcome])
                .snapshot("08:55", ALICE, [entry("m1", welcome), entry("m2", invoice)])
                .restart("08:58")
                .start("09:00", "ev1", [ALICE])
                .restart("09:05:30")
                .snapshot("09:10:10", ALICE, [entry("m3", late)])
                .restart("09:10:40")
                .end("09:20", "ev1")
                .restart("09:25")
                .exchange("09:26", ALICE, "Inbox", late)
                .expects("deliver", ALICE, "<invoice@mail.example>", "mimecast:m2", "Inbox")
                .expects("deliver", ALICE, "<late@mail.example>", "mimecast:m3", "Inbox")
                .expects("purge", ALICE, "<late@mail.example>", "local:Inbox/late.eml", "Inbox"))

    # --- C2 several mailboxes in one event -------------------------------------------------------
    for_bob = mail("for-bob", "Hello Bob", "08:40", to=[BOB])
    made.append(Scenario("c2-two-mailboxes-one-event")
                .mailbox(ALICE, [welcome]).mailbox(BOB, [])
                .snapshot("08:55", ALICE, [entry("a1", welcome), entry("a2", invoice)])
                .snapshot("08:55", BOB, [entry("b1", for_bob)])
                .start("09:00", "ev1", [ALICE, BOB])
                .snapshot("09:03:20", BOB, [entry("b2", late)])
                .end("09:30", "ev1")
                .expects("deliver", ALICE, "<invoice@mail.example>")
                .expects("deliver", BOB, "<for-bob@mail.example>")
                .expects("deliver", BOB, "<late@mail.example>"))

    # --- C3 reconcile across every received-mail folder -------------------------------------------
    in_deleted = mail("in-deleted", "Old thread", "07:10", folder="Deleted Items")
    in_junk = mail("in-junk", "Offer", "07:20", folder="Junk Email")
    in_custom = mail("in-custom", "Project X", "07:30", folder="Inbox/Projects")
    in_sync = mail("in-sync", "Conflict copy", "07:35", folder="Sync Issues")
    self_note = mail("self-note", "Note to self", "07:40", sender=ALICE, folder="Sent Items")
    draft = mail("draft", "Unfinished", "07:45", sender=ALICE, folder="Drafts")
    fresh = mail("fresh", "Fresh", "08:30")
    made.append(Scenario("c3-reconcile-every-received-folder")
                .mailbox(ALICE, [in_deleted, in_junk, in_custom, in_sync, self_note, draft])
                .snapshot("08:59", ALICE, [entry(n, s) for n, s in (("d", in_deleted), ("j", in_junk),
                          ("c", in_custom), ("s", in_sync), ("n", self_note), ("r", draft), ("f", fresh))])
                .start("09:00", "ev1", [ALICE])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<in-sync@mail.example>", "mimecast:s")
                .expects("deliver", ALICE, "<self-note@mail.example>", "mimecast:n")
                .expects("deliver", ALICE, "<draft@mail.example>", "mimecast:r")
                .expects("deliver", ALICE, "<fresh@mail.example>", "mimecast:f"))

    # --- C4 identity: id plus submit time; stamped ids; unknown times ------------------------------
    stamped_local = Spec("Inbox/stamped.eml", "Ticket 1", "noreply@app.example", [ALICE],
                         message_id="<same@app.example>", date=t("07:00"))
    stamped_other = replace(stamped_local, path="x/stamped-2.eml", subject="Ticket 2", date=t("08:30"))
    near = replace(stamped_local, path="x/near.eml", date=t("07:02"))          # 120 s: inclusive
    past = replace(stamped_local, path="x/past.eml", date=t("07:02:01"))       # 121 s: another message
    undated_local = Spec("Inbox/undated.eml", "Minutes", EXT, [ALICE], message_id="<undated@mail.example>", date=None)
    undated_same = replace(undated_local, date=t("08:00"))
    undated_other = replace(undated_local, subject="Minutes v2", date=t("08:00"))
    made.append(Scenario("c4-id-and-submit-time")
                .mailbox(ALICE, [stamped_local, undated_local])
                .snapshot("08:59", ALICE, [entry("s0", stamped_local), entry("s1", near), entry("s2", past),
                                            entry("s3", stamped_other), entry("u1", undated_same)])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:04", ALICE, [entry("u2", undated_other)])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<same@app.example>", "mimecast:s2")
                .expects("deliver", ALICE, "<same@app.example>", "mimecast:s3")
                .expects("deliver", ALICE, "<undated@mail.example>", "mimecast:u2"))

    # --- C5/C6 fallback key: unambiguous, ambiguous (two locations, two entries) --------------------
    plain = Spec("Inbox/nomid-1.eml", "Lunch?", "friend@example.org", [ALICE], date=t("08:00"))
    twin_a = Spec("Inbox/twin-a.eml", "Report", "robot@example.org", [ALICE], date=t("08:10"))
    twin_b = replace(twin_a, path="Deleted Items/twin-b.eml")
    rival = Spec("Inbox/rival.eml", "Status", "robot@example.org", [ALICE], date=t("08:20"))
    rival_entry_1 = replace(rival, date=t("08:20:50"))  # both within 60 s of the local copy,
    rival_entry_2 = replace(rival, date=t("08:19:10"))  # 100 s from each other: two messages
    far = replace(plain, date=t("08:01:01"))  # 61 s: no fallback match
    made.append(Scenario("c5-c6-fallback-without-message-id")
                .mailbox(ALICE, [plain, twin_a, twin_b, rival])
                .snapshot("08:59", ALICE, [entry("p1", replace(plain, date=t("08:00:40"))),
                                            entry("t1", twin_a), entry("r1", rival_entry_1),
                                            entry("r2", rival_entry_2), entry("f1", far)])
                .start("09:00", "ev1", [ALICE])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, source="mimecast:t1")
                .expects("deliver", ALICE, source="mimecast:r1")
                .expects("deliver", ALICE, source="mimecast:r2")
                .expects("deliver", ALICE, source="mimecast:f1"))

    # --- C7 resent mail --------------------------------------------------------------------------
    original = mail("memo", "Memo", "07:00")
    resent = replace(original, resent_message_id="<resent-memo@mail.example>")
    resent_by_date = replace(original, resent_date=t("08:45"))
    local_resent = replace(original, path="Inbox/memo-resent-old.eml", resent_message_id="<resent-old@mail.example>")
    made.append(Scenario("c7-resent-mail")
                .mailbox(ALICE, [original, local_resent])
                .snapshot("08:59", ALICE, [entry("o1", original), entry("o2", resent), entry("o3", resent_by_date),
                                            entry("o4", local_resent)])
                .start("09:00", "ev1", [ALICE])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<memo@mail.example>", "mimecast:o2")
                .expects("deliver", ALICE, "<memo@mail.example>", "mimecast:o3"))

    # --- C8/C9 polls: first poll at or after visibility, once per event, Inbox ----------------------
    news = mail("news", "News", "09:02")
    again = mail("again", "Again", "09:04")
    on_poll = mail("on-poll", "On the minute", "09:05")
    made.append(Scenario("c8-c9-polls-once-into-inbox")
                .mailbox(ALICE, [])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:02:01", ALICE, [entry("n1", news)])
                .snapshot("09:04", ALICE, [entry("a1", again), entry("n2", news)], name="alice-0904")
                .snapshot("09:05", ALICE, [entry("o1", on_poll), entry("a2", again)], name="alice-0905")
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<news@mail.example>", "mimecast:n1", "Inbox")
                .expects("deliver", ALICE, "<again@mail.example>", "mimecast:a1", "Inbox")
                .expects("deliver", ALICE, "<on-poll@mail.example>", "mimecast:o1", "Inbox"))

    # --- C10 classes, calendar items on and off ----------------------------------------------------
    classes = [("IPM.Note", True), ("IPM.Note.SMIME", True), ("ipm.note.smime.multipartsigned", True),
               ("IPM.Note.Rules.OofTemplate.Microsoft", False), ("IPM.Note.Rules.ReplyTemplate.Microsoft", False),
               ("IPM.Appointment", "cal"), ("IPM.Appointment.Occurrence", "cal"),
               ("IPM.Schedule.Meeting.Request", "cal"), ("IPM.Schedule.Meeting.Canceled", "cal"),
               ("IPM.Schedule.Meeting.Resp.Pos", "cal"), ("IPM.Schedule.Meeting.Resp.Neg", "cal"),
               ("IPM.Schedule.Meeting.Resp.Tent", "cal"), ("IPM.Contact", False), ("IPM.Task", False),
               ("REPORT.IPM.Note.NDR", False), ("IPM.StickyNote", False)]
    from make_fixtures import ICS_REPLY, ICS_REQUEST
    invite = Spec("x/invite.eml", "Planning", EXT, [ALICE], message_id="<invite@mail.example>", date=t("08:30"),
                  calendar=ICS_REQUEST)
    reply = Spec("x/reply.eml", "Accepted: Planning", EXT, [ALICE], message_id="<reply@mail.example>",
                 date=t("08:31"), calendar=ICS_REPLY)
    for calendar in (True, False):
        s = Scenario(f"c10-classes-calendar-{'on' if calendar else 'off'}", calendar_items=calendar).mailbox(ALICE, [])
        entries = []
        for number, (cls, kind) in enumerate(classes):
            spec = mail(f"class-{number}", f"Class {cls}", f"08:{number:02d}")
            entries.append(entry(f"k{number}", spec, messageClass=cls))
            if kind is True or (kind == "cal" and calendar):
                s.expects("deliver", ALICE, f"<class-{number}@mail.example>", f"mimecast:k{number}")
            else:
                s.expects("defer", ALICE, f"<class-{number}@mail.example>", f"mimecast:k{number}")
        entries += [entry("ics1", invite), entry("ics2", reply)]  # class from the text/calendar part
        for name in ("invite", "reply"):
            s.expects("deliver" if calendar else "defer", ALICE, f"<{name}@mail.example>")
        made.append(s.snapshot("08:59", ALICE, entries).start("09:00", "ev1", [ALICE]).end("09:10", "ev1"))

    # --- C11 statuses ------------------------------------------------------------------------------
    statuses = [("ARCHIVED", "deliver"), ("active", "deliver"), ("Delivered", "deliver"), (None, "deliver"),
                ("HELD", None), ("REJECTED", None), ("bounced", None), ("QUARANTINED", None),
                ("PENDING-REVIEW", "defer")]
    s = Scenario("c11-statuses-held-and-expired").mailbox(ALICE, [])
    entries = []
    for number, (status, action) in enumerate(statuses):
        spec = mail(f"status-{number}", f"Status {status}", f"08:{number:02d}")
        fields = {"status": status} if status else {}
        item = entry(f"s{number}", spec, **fields)
        if status is None:
            item.pop("status")
        entries.append(item)
        if action:
            s.expects(action, ALICE, f"<status-{number}@mail.example>")
    entries.append(entry("x1", mail("expired", "Expired", "08:30"), expired=True))
    made.append(s.snapshot("08:59", ALICE, entries).start("09:00", "ev1", [ALICE]).end("09:10", "ev1"))

    # --- C12 Exchange copies during the event -----------------------------------------------------------
    delivered = mail("during", "During", "09:01")
    early = mail("early", "Early copy", "09:03")
    ours = Spec("Inbox/ours.eml", "During", EXT, [ALICE], message_id="<during@mail.example>", date=t("09:01"),
                delivery="ev1/1")
    made.append(Scenario("c12-exchange-copies-during-event")
                .mailbox(ALICE, [])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:01:30", ALICE, [entry("d1", delivered)])
                .exchange("09:03", ALICE, "Inbox", early)             # before Mimecast has it: present
                .snapshot("09:03:30", ALICE, [entry("e1", early)], name="alice-early")
                .exchange("09:05", ALICE, "Inbox", ours, name="ours.eml")   # our own delivery coming back
                .exchange("09:06", ALICE, "Sent Items", delivered, name="during-sent.eml")  # not received mail
                .exchange("09:07", ALICE, "Inbox/Projects", delivered, name="during-copy.eml")
                .end("09:20", "ev1")
                .expects("deliver", ALICE, "<during@mail.example>", "mimecast:d1")
                .expects("purge", ALICE, "<during@mail.example>", "local:Inbox/Projects/during-copy.eml",
                         "Inbox/Projects"))

    # --- C12 with exchange_remove: the client deletes a purged copy; Exchange delivers it again -----------
    again = mail("again", "Again and again", "09:01")
    made.append(Scenario("c12-purged-copy-removed-and-delivered-again")
                .mailbox(ALICE, [])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:01:30", ALICE, [entry("g1", again)])
                .exchange("09:03", ALICE, "Inbox", again)
                .remove("09:03:30", ALICE, "exchange/again.eml")   # the client applied the purge
                .exchange("09:05", ALICE, "Inbox", again)          # Exchange retries the delivery
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<again@mail.example>", "mimecast:g1")
                .expects("purge", ALICE, "<again@mail.example>", "local:Inbox/again.eml")
                .expects("purge", ALICE, "<again@mail.example>", "local:Inbox/again.eml"))

    # --- C13 Outbox --------------------------------------------------------------------------------------
    queued = Spec("Outbox/queued.eml", "Queued before", ALICE, [EXT], message_id="<queued@acme.example>", date=None)
    already = Spec("Outbox/already.eml", "Already sent", ALICE, [EXT], message_id="<already@acme.example>",
                   date=t("08:00"))
    already_sent = replace(already, path="Sent Items/already.eml")
    written = Spec("reply.msg", "RE: Invoice", ALICE, [EXT], message_id="<reply-1@acme.example>", date=None)
    task = Spec("task.msg", "A task", ALICE, [ALICE], message_id="<task@acme.example>", date=None,
                message_class="IPM.Task")
    made.append(Scenario("c13-outbox-sends-exactly-once")
                .mailbox(ALICE, [queued, already, already_sent])
                .start("09:00", "ev1", [ALICE])
                .outbox("09:05", ALICE, written)
                .restart("09:05:30")
                .outbox("09:06", ALICE, task)
                .end("09:10", "ev1")
                .outbox("09:11", ALICE, replace(written, path="late.msg", message_id="<late-1@acme.example>"))
                .expects("send", ALICE, "<queued@acme.example>", "local:Outbox/queued.eml", "Outbox")
                .expects("send", ALICE, "<reply-1@acme.example>", "local:Outbox/reply.msg", "Outbox")
                .expects("defer", ALICE, "<task@acme.example>", "local:Outbox/task.msg"))

    # --- C14/C15/N2 after the event, index lag, never purge what is uncertain -------------------------------
    d1, d2, d3 = mail("late-1", "One", "09:02"), mail("late-2", "Two", "09:03"), mail("late-3", "Three", "09:04")
    lagged = mail("lagged", "Lagged", "08:58")
    no_id = Spec("x/noid.eml", "No id", EXT, [ALICE], date=t("09:05"))
    undated = Spec("x/undated-copy.eml", "Undated", EXT, [ALICE], message_id="<undated-copy@mail.example>",
                   date=t("09:06"))
    made.append(Scenario("c14-c15-n2-post-event-window")
                .mailbox(ALICE, [])
                .snapshot("08:59", ALICE, [entry("l1", lagged)])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:05:10", ALICE, [entry("x1", d1), entry("x2", d2), entry("x3", d3), entry("x4", no_id),
                                               entry("x5", undated)])
                .exchange("09:08", ALICE, "Inbox", lagged)  # C15: Exchange's copy indexed after delivery
                .end("09:20", "ev1")
                .exchange("09:25", ALICE, "Deleted Items", d1)   # C14: any received folder in the window
                .exchange("09:27", ALICE, "Inbox", no_id)        # N2: fallback match never purges
                .exchange("09:28", ALICE, "Inbox", replace(undated, date=None))  # N2: unknown time never purges
                .exchange("09:29", ALICE, "Sent Items", d2)      # not received mail
                .exchange("09:31", ALICE, "Inbox", d3)           # after the window
                .expects("deliver", ALICE, "<lagged@mail.example>")
                .expects("deliver", ALICE, "<late-1@mail.example>")
                .expects("deliver", ALICE, "<late-2@mail.example>")
                .expects("deliver", ALICE, "<late-3@mail.example>")
                .expects("deliver", ALICE, source="mimecast:x4")
                .expects("deliver", ALICE, "<undated-copy@mail.example>")
                .expects("purge", ALICE, "<lagged@mail.example>", "local:Inbox/lagged.eml", "Inbox")
                .expects("purge", ALICE, "<late-1@mail.example>", "local:Deleted Items/late-1.eml", "Deleted Items"))

    # --- C16/C17 lists: nested, cycles, direct and through lists, option off, not retroactive ---------------
    users = [ALICE, BOB, CAROL]
    groups = {"all@acme.example": ["sales@acme.example", CAROL],
              "sales@acme.example": ["emea@acme.example"],
              "emea@acme.example": [ALICE, "all@acme.example"]}       # a cycle back to all@
    to_lists = mail("to-lists", "To every list", "08:40", to=["all@acme.example"])
    to_sales = mail("to-sales", "Sales only", "08:41", to=["sales@acme.example"])
    later_list = mail("later-list", "Later", "09:06", to=["support@acme.example"])
    for expand in (True, False):
        s = (Scenario(f"c16-c17-distribution-lists-{'on' if expand else 'off'}")
             .mailbox(ALICE, []).mailbox(BOB, [])
             .with_directory(users=users, groups=groups)
             .snapshot("08:59", ALICE, [entry("direct", to_lists)])
             .snapshot("08:59", "all@acme.example", [entry("via-all", to_lists)], kind="group")
             .snapshot("08:59", "sales@acme.example", [entry("via-sales", to_lists), entry("sales-1", to_sales)],
                       kind="group")
             .start("09:00", "ev1", [ALICE, BOB], expand=expand)
             .snapshot("09:05", "support@acme.example", [entry("sup-1", later_list)], kind="group")
             .directory_sync("09:05:30", users=users, groups={**groups, "support@acme.example": [ALICE, BOB]},
                             synced="09:05")
             .end("09:10", "ev1")
             .expects("deliver", ALICE, "<to-lists@mail.example>", "mimecast:direct"))
        if expand:
            s.expects("deliver", ALICE, "<to-sales@mail.example>", "mimecast:sales-1")
        made.append(s)

    # --- C18 a delegated mailbox: its owner's memberships, not the delegate's ----------------------------------
    bob_list = mail("bob-list", "For Bob's team", "08:40", to=["team-b@acme.example"])
    alice_list = mail("alice-list", "For Alice's team", "08:41", to=["team-a@acme.example"])
    made.append(Scenario("c18-delegated-mailbox")
                .mailbox(BOB, [])
                .with_directory(users=[ALICE, BOB], groups={"team-b@acme.example": [BOB],
                                                             "team-a@acme.example": [ALICE]},
                                delegates=[(BOB, ALICE)])
                .snapshot("08:59", "team-b@acme.example", [entry("tb", bob_list)], kind="group")
                .snapshot("08:59", "team-a@acme.example", [entry("ta", alice_list)], kind="group")
                .start("09:00", "ev1", [BOB], expand=True)
                .end("09:10", "ev1")
                .expects("deliver", BOB, "<bob-list@mail.example>", "mimecast:tb"))

    # --- N3 bad input: rejected pages and corrupt exports; the rest goes on ---------------------------------
    ok1, ok2, ok3 = mail("ok-1", "Fine 1", "08:10"), mail("ok-2", "Fine 2", "08:11"), mail("ok-3", "Fine 3", "08:12")
    bad = (Scenario("n3-bad-input-goes-on")
           .mailbox(ALICE, [welcome]))
    bad.files["mailbox/alice/Inbox/corrupt.msg"] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 200
    bad.files["mailbox/alice/Inbox/empty.eml"] = b""
    bad.snapshot("08:59", ALICE, [], pages=[
        page(ALICE, [entry("g1", ok1)]),
        page(ALICE, [entry("f1", mail("failed", "Failed page", "08:20"))], fail=[{"code": "err_xx", "message": "x"}]),
        page(ALICE, [entry("e1", mail("status500", "Bad status", "08:21"))], status=500),
        b'{"meta": {"status": 200, "snapshot": {"address": "alice@acme.example", "kind": "mailbox"}}, "data": [',
        page(ALICE, [{"id": "no-from", "received": t("08:22"), "subject": "x"}]),
        page(ALICE, [entry("bad-time", mail("badtime", "Bad time", "08:23"), received="yesterday")]),
        page(ALICE, [entry("g2", ok2)]),
    ])
    made.append(bad.start("09:00", "ev1", [ALICE])
                .snapshot("09:03", ALICE, [entry("g3", ok3)], name="alice-0903")
                .missing_snapshot("09:04")
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<ok-1@mail.example>")
                .expects("deliver", ALICE, "<ok-2@mail.example>")
                .expects("deliver", ALICE, "<ok-3@mail.example>"))

    # --- C19 index health: no decision against an index that is not whole ----------------------
    waiting = (Scenario("c19-waiting-for-index")
               .mailbox(BOB, [])
               .snapshot("08:55", ALICE, [entry("a1", welcome), entry("a2", invoice)])
               .snapshot("08:55", BOB, [entry("b1", for_bob)])
               .start("09:00", "ev1", [ALICE, BOB])
               .snapshot("09:03:20", ALICE, [entry("a3", late)])
               .end("09:10", "ev1")
               .expects("deliver", BOB, "<for-bob@mail.example>"))
    waiting.mailboxes[ALICE] = "mailbox/alice.ost"  # never there: alice waits, and nothing floods her
    made.append(waiting)
    made.append(Scenario("c19-export-under-an-alias")
                .with_directory(users=[(ALICE, ["a.smith@acme.example"])])
                .mailbox("a.smith@acme.example", [welcome])
                .snapshot("08:55", ALICE, [entry("m1", welcome), entry("m2", invoice)])
                .start("09:00", "ev1", [ALICE])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<invoice@mail.example>", "mimecast:m2"))

    # --- C5/C6: entries without a Message-ID are their Mimecast id (issue 26) -------------------------
    built = Spec("x/built.eml", "Build failed", "ci@example.org", [ALICE], date=t("08:40"))
    digest = Spec("Inbox/digest.eml", "Weekly digest", "robot@example.org", [ALICE], date=t("08:30"))
    made.append(Scenario("c5-c6-entries-without-message-id-are-their-mimecast-id")
                .mailbox(ALICE, [digest])
                .snapshot("08:59", ALICE, [entry("x1", built), entry("x2", built),      # two messages
                                            entry("y1", digest), entry("y2", digest)])  # both fit one local
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:02:30", ALICE, [entry("x1", built), entry("x3", built)], name="alice-again")
                .end("09:10", "ev1")
                .expects("deliver", ALICE, source="mimecast:x1")
                .expects("deliver", ALICE, source="mimecast:x2")
                .expects("deliver", ALICE, source="mimecast:y1")
                .expects("deliver", ALICE, source="mimecast:y2")
                .expects("deliver", ALICE, source="mimecast:x3"))

    # --- aliases on snapshot pages, and an entry listed again under an alias (issue 26) -------------------
    alias = "a.smith@acme.example"
    parking = Spec("Inbox/parking.eml", "Parking", "facilities@example.org", [ALICE], date=t("08:20"))
    first, second = mail("page-1", "On the first page", "08:30"), mail("page-2", "On the second page", "08:31")
    made.append(Scenario("c5-alias-pages-and-a-relisted-entry")
                .with_directory(users=[(ALICE, [alias])])
                .mailbox(ALICE, [parking])
                .snapshot("08:59", ALICE, [], pages=[page(ALICE, [entry("k1", parking), entry("n1", first)]),
                                                     page(alias, [entry("n2", second)])])
                .start("09:00", "ev1", [ALICE])
                .snapshot("09:03:30", alias, [entry("k1", parking)], name="alias-again")
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<page-1@mail.example>", "mimecast:n1")
                .expects("deliver", ALICE, "<page-2@mail.example>", "mimecast:n2"))

    # --- C5 fallback key with aliases on either side (issue 17) --------------------------------------
    robert = "robert@acme.example"
    desk = Spec("Inbox/desk.eml", "Desk move", "facilities@example.org", [alias], date=t("08:10"))
    lunch = Spec("Inbox/lunch.eml", "Lunch", robert, [ALICE], date=t("08:20"))
    control = mail("control", "Not in the mailbox", "08:40")
    made.append(Scenario("c5-aliases-in-the-fallback-key")
                .with_directory(users=[(ALICE, [alias]), (BOB, [robert])])
                .mailbox(ALICE, [desk, lunch])
                .snapshot("08:59", ALICE, [entry("d1", replace(desk, to=[ALICE])),
                                            entry("l1", replace(lunch, sender=BOB)), entry("c1", control)])
                .start("09:00", "ev1", [ALICE])
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<control@mail.example>", "mimecast:c1"))

    # --- C19: what vanished in one event does not count in a later one (issue 26) -----------------------
    removed, binned = mail("removed", "Removed later", "09:04"), mail("binned", "Binned", "09:06")
    made.append(Scenario("c19-copy-removed-before-a-later-event")
                .mailbox(ALICE, [])
                .start("09:00", "ev1", [ALICE])
                .exchange("09:05", ALICE, "Inbox", removed)
                .remove("09:06", ALICE, "exchange/removed.eml")
                .exchange("09:07", ALICE, "Deleted Items", binned)
                .end("09:10", "ev1")
                .remove("09:15", ALICE, "exchange/binned.eml")      # in the post-event window
                .snapshot("09:29", ALICE, [entry("r1", removed), entry("b1", binned)])
                .start("09:30", "ev2", [ALICE])
                .end("09:40", "ev2")
                .expects("deliver", ALICE, "<removed@mail.example>", "mimecast:r1")
                .expects("deliver", ALICE, "<binned@mail.example>", "mimecast:b1"))

    # --- C12: only a tag naming our own delivery of that message shields a copy (issues 17, 26) ------------
    tagged = [mail(f"tag-{n}", f"Tagged {n}", "09:00:10") for n in range(1, 6)]
    tags = ["ev1/1", "ev0/2", "ev1/999", "not a tag", "ev1/1"]  # ours; another event; no such seq;
    forged = (Scenario("c12-only-our-own-delivery-tags-shield")          # malformed; another message's
              .mailbox(ALICE, [])
              .start("09:00", "ev1", [ALICE])
              .snapshot("09:00:30", ALICE, [entry(f"t{n}", spec) for n, spec in enumerate(tagged, start=1)]))
    for spec, tag in zip(tagged, tags):
        forged.exchange("09:03", ALICE, "Inbox", replace(spec, delivery=tag))
    forged.end("09:10", "ev1")
    for n, spec in enumerate(tagged, start=1):
        forged.expects("deliver", ALICE, spec.message_id, f"mimecast:t{n}")
    for spec in tagged[1:]:
        forged.expects("purge", ALICE, spec.message_id, f"local:Inbox/{Path(spec.path).name}")
    made.append(forged)

    # --- C19: an export declared while an event covers its mailbox (issue 17) ---------------------------
    kept_ = mail("kept", "Kept", "07:00")
    archived = [mail(f"archived-{n}", f"Old thread {n}", "06:00", folder="Archive") for n in range(1, 4)]
    fresh = mail("fresh", "Fresh", "09:04")
    made.append(Scenario("c19-export-declared-mid-event")
                .mailbox(ALICE, [kept_])
                .snapshot("08:59", ALICE, [entry("k1", kept_), entry("a3", archived[2])])
                .start("09:00", "ev1", [ALICE])                  # a3: not in the mailbox as known now
                .snapshot("09:04:30", ALICE, [entry("a1", archived[0]), entry("a2", archived[1]),
                                               entry("f1", fresh)], name="alice-0904")
                .add_export("09:04:40", ALICE, "archive", archived)  # a baseline: a3 is never purged
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<archived-3@mail.example>", "mimecast:a3")
                .expects("deliver", ALICE, "<fresh@mail.example>", "mimecast:f1"))

    # --- C19: a mailbox with no export waits unless it is declared to have no local mail ---------------
    newcomer = mail("welcome-aboard", "Welcome aboard", "08:30", to=[BOB])
    made.append(Scenario("c19-no-local-mail-declared-or-waiting")
                .no_local_mail(ALICE)
                .snapshot("08:55", ALICE, [entry("a1", welcome)])
                .snapshot("08:55", BOB, [entry("b1", newcomer)])
                .snapshot("08:55", CAROL, [entry("c1", replace(welcome, to=[CAROL]))])
                .start("09:00", "ev1", [ALICE, BOB, CAROL], no_local_mail=[BOB])  # carol: neither, she waits
                .end("09:10", "ev1")
                .expects("deliver", ALICE, "<welcome@mail.example>", "mimecast:a1")
                .expects("deliver", BOB, "<welcome-aboard@mail.example>", "mimecast:b1"))

    return made


def corpus_scenarios() -> list[Scenario]:
    """Scenarios over a real Exchange 2010 OST from the corpus (copied in by tests)."""
    # Two of the OST's Inbox messages, by their real Message-ID and submit time, plus new mail.
    known = Spec("x/known.eml", "first email to saqib", "saqib.razzaq@ex2010.local", ["saqib.razzaq@ex2010.local"],
                 message_id="<6AA62D7A1B3AC5449D53431FBEA2940219825C42@ex2010.ex2010.local>", date=t("09:00"))
    known = replace(known, date=datetime(2011, 4, 28, 11, 39, 15, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    new = Spec("x/new.eml", "After the outage began", "partner@example.org", ["saqib.razzaq@ex2010.local"],
               message_id="<new-in-ost@mail.example>", date=t("09:02"))
    box = "saqib.razzaq@ex2010.local"
    return [Scenario("c3-c12-exchange-ost")
            .corpus_mailbox(box, "pst/aspose-email-net__SampleOstFile.ost")
            .snapshot("08:59", box, [entry("k1", known), entry("n1", new)])
            .start("09:00", "ev1", [box])
            .exchange("09:04", box, "Inbox", new)
            .end("09:10", "ev1")
            .expects("deliver", box, "<new-in-ost@mail.example>", "mimecast:n1")
            .expects("purge", box, "<new-in-ost@mail.example>", "local:Inbox/new.eml")]


def demo() -> Scenario:
    """The README's first command: an outage unfolding for Alice."""
    kept = mail("kickoff", "Kick-off notes", "07:30")
    sent_only = mail("to-self", "Reminder to self", "08:10", sender=ALICE, folder="Sent Items")
    invoice_ = mail("invoice-88", "Invoice 88", "08:50", sender="billing@vendor.example")
    held = mail("suspicious", "You won a prize", "08:52", sender="prize@spam.example")
    offer = mail("offer", "Offer for Q3", "09:01:40")
    agenda = mail("agenda", "Agenda for Friday", "09:02:10", sender=BOB)
    minutes = mail("minutes", "Minutes", "09:04:20", sender=CAROL)
    out = Spec("reply-offer.eml", "RE: Offer for Q3", ALICE, [EXT], message_id="<reply-offer@acme.example>", date=None)
    s = (Scenario("demo")
         .mailbox(ALICE, [kept, sent_only])
         .snapshot("08:59", ALICE, [entry("mc-1", kept), entry("mc-2", sent_only), entry("mc-3", invoice_),
                                     entry("mc-4", held, status="HELD")])
         .start("09:00", "outage", [ALICE])
         .snapshot("09:01:45", ALICE, [entry("mc-5", offer)], name="alice-0901")
         .snapshot("09:02:15", ALICE, [entry("mc-6", agenda)], name="alice-0902")
         .outbox("09:03:30", ALICE, out)
         .snapshot("09:04:30", ALICE, [entry("mc-7", minutes)], name="alice-0904")
         .exchange("09:06", ALICE, "Inbox", offer)
         .end("09:08", "outage")
         .exchange("09:11", ALICE, "Inbox/Projects", agenda))
    s.until = t("09:20")
    # shipped as the package syncengine.demo, so `syncengine demo` works from any install
    s.files["__init__.py"] = b'"""The bundled demo scenario (package data for `syncengine demo`)."""\n'
    for mid in ("to-self", "invoice-88", "offer", "agenda", "minutes"):
        s.expects("deliver", ALICE, f"<{mid}@mail.example>")
    s.expects("send", ALICE, "<reply-offer@acme.example>")
    s.expects("purge", ALICE, "<offer@mail.example>", "local:Inbox/offer.eml")
    s.expects("purge", ALICE, "<agenda@mail.example>", "local:Inbox/Projects/agenda.eml")
    return s


def main() -> None:
    written = [s.write(OUT) for s in scenarios() + corpus_scenarios()]
    written.append(demo().write(OUT))
    for folder in written:
        print(folder.relative_to(ROOT))


if __name__ == "__main__":
    main()
