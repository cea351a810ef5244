"""Random replay scenarios, each checked against continuity.md's invariants.

    python tools/random_scenarios.py --count 500 --seed 1     # prints each violation
    python tools/random_scenarios.py --keep DIR --seed 17     # keep the scenario to replay by hand

A scenario is generated from a seed: a mailbox tree (Inbox, archive, Sent Items, Deleted
Items; messages with and without Message-IDs, an id an application stamps on several
messages), snapshots in one to three pages (some addressed to an alias), the same message
listed again under its own id or under another, two events in a row, Exchange copies
arriving in received and other folders and removed again. It is replayed with the
engine's own replay, and the delta log is checked against the generator's ground truth:

- every entry decided in an event whose message was not in the mailbox at that moment
  (C19: a copy removed during the event still counts) is delivered in that event;
- nothing is delivered twice in one event (C8), except what C5/C6 allow: entries without
  a Message-ID are each their own message unless they share a Mimecast id;
- every purge is one N2 allows: an Exchange copy (never the mailbox's own mail), in a
  received-mail folder, of a message with a Message-ID and a submit time that continuity
  delivered to the mailbox in that event.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from make_fixtures import Spec  # noqa: E402
from make_scenarios import ALICE, Scenario, entry, page, t  # noqa: E402

from syncengine import replay  # noqa: E402

ALIAS = "a.smith@acme.example"
POLL = 60
EVENTS = [("ev1", "09:00", "09:20"), ("ev2", "09:40", "09:55")]  # post-event window 600 s
RECEIVED = ("Inbox", "Archive", "Deleted Items", "Inbox/Sub")
OTHER = ("Sent Items", "Drafts")
SENDERS = ["partner@example.org", "robot@example.org", "bob@acme.example"]


def seconds(hhmmss: str) -> int:
    h, m, s = (int(x) for x in (hhmmss.split(":") + ["0"])[:3])
    return h * 3600 + m * 60 + s


def clock(value: int) -> str:
    return f"{value // 3600:02d}:{value % 3600 // 60:02d}:{value % 60:02d}"


@dataclass
class Message:
    key: str
    spec: Spec
    local: str | None = None                  # the folder of the mailbox's own copy, if any
    copies: list[tuple[str, str, int, int | None]] = field(default_factory=list)  # (file, folder, added, removed)

    @property
    def has_id(self) -> bool:
        return self.spec.message_id is not None


@dataclass
class Generated:
    scenario: Scenario
    messages: dict[str, Message]
    entries: dict[str, tuple[str, int]]       # Mimecast id -> (message key, visible at)


def generate(seed: int) -> Generated:
    rng = random.Random(seed)
    messages: dict[str, Message] = {}
    app_id = "<notification@app.example>"       # one id stamped on several messages, hours apart
    for n in range(rng.randint(14, 26)):
        key = f"s{seed}m{n}"
        minute = rng.randint(0, 179)
        date = t(clock(seconds("05:00") + minute * 60)) if rng.random() > 0.05 else None
        roll = rng.random()
        mid = None if roll < 0.25 else app_id if roll < 0.33 else f"<{key}@mail.example>"
        if mid is None and date is None:
            date = t("07:00")                   # C5 needs a submit time to match at all
        sender = rng.choice(SENDERS)
        to = [rng.choice([ALICE, ALICE, ALICE, ALIAS])]
        spec = Spec(f"x/{key}.eml", f"Subject {key}", sender, to, message_id=mid, date=date)
        local = rng.choice(RECEIVED + OTHER) if rng.random() < 0.35 else None
        messages[key] = Message(key, spec, local)
    scenario = (Scenario(f"random-{seed}").with_directory(users=[(ALICE, [ALIAS])]))
    scenario.until = t("10:10")
    scenario.exact = False
    own = [replace(m.spec, path=f"{m.local}/own-{m.key}.eml") for m in messages.values() if m.local]
    scenario.mailbox(ALICE, own)
    timeline: list[tuple[int, int, str, tuple]] = []  # (time, order, kind, args)
    for name, start, end in EVENTS:  # at one instant: snapshots, copies, removals, then the event
        timeline.append((seconds(start), 3, "start", (name,)))
        timeline.append((seconds(end), 3, "end", (name,)))
    # snapshots: entries for new and own messages, some listed again, some under another id
    entries: dict[str, tuple[str, int]] = {}
    listed: list[tuple[str, str]] = []        # (Mimecast id, message key) listed so far
    keys = list(messages)
    for number in range(rng.randint(4, 8)):
        at = rng.randint(seconds("08:50"), seconds("10:00"))
        pages = []
        for _ in range(rng.randint(1, 3)):
            data = []
            for _ in range(rng.randint(1, 5)):
                roll = rng.random()
                if listed and roll < 0.15:                     # the same entry again
                    mimecast_id, key = rng.choice(listed)
                elif listed and roll < 0.25:                   # the same message under another id
                    _, key = rng.choice(listed)
                    mimecast_id = f"{key}-again-{number}-{len(data)}"
                else:
                    key = rng.choice(keys)
                    mimecast_id = f"{key}-{number}-{len(data)}"
                listed.append((mimecast_id, key))
                entries.setdefault(mimecast_id, (key, at))
                data.append(entry(mimecast_id, messages[key].spec))
            pages.append(page(rng.choice([ALICE, ALICE, ALIAS]), data))
        timeline.append((at, 0, "snapshot", (pages, f"snap-{number}")))
    # Exchange copies of listed messages, in received and other folders, some removed later
    for key in rng.sample(keys, k=min(len(keys), rng.randint(3, 9))):
        added = rng.randint(seconds("08:55"), seconds("10:05"))
        folder = rng.choice(RECEIVED + ("Sent Items",))
        name = f"xc-{key}-{added}.eml"
        removed = rng.randint(added + 1, seconds("10:09")) if rng.random() < 0.4 else None
        messages[key].copies.append((name, folder, added, removed))
        timeline.append((added, 1, "exchange", (key, folder, name)))
        if removed is not None:
            timeline.append((removed, 2, "remove", (name,)))
    for at, _, kind, args in sorted(timeline, key=lambda item: (item[0], item[1])):
        when = clock(at)
        if kind == "start":
            scenario.start(when, args[0], [ALICE])
        elif kind == "end":
            scenario.end(when, args[0])
        elif kind == "snapshot":
            scenario.snapshot(when, ALICE, [], pages=args[0], name=args[1])
        elif kind == "exchange":
            key, folder, name = args
            scenario.exchange(when, ALICE, folder, messages[key].spec, name=name)
        else:
            scenario.remove(when, ALICE, f"exchange/{args[0]}")
    return Generated(scenario, messages, entries)


def _present(message: Message, at: int, event_start: int) -> bool:
    """Was the message in a received-mail folder of the index when decided at `at`? A copy
    removed during the event is kept (C19); one removed before it started is gone."""
    if message.local in RECEIVED:
        return True
    for _, folder, added, removed in message.copies:
        if folder in RECEIVED and added <= at and (removed is None or removed > at or removed > event_start):
            return True
    return False


def _c4(a: Message, b: Message) -> bool:
    """C4 between two generated messages with Message-IDs (an application's shared id
    makes two messages one when their submit times are within 2 minutes)."""
    if a.spec.message_id != b.spec.message_id:
        return False
    if a.spec.date is None or b.spec.date is None:
        return a.spec.subject == b.spec.subject
    return abs(_epoch(a.spec.date) - _epoch(b.spec.date)) <= 120


def _epoch(iso: str) -> int:
    return seconds(iso[11:19])


def _decided_at(visible: int, start: int, end: int) -> int | None:
    """When an entry visible at `visible` is decided in the event [start, end): at the
    start (C3), or at the first poll at or after it, if that poll comes before the end."""
    if visible <= start:
        return start
    poll = start + -(-(visible - start) // POLL) * POLL
    return poll if poll < end else None


def violations(generated: Generated, deltas: list[dict]) -> list[str]:
    found = []
    messages, entries = generated.messages, generated.entries
    for name, start_text, end_text in EVENTS:
        start, end = seconds(start_text), seconds(end_text)
        mine = [d for d in deltas if d["event"] == name]
        delivered: list[tuple[str, str]] = []  # (Mimecast id, message key)
        for delta in (d for d in mine if d["action"] == "deliver"):
            mimecast_id = delta["source"][len("mimecast:"):]
            key = entries[mimecast_id][0]
            for earlier_id, earlier in delivered:
                if _same(messages, key, mimecast_id, earlier, earlier_id):
                    found.append(f"{name}: {key} delivered twice ({earlier_id}, {mimecast_id})")
            delivered.append((mimecast_id, key))
        for mimecast_id, (key, visible) in entries.items():
            at = _decided_at(visible, start, end)
            if at is None:
                continue
            present = any(_present(messages[other], at, start) for other in messages
                          if _same(messages, key, mimecast_id, other, None))
            if not present and not any(_same(messages, key, mimecast_id, k, i) for i, k in delivered):
                found.append(f"{name}: {mimecast_id} ({key}) was not in the mailbox at {clock(at)} "
                             f"and was not delivered")
        for purge in (d for d in mine if d["action"] == "purge"):
            locator = purge["source"][len("local:"):]
            file = locator.rsplit("/", 1)[-1]
            copy = [(k, c) for k, m in messages.items() for c in m.copies if c[0] == file]
            if not copy:
                found.append(f"{name}: purge of the mailbox's own mail {locator}")
                continue
            key, (_, folder, _, _) = copy[0]
            message = messages[key]
            if folder not in RECEIVED or not message.has_id or message.spec.date is None \
                    or not any(_same(messages, key, None, k, None) for _, k in delivered):
                found.append(f"{name}: purge of {locator} that N2 forbids")
    return found


def _same(messages: dict[str, Message], key: str, mimecast_id: str | None, other: str,
          other_id: str | None) -> bool:
    """One message to the engine: C4 when both have a Message-ID; without one (C5), only
    the same entry (the same Mimecast id), or, for presence (no id given), its own copies."""
    a, b = messages[key], messages[other]
    if a.has_id and b.has_id:
        return _c4(a, b)
    if a.has_id or b.has_id:
        return False
    if mimecast_id is None or other_id is None:
        return key == other
    return mimecast_id == other_id


def check(seed: int, work: Path, keep: bool = False) -> list[str]:
    generated = generate(seed)
    folder = generated.scenario.write(work)
    outcome = replay.replay(folder, work / f"random-{seed}.db")
    found = violations(generated, outcome.deltas)
    if found or keep:
        (folder / "violations.json").write_text(json.dumps(found, indent=1) + "\n")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the first seed; each scenario takes the next")
    parser.add_argument("--keep", type=Path, help="write the scenarios here (default: a temporary folder)")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seed, args.seed + args.count):
            found = check(seed, work, keep=args.keep is not None)
            for line in found:
                print(f"seed {seed}: {line}")
            failed += bool(found)
    print(f"{args.count} scenarios from seed {args.seed}: {failed} with violations")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
