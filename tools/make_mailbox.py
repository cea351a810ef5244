"""A realistic mailbox, the same for the same seed, with a ground truth of what it holds.

    python tools/make_mailbox.py --messages 100000 --format eml|msg|maildir|pst|ost4k --seed 7 OUT

Folder sizes are skewed as in real mailboxes (most mail in Inbox and an archive, a long
tail of small custom folders, nested ones), with threads (Re:/Fwd: subjects), messages
without a Message-ID, one id stamped on several messages by an application, calendar
requests, send-to-self copies in Inbox and Sent Items, and a few large messages.

OUT/ holds the mailbox (for `--format pst`, OUT is the .pst file itself; `ost4k` writes
an OST in the 4 KB-page layout of Outlook 2013 and later); OUT.truth.json
maps each message's locator (as `syncengine index` names it: a path, or a PST node id) to
the fields the index must recover (tools/make_fixtures.py `expected`). In a PST the large
messages carry a 2 MB attachment; calendar requests are IPM.Schedule.Meeting.Request items.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_fixtures import ICS_REQUEST, Spec, email_message, expected, write_message  # noqa: E402

from syncengine.pst.layout import UNICODE, UNICODE_4K, Layout  # noqa: E402
from syncengine.pst.writer import Attachment, Message, PstWriter  # noqa: E402

OWNER = "alice@acme.example"
PEOPLE = [f"{name}@{domain}" for name in ("bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")
          for domain in ("example.org", "acme.example", "partner.example")]
# (folder, weight): Inbox and an archive hold most; a long tail of small folders.
FOLDERS = [("Inbox", 40), ("Archive/2024", 18), ("Sent Items", 15), ("Inbox/Projects", 6),
           ("Inbox/Projects/Q4", 4), ("Deleted Items", 5), ("Junk Email", 2), ("Archive/2023", 4),
           ("Calendar", 2), ("Inbox/Newsletters", 3), ("Inbox/Receipts", 1)]
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def specs(count: int, seed: int, suffix: str) -> list[tuple[Spec, bool]]:
    """`count` messages (and send-to-self copies), deterministic for `seed`; the flag
    marks the few large ones (2 MB bodies)."""
    rng = random.Random(seed)
    names, weights = zip(*FOLDERS)
    made: list[tuple[Spec, bool]] = []
    threads: list[str] = []
    for n in range(count):
        folder = rng.choices(names, weights)[0]
        when = EPOCH + timedelta(seconds=rng.randrange(0, 300 * 86400))
        sent = folder == "Sent Items"
        sender = OWNER if sent else rng.choice(PEOPLE)
        to = [rng.choice(PEOPLE)] if sent else [OWNER]
        cc = [rng.choice(PEOPLE)] if rng.random() < 0.2 else []
        if threads and rng.random() < 0.3:
            subject = f"{rng.choice(['Re: ', 'RE: ', 'Fwd: '])}{rng.choice(threads)}"
        else:
            subject = f"Topic {n} {rng.choice(['budget', 'plan', 'notes', 'review', 'offer', 'agenda'])}"
            threads.append(subject)
        roll = rng.random()
        if roll < 0.02:
            message_id = None                                  # no Message-ID (C5)
        elif roll < 0.03:
            message_id = "<noreply@app.example>"               # one id stamped on many (C4)
            # ... at distinct seconds: the same id and second would be one message (C4),
            # which the ground truth (one entry a message written) does not model.
            when = EPOCH + timedelta(seconds=n)
        else:
            message_id = f"<m{n}.{seed}@mail.example>"
        spec = Spec(f"{folder}/m{n:07d}{suffix}", subject, sender, to, cc=cc, message_id=message_id,
                    date=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if folder == "Calendar" or rng.random() < 0.01:
            spec = replace(spec, calendar=ICS_REQUEST, message_class="IPM.Schedule.Meeting.Request")
        to_self = not sent and rng.random() < 0.01
        if to_self:  # alice wrote to herself: one message, in the received folder and in Sent Items
            spec = replace(spec, sender=OWNER, to=[OWNER])
        made.append((spec, rng.random() < 0.002))
        if to_self:
            made.append((replace(spec, path=f"Sent Items/self-m{n:07d}{suffix}"), False))
    return made


def write(made: list[tuple[Spec, bool]], out: Path, fmt: str) -> dict:
    if fmt in ("pst", "ost4k"):
        return write_pst(made, out, layout=UNICODE if fmt == "pst" else UNICODE_4K)
    if out.exists():
        shutil.rmtree(out)
    truth = {}
    for spec, large in made:
        folder, name = spec.path.rsplit("/", 1)
        if fmt == "maildir":  # the root is the Inbox; other folders are .Name.Sub
            box = "" if folder == "Inbox" else "." + folder.replace("/", ".")
            for sub in ("cur", "new", "tmp"):
                (out / box / sub).mkdir(parents=True, exist_ok=True)
            locator = f"{box}/cur/{name}:2,S".lstrip("/")
            (out / locator).write_bytes(bytes(email_message(spec)) + (b"\n" + b"A" * 2_000_000 if large else b""))
            truth[locator] = {**expected(replace(spec, path=spec.path + ".eml")), "folder": folder}
            continue
        write_message(spec, out)
        if large and fmt == "eml":
            with open(out / spec.path, "ab") as handle:
                handle.write(b"\n" + b"A" * 2_000_000)
        truth[spec.path] = {**expected(spec), "folder": folder}
    return truth


def header_block(spec: Spec, when: datetime | None) -> str:
    """The header block Outlook keeps in PR_TRANSPORT_MESSAGE_HEADERS. Formatted directly:
    the email package's header objects cost three times the PST writer per message."""
    lines = [f"Message-ID: {spec.message_id}"] if spec.message_id else []
    lines += [f"From: {spec.sender}", f"To: {', '.join(spec.to)}"]
    lines += [f"Cc: {', '.join(spec.cc)}"] if spec.cc else []
    lines += [f"Subject: {spec.subject}"] + ([f"Date: {format_datetime(when)}"] if when else [])
    lines += ["MIME-Version: 1.0", 'Content-Type: multipart/alternative; boundary="b1"' if spec.calendar
              else 'Content-Type: text/plain; charset="utf-8"']
    return "\r\n".join(lines) + "\r\n\r\n"


