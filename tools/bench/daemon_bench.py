"""Daemon benchmark: the real daemon process with poll_interval = 1 s.

    python tools/bench/daemon_bench.py [--samples 20] [--idle-seconds 60] [--polls 10000]

(a) a snapshot dropped into the drop folder -> its deliver delta received by a client:
    median and p99 (the floor is the 1 s quiet period plus up to one poll interval);
(b) an Exchange copy written into an export -> its purge delta received: median, p99;
(c) the daemon's CPU seconds per idle hour (an event open, polling every second,
    nothing new: measured over --idle-seconds and scaled), and its RSS then;
(d) RSS of the writer's poll path after --polls polls (in this process);
(e) an idle poll's time with 10k, 100k and 1M decided entries in the store, with the
    per-event cursor beside the same poll without it (cursor 0) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncengine import client as client_mod  # noqa: E402
from syncengine import endpoints, engine, store  # noqa: E402

MAILBOX = "alice@acme.example"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def message(name: str) -> bytes:
    return (f"Message-ID: <{name}@bench.example>\r\nDate: Mon, 02 Mar 2026 08:00:00 +0000\r\n"
            f"Subject: {name}\r\n\r\nbody\r\n").encode()


def drop(folder: Path, name: str) -> None:
    hidden = folder / f".{name}"
    (hidden / "messages").mkdir(parents=True)
    (hidden / "messages" / "m.eml").write_bytes(message(name))
    (hidden / "snapshot.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
        "address": MAILBOX, "kind": "mailbox"}}, "fail": [], "data": [{
            "id": name, "received": "2026-03-02T08:00:00Z", "headerDate": "2026-03-02T08:00:00Z",
            "mimeMessageId": f"<{name}@bench.example>", "from": {"emailAddress": "x@example.org"},
            "subject": name, "content": "messages/m.eml"}]}))
    hidden.rename(folder / name)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def live(work: Path, samples: int, idle_seconds: int) -> None:
    (work / "mail" / "Inbox").mkdir(parents=True)
    (work / "snapshots").mkdir()
    config = work / "daemon.toml"
    config.write_text(f'db = "store.db"\npoll_interval = 1\n[[mailbox]]\naddress = "{MAILBOX}"\nexports = ["mail"]\n')
    daemon = subprocess.Popen([sys.executable, "-m", "syncengine", "daemon", "--config", str(config)],
                              stderr=subprocess.DEVNULL)
    try:
        db = work / "store.db"
        while not (db.exists() and (Path(f"{db}.d") / "run" / "router.ipc").exists()):
            time.sleep(0.05)
        subprocess.run([sys.executable, "-m", "syncengine", "event", "start", "ev1", "--mailbox", MAILBOX,
                        "--db", str(db)], check=True, capture_output=True)
        listener = client_mod.Client(endpoints.for_store(db), MAILBOX, [MAILBOX])
        stream = listener.deltas()
        deliver, purge = [], []
        for n in range(samples):
            started = time.monotonic()
            drop(work / "snapshots", f"s{n}")
            delivered = next(stream)
            deliver.append(time.monotonic() - started)
            started = time.monotonic()
            (work / "mail" / "Inbox" / f"s{n}.eml").write_bytes(message(f"s{n}"))
            purged = next(stream)
            purge.append(time.monotonic() - started)
            assert (delivered["action"], purged["action"]) == ("deliver", "purge"), (delivered, purged)
        listener.close()
        print(f"(a) snapshot dropped -> deliver received: median {statistics.median(deliver):.2f} s, "
              f"p99 {percentile(deliver, 0.99):.2f} s over {samples}")
        print(f"(b) Exchange copy written -> purge received: median {statistics.median(purge):.2f} s, "
              f"p99 {percentile(purge, 0.99):.2f} s")
        before = cpu_seconds(daemon.pid)
        time.sleep(idle_seconds)  # the measurement itself: the daemon alone, polling an open event
        used = cpu_seconds(daemon.pid) - before
        print(f"(c) idle: {used:.2f} CPU s in {idle_seconds} s -> {used * 3600 / idle_seconds:.0f} CPU s per idle hour"
              f" ({used / idle_seconds * 100:.2f}% of one core); RSS {rss_mb(daemon.pid):.0f} MB")
    finally:
        daemon.terminate()
        daemon.wait(10)


def many_polls(work: Path, polls: int) -> None:
    db = store.connect(work / "polls.db")
    engine.start_event(db, "ev1", [MAILBOX], False, 1000.0, no_local_mail=[MAILBOX])
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for n in range(polls):
        engine.poll(db, 1000.0 + 60 * (n + 1), ["ev1"])
    end_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(d) {polls} polls: peak RSS {start_rss:.0f} MB before, {end_rss:.0f} MB after")


def idle_poll(work: Path, entries: int) -> tuple[float, float]:
    """Median idle poll (ms) with `entries` decided entries: with the cursor, and without."""
    path = work / f"idle-{entries}.db"
    db = store.connect(path)
    engine.start_event(db, "ev1", [MAILBOX], False, 1000.0, no_local_mail=[MAILBOX])
    with store.transaction(db.conn) as conn:
        conn.execute("INSERT INTO snapshots (id, path, visible_at, pages, rejected_pages, entries)"
                     " VALUES (1, 'bench', 1000, 1, 0, ?)", (entries,))
        conn.executemany(
            "INSERT INTO entries (id, snapshot_id, page, position, entry_id, address, kind, visible_at, message_id,"
            " header_ts, received_ts, sender, recipients, subject, subject_norm, status, expired, message_class,"
            " resent_key, content, fingerprint) VALUES (?, 1, 1, ?, ?, ?, 'mailbox', 1000, ?, 1000, 1000,"
            " 'x@example.org', '', 's', 's', NULL, 0, 'IPM.Note', NULL, NULL, ?)",
            ((n + 1, n, f"e{n}", MAILBOX, f"m{n}@bench", f"{n:020x}") for n in range(entries)))
        conn.executemany("INSERT INTO decided VALUES (1, ?, ?, 'matched')", ((MAILBOX, n + 1) for n in range(entries)))
    results = []
    for cursor in (entries, 0):
        with store.transaction(db.conn) as conn:
            conn.execute("UPDATE event_mailboxes SET entry_cursor = ?", (cursor,))
        times = []
        for n in range(30):
            if cursor == 0:  # keep the baseline from moving the cursor
                db.execute("UPDATE event_mailboxes SET entry_cursor = 0")
            started = time.perf_counter()
            engine.poll(db, 1000.0 + 60 * (n + 1), ["ev1"])
            times.append(time.perf_counter() - started)
            db.execute(f"UPDATE events SET last_poll = {1000.0 + 60 * (n + 1)}")
        results.append(statistics.median(times) * 1000)
    db.conn.close()
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--polls", type=int, default=10_000)
    parser.add_argument("--entries", default="10000,100000,1000000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemon-bench-") as temp:
        work = Path(temp)
        live(work / "live", args.samples, args.idle_seconds)
        many_polls(work, args.polls)
        for entries in (int(x) for x in args.entries.split(",")):
            with_cursor, without = idle_poll(work, entries)
            print(f"(e) idle poll with {entries:>9,} entries: {with_cursor:.2f} ms with the cursor, "
                  f"{without:.2f} ms without ({without / with_cursor:.0f}x)")
            shutil.rmtree(work / f"idle-{entries}.db.d", ignore_errors=True)


if __name__ == "__main__":
    main()
