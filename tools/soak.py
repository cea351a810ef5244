"""A soak of the whole loop: a scripted, randomised working week, squeezed into minutes,
with real processes, injected faults, and invariants checked against a ground truth.

    python tools/soak.py --minutes 1 --seed 7                        # the suite's run
    python tools/soak.py --minutes 30 --seed $RANDOM                 # a long one
    python tools/soak.py --minutes 5 --seed 12 --mode standalone --keep /tmp/soak-12

What runs, all on this machine: the contract Mimecast server (tests/mimecast_contract.py,
the one stand-in, for Mimecast's cloud) serving a scripted mail stream for three mailboxes
(alice; bob; carol, whose delegate is alice) and a distribution list (sales: alice and
bob), with archive lag from seconds to 8 hours (injected: a message is listed now with a
receipt time that far back), rate limits, server errors, and odd but legal mail (no
Subject, no Message-ID, one application's Message-ID on two messages, MIME nested 600
deep, calendar requests, 2 MB attachments, non-ASCII everything, held mail); the daemon
(polling Mimecast itself, or, with --mode standalone, beside a `mimecast poll` process);
exports changing under it as Outlook and users change them (a PST rewritten and flickering,
a message moved, a private one deleted, an export added to the config mid-event); an event
started by the config's schedule and ended from the command line; apply clients (eml and
Maildir) and an SMTP relay that greylists, says 421 and stalls at random; Outbox items
written during the event; kill -9 of the daemon, the poller and the apply clients at
seeded moments, and restarts; a disk that fills for seconds under two of them (no file of
the process can grow: RLIMIT_FSIZE), then has room again. Exchange comes back at the
event's end and delivers its queue (every message held during the event) into the
exports, as it would.

At the end (the post-event window closed, every client caught up) it checks, against the
plan it made: every message Mimecast held for a mailbox is in that mailbox exactly once
(delivered, or already there; twice only where C5/C6 or C19's late coverage allow); held
mail and a list's mail for a non-member never delivered; every purge an Exchange copy of a
message continuity delivered (N2); every Outbox item sent to all its recipients (twice
only when its client was killed mid-send), and in Sent Items; every delta acknowledged; no
process died but by injection, none with a traceback; each process's memory bounded. The
verdict names the first violation with its evidence; the seed, the plan and the fault
schedule are written to the work folder (soak.json), so a failure can be replayed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from email.parser import BytesHeaderParser
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncengine import engine, normalise, store  # noqa: E402
from syncengine.pst.writer import Message as PstMessage  # noqa: E402
from syncengine.pst.writer import PstWriter  # noqa: E402
from tests import mimecast_contract as contract_mod  # noqa: E402
from tests.processes import Proc  # noqa: E402
from tests.relay import Relay  # noqa: E402

ALICE, BOB, CAROL, SALES = "alice@acme.example", "bob@acme.example", "carol@acme.example", "sales@acme.example"
LAYOUT = {ALICE: "eml", BOB: "maildir", CAROL: "eml"}
MEMBERS = {SALES: [ALICE, BOB]}
RSS_LIMIT_MB = {"daemon": 500, "poller": 300, "apply": 200}
EXTERNAL = ["partner@example.org", "robot@example.org", "jörg@exämple.de", "news@lists.example"]


# --- the plan: everything the seed decides -------------------------------------------------------

@dataclass
class Mail:
    key: str
    address: str            # what the archive holds it under: a mailbox, or the list
    mid: str | None
    date: int               # its Date (submit time), epoch
    subject: str | None
    odd: str                # what is odd about it ("" for nothing)
    kind: str               # baseline (in the mailbox and the archive) | private (mailbox only) | new | held
    home: str | None = None  # baseline/private: tree | pst | late
    listed: float | None = None   # seconds from the start when the archive lists it
    lag: float = 0.0        # how long before its listing the archive says it received it
    exchange_at: float | None = None  # an Exchange copy during the event, seconds from the start


@dataclass
class Plan:
    seed: int
    minutes: float
    mode: str
    start_at: float
    end_at: float
    window: int
    mails: list[Mail]
    outbox: list[dict]          # {key, mailbox, at, to, cc, bcc}
    actions: list[list]         # [seconds, what, args...], in time order
    t0: float = 0.0


def make_plan(seed: int, minutes: float, mode: str) -> Plan:
    rng = random.Random(seed)
    span = minutes * 60
    start_at, end_at = round(0.2 * span, 1), round(0.72 * span, 1)
    window = max(12, int(0.12 * span))
    mails: list[Mail] = []
    base = int(time.time()) - 3 * 86_400

    def mail(kind: str, address: str, home: str | None = None, odd: str = "") -> Mail:
        key = f"s{seed}-{len(mails):04d}"
        mid = None if odd == "no-message-id" else f"<{key}@soak.example>"
        subject = None if odd == "no-subject" else f"{'Überweisung ✓ ' if odd == 'non-ascii' else ''}Soak {key}"
        made = Mail(key, address, mid, base + len(mails) * 37, subject, odd, kind, home)
        mails.append(made)
        return made

    for address in (ALICE, BOB, CAROL):  # what each mailbox held before the outage
        homes = ["tree"] * 6 + (["pst"] * 5 if address == ALICE else []) + (["late"] * 4 if address == CAROL else [])
        for home in homes:
            made = mail("baseline", address, home)
            made.listed, made.lag = rng.uniform(0, start_at), rng.uniform(3600, 6 * 3600)
        for _ in range(3):
            mail("private", address, "tree")
    odd_kinds = ["no-subject", "no-message-id", "deep-mime", "calendar", "big", "non-ascii", "held", "app-id"]
    count = max(24, int(18 * minutes))
    for n in range(count):
        address = rng.choice([ALICE, ALICE, BOB, CAROL, SALES])
        odd = odd_kinds[n % len(odd_kinds)] if n < 2 * len(odd_kinds) else (
            rng.choice(odd_kinds) if rng.random() < 0.3 else "")
        made = mail("held" if odd == "held" else "new", address, odd=odd)
        made.listed = rng.uniform(start_at - 3, end_at - 1)
        roll = rng.random()
        made.lag = (rng.uniform(0, 30) if roll < 0.6 else rng.uniform(300, 1200) if roll < 0.85
                    else rng.uniform(3600, 3 * 3600) if roll < 0.95 else rng.uniform(4 * 3600, 8 * 3600))
        made.date = int(made.listed) + base + 3 * 86_400 - int(made.lag) - 5  # sent a moment before received
        if odd == "app-id":  # an application stamps one id on messages hours apart: two messages (C4)
            made.mid = "<notification@app.soak.example>"
            made.date -= n * 3600
        if made.kind == "new" and rng.random() < 0.15:
            made.exchange_at = min(end_at - 0.5, made.listed + rng.uniform(-4, 8))
    outbox = []
    for n in range(max(4, int(3 * minutes))):
        people = rng.sample([f"friend{k}@example.org" for k in range(12)], rng.randint(1, 5))
        outbox.append({"key": f"s{seed}-out{n:03d}", "mailbox": rng.choice([ALICE, BOB]),
                       "at": round(rng.uniform(start_at + 1, end_at - 3), 1), "to": people[:2],
                       "cc": people[2:3], "bcc": people[3:]})
    actions: list[list] = [[end_at, "end_event"]]
    for item in outbox:
        actions.append([item["at"], "outbox", item["key"]])
    for made in mails:
        if made.exchange_at is not None:
            actions.append([round(made.exchange_at, 1), "exchange", made.key])
    actions.append([end_at + 1.5, "exchange_comes_back"])
    during = lambda: round(rng.uniform(start_at + 2, end_at - 2), 1)  # noqa: E731
    kills = ["daemon", "daemon", "apply-alice", "apply-bob", "apply-carol"] + (["poller"] if mode == "standalone" else [])
    rng.shuffle(kills)
    for name in kills[:max(3, int(len(kills) * min(1.0, minutes / 2)))] + kills * int(minutes // 3):
        at = during()
        actions.append([at, "kill", name])
        actions.append([round(at + rng.uniform(0.5, 2.5), 1), "start", name])
    # a disk that fills for a few seconds under one process, then has room again; its own
    # generator, so that the rest of a seed's plan is what it was before this fault existed
    disks = random.Random(seed + 7919)
    for name in disks.sample(["daemon", "apply-alice", "apply-bob"] + (["poller"] if mode == "standalone" else []), 2):
        at = round(disks.uniform(start_at + 2, end_at - 2), 1)
        actions += [[at, "disk_full", name], [round(at + disks.uniform(2, 6), 1), "disk_room", name]]
    for what in ("pst_flicker", "pst_rewrite", "move", "delete_private", "late_export"):
        actions.append([during(), what])
    for _ in range(max(2, int(minutes))):
        path = rng.choice(["/api/archive/get-message-list", "/api/archive/get-message-detail",
                           "/api/archive/get-message-part"])
        fault = ["status", 503] if rng.random() < 0.6 else ["status", 429, {"X-RateLimit-Reset": "700"}]
        actions.append([during(), "mimecast_fault", path, fault, rng.randint(1, 4)])
    actions.sort(key=lambda a: a[0])
    return Plan(seed, minutes, mode, start_at, end_at, window, mails, outbox, actions)


# --- the messages ---------------------------------------------------------------------------------

def raw(made: Mail) -> bytes:
    to = ", ".join(MEMBERS.get(made.address, [made.address])) if made.address != SALES else SALES
    fields = [f"Message-ID: {made.mid}"] if made.mid else []
    sender = EXTERNAL[hash(made.key) % len(EXTERNAL)]
    fields += [f"Date: {formatdate(made.date)}", f"From: {'Jörg Müller' if made.odd == 'non-ascii' else 'Partner'} "
               f"<{sender}>", f"To: {to}", f"X-Soak-Key: {made.key}", "MIME-Version: 1.0"]
    if made.subject is not None:
        fields.append(f"Subject: {made.subject}")
    head = "\r\n".join(fields).encode("utf-8")
    if made.odd == "deep-mime":
        body = b"Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
        for n in range(600):
            body = b'Content-Type: multipart/mixed; boundary="d%d"\r\n\r\n--d%d\r\n%s\r\n--d%d--\r\n' % (n, n, body, n)
        return head + b"\r\n" + body
    if made.odd == "calendar":
        return head + (b'\r\nContent-Type: multipart/alternative; boundary="c"\r\n\r\n--c\r\nContent-Type: text/plain\r\n'
                       b'\r\nSee the invitation.\r\n--c\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n'
                       b'BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Soak\r\nEND:VEVENT\r\n'
                       b'END:VCALENDAR\r\n--c--\r\n')
    if made.odd == "big":
        blob = base64.encodebytes(random.Random(made.key).randbytes(2 << 20))
        return head + (b'\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
                       b'Attached.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64'
                       b'\r\nContent-Disposition: attachment; filename="scan.bin"\r\n\r\n' + blob + b'--b--\r\n')
    text = "Grüße aus dem Soak. 你好" if made.odd == "non-ascii" else f"Hello from {made.key}."
    return head + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n\r\n' + text.encode() + b"\r\n"


def outbox_item(item: dict) -> bytes:
    fields = [f"Message-ID: <{item['key']}@acme.example>", f"Date: {formatdate()}", f"From: {item['mailbox']}",
              "To: " + ",\r\n ".join(item["to"])]
    if item["cc"]:
        fields.append("Cc: " + ", ".join(item["cc"]))
    if item["bcc"]:
        fields.append("Bcc: " + ",\r\n ".join(item["bcc"]))
    return ("\r\n".join(fields) + f"\r\nX-Soak-Key: {item['key']}\r\nSubject: Out {item['key']}\r\n\r\n"
            f"Sent during the outage.\r\n").encode()


def soak_key(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16_384)
    except OSError:
        return None
    value = BytesHeaderParser().parsebytes(head.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n").get("X-Soak-Key")
    return str(value).strip() if value else None


# --- the world: files, processes, peers ----------------------------------------------------------

class World:
    def __init__(self, plan: Plan, work: Path):
        self.plan, self.work = plan, work
        self.mail = {m.key: m for m in plan.mails}
        self.procs: dict[str, Proc] = {}
        self.expected_stop: set[str] = set()
        self.violations: list[str] = []
        self.peak: dict[str, float] = {}
        self.killed: dict[str, int] = {}
        self.full_since: dict[str, int] = {}  # disk full: where its stderr was when it filled
        self.log: list[str] = []
        self.stopping = threading.Event()
        self.late_added = None

    def say(self, text: str) -> None:
        line = f"[{time.time() - self.plan.t0:7.1f}s] {text}"
        self.log.append(line)
        print(line, flush=True)

    def at(self, name: str) -> Path:
        return self.work / "mail" / name

    # files
    def tree_file(self, mailbox: str, folder: str, name: str) -> Path:
        root = self.at(mailbox.split("@")[0])
        if LAYOUT[mailbox] == "maildir":
            box = root if folder == "Inbox" else root / f".{folder.replace('/', '.')}"
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            return box / ("cur" if folder != "Inbox" else "new") / name
        (root / folder).mkdir(parents=True, exist_ok=True)
        return root / folder / f"{name}.eml"

    def write_exports(self) -> None:
        for mailbox in (ALICE, BOB, CAROL):
            self.tree_file(mailbox, "Inbox", ".keep").parent.mkdir(parents=True, exist_ok=True)
        (self.at("carol-old") / "Inbox").mkdir(parents=True, exist_ok=True)
        for made in self.plan.mails:
            if made.home == "tree":
                self.tree_file(made.address, "Inbox" if made.kind == "baseline" else "Archive",
                               f"own-{made.key}").write_bytes(raw(made))
            elif made.home == "late":
                (self.at("carol-old") / "Inbox" / f"own-{made.key}.eml").write_bytes(raw(made))
        self.write_pst(extra=0)

    def write_pst(self, extra: int) -> None:
        """alice's archive: her PST of older mail, as Outlook keeps it (rewritten whole)."""
        target = self.at("alice-archive.pst")
        building = target.with_name(".alice-archive.pst.new")
        with PstWriter(building, "Archive") as pst:
            for made in [m for m in self.plan.mails if m.home == "pst"]:
                data = raw(made)
                pst.add("Archive", PstMessage(subject=made.subject or "", sender=EXTERNAL[0], to=[ALICE],
                                              message_id=made.mid, submit_time=made.date,
                                              headers=data.split(b"\r\n\r\n")[0].decode() + "\r\n\r\n",
                                              body="archived"))
            for n in range(extra):  # the user's own additions: private mail
                pst.add("Archive/Imported", PstMessage(subject=f"Imported {n}", sender=EXTERNAL[1], to=[ALICE],
                                                      message_id=f"<imported-{n}@soak.example>",
                                                      submit_time=int(time.time()) - 86_400 * 30, body="old"))
        os.replace(building, target)

    def write_config(self) -> Path:
        t0 = self.plan.t0
        (self.work / "snapshots").mkdir(mode=0o700, exist_ok=True)
        (self.work / "secret").write_text(contract_mod.CLIENT_SECRET)
        os.chmod(self.work / "secret", 0o600)
        (self.work / "directory.json").write_text(json.dumps({
            "synced": normalise.iso(t0 - 3600),
            "users": [{"emailAddress": ALICE, "aliases": ["a.smith@acme.example"]}, {"emailAddress": BOB},
                      {"emailAddress": CAROL}],
            "groups": [{"emailAddress": SALES, "groupMembers": [{"emailAddress": ALICE}, {"emailAddress": BOB}]}],
            "delegates": [{"mailbox": CAROL, "delegate": ALICE}]}))
        os.chmod(self.work / "directory.json", 0o600)
        mimecast = (f'[mimecast]\nbase_url = "{self.contract.url}"\nauth = "oauth2"\n'
                    f'client_id = "{contract_mod.CLIENT_ID}"\nclient_secret_file = "secret"\n'
                    f'mailboxes = ["{ALICE}", "{BOB}", "{CAROL}"]\ninterval_s = 1\nrequest_deadline_s = 10\n'
                    f'lookback_hours = 12\nsnapshot_folder = "snapshots"\n')
        self.config = self.work / "daemon.toml"
        self.own_poller = mimecast if self.plan.mode == "daemon" else ""
        self.config.write_text(self.config_text() + self.own_poller)
        (self.work / "poller.toml").write_text(mimecast)
        return self.config

    def config_text(self, late: bool = False) -> str:
        start = normalise.iso(self.plan.t0 + self.plan.start_at)
        carol = '["mail/carol", "mail/carol-old"]' if late else '["mail/carol"]'
        return (f'db = "store.db"\nsnapshot_folder = "snapshots"\ndirectory_file = "directory.json"\n'
                f'poll_interval = 1\npost_event_window = {self.plan.window}\n'
                f'[[mailbox]]\naddress = "{ALICE}"\nexports = ["mail/alice", "mail/alice-archive.pst"]\n'
                f'[[mailbox]]\naddress = "{BOB}"\nexports = ["mail/bob"]\n'
                f'[[mailbox]]\naddress = "{CAROL}"\nexports = {carol}\n'
                f'[[event]]\nname = "soak"\nmailboxes = ["{ALICE}", "{BOB}", "{CAROL}"]\nstart = "{start}"\n'
                f'expand_distribution_lists = true\n')

    # peers in this process
    def start_peers(self) -> None:
        rng = random.Random(self.plan.seed + 1)
        messages = []
        for made in self.plan.mails:
            if made.kind in ("baseline", "new", "held"):
                message = contract_mod.Message(made.key, made.address, raw(made), subject=made.subject or "",
                                               message_id=made.mid or "",
                                               header_date=contract_mod.mimecast_time(made.date),
                                               listed_at=self.plan.t0 + made.listed)
                message.received = contract_mod.mimecast_time(self.plan.t0 + made.listed - made.lag)
                messages.append(message)
        self.contract = contract_mod.Contract(messages=messages)
        odd = {m.key: m for m in self.plan.mails if m.odd in ("no-subject", "held")}

        def listed(payload):  # what Mimecast sends for odd mail: no subject field, HELD
            for item in payload.get("data", []):
                made = odd.get(item.get("id"))
                if made is not None and made.odd == "no-subject":
                    item.pop("subject", None)
                elif made is not None:
                    item["status"] = "HELD"
            return payload
        self.contract.mutate["/api/archive/get-message-list"] = listed
        self.server, self.contract.url = contract_mod.serve(self.contract)
        self.relay = Relay(rng=rng, chances={"greylist": 0.25, "busy": 0.08, "stall": 0.08})

    # processes
    def command(self, name: str) -> list[str]:
        db = str(self.work / "store.db")
        if name == "daemon":
            return ["daemon", "--config", str(self.config)]
        if name == "poller":
            return ["mimecast", "poll", "--config", str(self.work / "poller.toml"), "--db", db]
        mailbox = {"alice": ALICE, "bob": BOB, "carol": CAROL}[name.split("-")[1]]
        return ["apply", "--mailbox", mailbox, "--mailbox-dir", str(self.at(mailbox.split("@")[0])), "--db", db,
                "--layout", LAYOUT[mailbox], "--smtp", f"127.0.0.1:{self.relay.port}", "-v"]

    def start(self, name: str) -> None:
        """Start `name` unless it runs (two kill/start pairs of the plan can overlap). The
        new process replaces the dead one before the watcher may count a death again, so
        the killed one is never taken for a death nobody injected."""
        current = self.procs.get(name)
        if current is not None and current.popen.poll() is None:
            return
        self.procs[name] = Proc(*self.command(name))
        self.expected_stop.discard(name)
        if name == "daemon":
            self.procs[name].wait_for(lambda p: any("daemon started" in line for line in p.err)
                                      or p.popen.poll() is not None, what="the daemon's start")

    def kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.popen.poll() is None:
            self.expected_stop.add(name)
            proc.kill()
            self.killed[name] = self.killed.get(name, 0) + 1

    def file_size_limit(self, name: str, limit: int) -> None:
        """RLIMIT_FSIZE of the running `name` (a process restarted meanwhile starts with room);
        with room again, how many of its log lines said a write found none meanwhile."""
        proc = self.procs.get(name)
        if proc is not None and proc.popen.poll() is None:
            try:
                resource.prlimit(proc.popen.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            except ProcessLookupError:
                return
            if limit == 0:
                self.full_since[name] = len(proc.err)
                self.say(f"{name}: disk full")
            else:
                refused = [line for line in proc.err[self.full_since.pop(name, len(proc.err)):]
                           if any(word in line for word in ("could not be written", "no room", "too large"))]
                self.say(f"{name}: room again ({len(refused)} log line(s) of writes refused meanwhile)")

    def watch(self) -> None:
        """A thread: each process's peak memory, and any death that was not injected."""
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.popen.poll()
                if code is not None and name not in self.expected_stop:
                    self.expected_stop.add(name)
                    self.violations.append(f"process {name} died uninjected (exit {code}); stderr tail: "
                                           f"{proc.err[-6:]}")
                    continue
                try:
                    status = Path(f"/proc/{proc.popen.pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        kind = name.split("-")[0]
                        self.peak[name] = max(self.peak.get(name, 0.0), int(line.split()[1]) / 1024)
                        if self.peak[name] > RSS_LIMIT_MB[kind]:
                            self.violations.append(f"process {name} used {self.peak[name]:.0f} MB "
                                                   f"(bound {RSS_LIMIT_MB[kind]} MB)")

    # actions
    def act(self, what: str, *args) -> None:
        if what == "end_event":
            result = subprocess.run([sys.executable, "-m", "syncengine", "event", "end", "soak", "--db",
                                     str(self.work / "store.db")], capture_output=True, text=True, timeout=120)
            self.say(f"event end from the command line: {result.stdout.strip() or result.stderr.strip()}")
        elif what == "outbox":
            item = next(i for i in self.plan.outbox if i["key"] == args[0])
            target = self.tree_file(item["mailbox"], "Outbox", item["key"])
            hidden = target.with_name(f".{target.name}")
            hidden.write_bytes(outbox_item(item))
            os.replace(hidden, target)
        elif what == "exchange":
            self.exchange(self.mail[args[0]])
        elif what == "exchange_comes_back":  # its queue: everything held during the event, not yet delivered
            for made in self.plan.mails:
                if made.kind == "new" and made.exchange_at is None:
                    self.exchange(made)
        elif what == "kill":
            self.kill(args[0])
        elif what in ("disk_full", "disk_room"):  # no file of the process can grow, then all can
            self.file_size_limit(args[0], 0 if what == "disk_full" else resource.RLIM_INFINITY)
        elif what == "start":
            self.start(args[0])
        elif what == "pst_flicker":  # a copy half-written for a moment, then whole again
            pst = self.at("alice-archive.pst")
            whole = pst.read_bytes()
            with open(pst, "r+b") as handle:
                handle.truncate(len(whole) // 3)
            time.sleep(1.5)
            pst.write_bytes(whole)
        elif what == "pst_rewrite":
            self.write_pst(extra=3)
        elif what == "move":  # a user files one of bob's own messages away
            own = [m for m in self.plan.mails if m.address == BOB and m.kind == "baseline" and m.home == "tree"]
            source = self.tree_file(BOB, "Inbox", f"own-{own[0].key}")
            if source.exists():
                os.replace(source, self.tree_file(BOB, "Projects", f"own-{own[0].key}"))
        elif what == "delete_private":
            for made in [m for m in self.plan.mails if m.kind == "private" and m.address == ALICE][:1]:
                self.tree_file(ALICE, "Archive", f"own-{made.key}").unlink(missing_ok=True)
                made.kind = "deleted"
        elif what == "late_export":  # carol's old folder, added to the config mid-event
            self.config.write_text(self.config_text(late=True) + self.own_poller)
            self.late_added = time.time()
        elif what == "mimecast_fault":
            path, fault, times = args
            with self.contract.lock:
                self.contract.faults.setdefault(path, []).extend([tuple(fault)] * times)

    def exchange(self, made: Mail) -> None:
        """Exchange delivers its own copy into each mailbox it is for."""
        for mailbox in MEMBERS.get(made.address, [made.address]):
            target = self.tree_file(mailbox, "Inbox", f"exchange-{made.key}")
            hidden = target.with_name(f".{target.name}")
            hidden.write_bytes(raw(made))
            os.replace(hidden, target)


# --- the run ------------------------------------------------------------------------------------

def run(plan: Plan, work: Path) -> tuple[list[str], dict]:
    world = World(plan, work)
    plan.t0 = time.time() + 5.0  # the schedule starts once the peers and processes are up
    world.start_peers()
    world.write_exports()
    world.write_config()
    watcher = threading.Thread(target=world.watch, daemon=True)
    try:
        world.start("daemon")
        if plan.mode == "standalone":
            world.start("poller")
        for name in ("apply-alice", "apply-bob", "apply-carol"):
            world.start(name)
        watcher.start()
        for action in plan.actions:
            wait = plan.t0 + action[0] - time.time()
            if wait > 0:
                time.sleep(wait)
            world.act(action[1], *action[2:])
        for name in list(world.procs):  # everything restarted that was killed last
            if world.procs[name].popen.poll() is not None and name in world.expected_stop:
                world.start(name)
        settle(world)
    finally:
        world.stopping.set()
        for name, proc in sorted(world.procs.items(), key=lambda item: item[0] == "daemon"):  # the daemon last
            world.expected_stop.add(name)
            code = proc.stop()
            if code not in (0, -9) and not world.violations:
                world.violations.append(f"process {name} did not stop cleanly (exit {code}): {proc.err[-6:]}")
        world.server.shutdown()
        world.relay.stop()
    return check(world), {"peak_rss_mb": world.peak, "kills": world.killed, "log": world.log}


def settle(world: World) -> None:
    """The post-event window closes; every client acknowledges the whole log."""
    plan, db = world.plan, world.work / "store.db"
    deadline = plan.t0 + plan.end_at + plan.window + 60
    while time.time() < deadline:
        time.sleep(1.0)
        try:
            database = store.connect(db, create=False)
            info = engine.status(database)
            database.conn.close()
        except store.StoreError:
            continue
        closed = all(e["phase"] == "closed" for e in info["events"]) and info["events"]
        behind = [c for c in info["clients"] if c["acked"] < (c["latest"] or 0)]
        with_deltas = {m for e in info["events"] for m, counts in e["report"].items() if any(counts.values())}
        if closed and not behind and with_deltas <= {c["mailbox"] for c in info["clients"]}:
            return
    world.violations.append(f"not settled {deadline - plan.t0:.0f} s after the start: events "
                            f"{[(e['event'], e['phase']) for e in info['events']]}, clients behind "
                            f"{[(c['client'], c['acked'], c['latest']) for c in info['clients']]}")


# --- the invariants -----------------------------------------------------------------------------

def check(world: World) -> list[str]:
    plan, work = world.plan, world.work
    found = list(world.violations)
    database = store.connect(work / "store.db", create=False)
    deltas = engine.deltas(database)
    database.conn.close()
    by_id = {m.key: m for m in plan.mails}
    delivered: dict[tuple[str, str], int] = {}
    for delta in (d for d in deltas if d["action"] == "deliver"):
        key = delta["source"][len("mimecast:"):]
        delivered[(delta["mailbox"], key)] = delivered.get((delta["mailbox"], key), 0) + 1
        made = by_id.get(key)
        if made is None:
            found.append(f"a delivery of {key} that the plan never made: {delta}")
        elif made.kind == "held":
            found.append(f"held mail delivered (C11): {delta}")
        elif made.address == SALES and delta["mailbox"] not in MEMBERS[SALES]:
            found.append(f"list mail delivered to a non-member (C16, C18): {delta}")
    for delta in (d for d in deltas if d["action"] == "purge"):
        name = delta["source"].rsplit("/", 1)[-1]
        key = name[len("exchange-"):].split(".eml")[0] if name.startswith("exchange-") else None
        made = by_id.get(key) if key else None
        if made is None:
            found.append(f"a purge of what is not an Exchange copy (the user's own mail?): {delta}")
        elif made.mid is None or not delivered.get((delta["mailbox"], made.key)) and not any(
                delivered.get((delta["mailbox"], other.key)) for other in plan.mails
                if other.mid == made.mid and abs(other.date - made.date) <= 120):
            found.append(f"a purge N2 forbids (no certain match with a delivery of this event): {delta}")
    found += check_mailboxes(world, delivered)
    found += check_outbox(world)
    for name, proc in world.procs.items():
        if any("Traceback" in line for line in proc.err):
            at = next(n for n, line in enumerate(proc.err) if "Traceback" in line)
            found.append(f"a traceback from {name} (N3 wants one line): {proc.err[at:at + 12]}")
    return found


def check_mailboxes(world: World, delivered: dict) -> list[str]:
    plan, found = world.plan, []
    for mailbox in (ALICE, BOB, CAROL):
        root = world.at(mailbox.split("@")[0])
        copies: dict[str, list[str]] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            folder = path.relative_to(root).parts[0]
            if folder.lstrip(".") in ("Outbox", "Sent Items", "Drafts"):
                continue
            key = soak_key(path)
            if key:
                copies.setdefault(key, []).append(str(path.relative_to(root)))
        for made in plan.mails:
            if made.home == "pst" and mailbox == ALICE:
                copies.setdefault(made.key, []).append("alice-archive.pst")
            if made.home == "late" and mailbox == CAROL and world.late_added is not None:
                copies.setdefault(made.key, []).append("carol-old")
        for made in plan.mails:
            mine = mailbox in MEMBERS.get(made.address, [made.address])
            have = copies.get(made.key, [])
            if not mine or made.kind in ("held", "deleted"):
                if have and made.kind != "deleted":
                    found.append(f"{mailbox} holds {made.key} ({made.kind}, {made.odd or 'plain'}), which is not "
                                 f"its mail: {have}")
                continue
            allowed = 1
            if made.mid is None and delivered.get((mailbox, made.key)):
                allowed = 2  # C5: a fallback match never purges (N2): a duplicate the user can delete
            if made.home == "late" and delivered.get((mailbox, made.key)):
                allowed = 2  # C19: delivered before the export holding it was declared; the baseline stays
            if not 1 <= len(have) <= allowed:
                found.append(f"{mailbox} holds {made.key} ({made.kind}, {made.odd or 'plain'}, listed at "
                             f"{made.listed:.1f}s, lag {made.lag:.0f}s) {len(have)} time(s), not "
                             f"{'once' if allowed == 1 else 'once or twice'}: {have}; continuity delivered it "
                             f"{delivered.get((mailbox, made.key), 0)} time(s)")
    return found


def check_outbox(world: World) -> list[str]:
    found = []
    sent: dict[str, list[str]] = {}
    for _, rcpts, data in world.relay.transactions:
        key = soak_key_bytes(data)
        sent.setdefault(key, []).extend(rcpts)
        if b"\r\nBcc:" in data or data.startswith(b"Bcc:"):
            found.append(f"an Outbox item went out with its Bcc field: {key}")
    for item in world.plan.outbox:
        wanted = sorted(item["to"] + item["cc"] + item["bcc"])
        got = sent.get(item["key"], [])
        client = f"apply-{item['mailbox'].split('@')[0]}"
        if sorted(set(got)) != wanted:
            found.append(f"Outbox item {item['key']} reached {sorted(set(got))}, not {wanted}")
        elif len(got) != len(wanted) and not world.killed.get(client):
            found.append(f"Outbox item {item['key']} reached someone twice without its client killed: {got}")
        home = world.tree_file(item["mailbox"], "Outbox", item["key"])
        if home.exists():
            found.append(f"Outbox item {item['key']} is still in the Outbox")
    return found


def soak_key_bytes(data: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n").get("X-Soak-Key")
    return str(value).strip() if value else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit 0: the invariants held. Exit 1: the first violation is printed.")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the scripted week lasts")
    parser.add_argument("--seed", type=int, default=7, help="decides the mail, the changes and the faults")
    parser.add_argument("--mode", choices=["daemon", "standalone"], default=None,
                        help="who polls Mimecast: the daemon, or a `mimecast poll` beside it (default: by seed)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    mode = args.mode or ("standalone" if args.seed % 2 else "daemon")
    plan = make_plan(args.seed, args.minutes, mode)
    work = args.keep or Path(tempfile.mkdtemp(prefix=f"soak-{args.seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    print(f"soak: seed {args.seed}, {args.minutes:g} minute(s), mode {mode}, {len(plan.mails)} messages, "
          f"{len(plan.outbox)} Outbox items, {sum(1 for a in plan.actions if a[1] == 'kill')} kills, "
          f"{sum(1 for a in plan.actions if a[1] == 'disk_full')} full disks; in {work}",
          flush=True)
    started = time.time()
    try:
        violations, figures = run(plan, work)
    except KeyboardInterrupt:
        sys.exit(130)
    report = {"seed": args.seed, "minutes": args.minutes, "mode": mode, "seconds": round(time.time() - started, 1),
              "violations": violations, **figures, "plan": asdict(plan)}
    (work / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    rss = ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(figures["peak_rss_mb"].items()))
    if violations:
        print(f"FAIL after {report['seconds']} s: {len(violations)} violation(s); the first:\n  {violations[0]}")
        for more in violations[1:6]:
            print(f"  also: {more}")
        print(f"peak RSS: {rss}; replay: python tools/soak.py --minutes {args.minutes:g} --seed {args.seed} "
              f"--mode {mode}; plan and schedule: {work / 'soak.json'}")
        sys.exit(1)
    print(f"PASS after {report['seconds']} s: every message once, every purge a duplicate, every Outbox item sent; "
          f"kills {figures['kills']}; peak RSS: {rss}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