def pst_message(spec: Spec, large: bool) -> Message:
    """The message as Outlook keeps a received one: MAPI properties plus its header block."""
    when = datetime.fromisoformat(spec.date.replace("Z", "+00:00")) if spec.date else None
    return Message(subject=spec.subject, sender=spec.sender, to=list(spec.to), cc=list(spec.cc),
                   message_id=spec.message_id, submit_time=int(when.timestamp()) if when else None,
                   headers=header_block(spec, when),
                   body="Hello.\n" if not spec.calendar else "See the invitation.\n",
                   message_class=spec.message_class,
                   attachments=[Attachment("scan.pdf", b"%PDF-1.4\n" + b"A" * 2_000_000, "application/pdf")]
                   if large else [])


def write_pst(made: list[tuple[Spec, bool]], out: Path, progress: bool = True, layout: Layout = UNICODE) -> dict:
    truth = {}
    with PstWriter(out, "Generated mailbox", layout) as pst:
        for number, (spec, large) in enumerate(made, 1):
            folder = spec.path.rsplit("/", 1)[0]
            nid = pst.add(folder, pst_message(spec, large))
            truth[str(nid)] = {**expected(spec), "folder": folder}
            if progress and number % 50_000 == 0:
                print(f"  {number:,} of {len(made):,} messages written", file=sys.stderr)
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--format", choices=["eml", "msg", "maildir", "pst", "ost4k"], default="eml")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    made = specs(args.messages, args.seed, {"msg": ".msg", "eml": ".eml"}.get(args.format, ""))
    truth = write(made, args.out, args.format)
    Path(f"{args.out}.truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(truth)} messages ({args.format}) under {args.out}, ground truth in {args.out}.truth.json")


if __name__ == "__main__":
    main()
