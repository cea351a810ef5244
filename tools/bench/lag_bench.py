"""Archive lag (C8a): what the poller costs per pass to find every message however late
Mimecast's archive lists it, against the contract server on loopback.

    python tools/bench/lag_bench.py [--hours 4] [--rate 1] [--interval 60] [--seed 7]

A mailbox covered by an event receives `rate` messages a second for `hours`; the archive
lists each after a lag drawn (seeded) from: 70% under a minute, 20% 1 to 20 minutes, 8%
20 minutes to 2 hours, 2% 2 to 6 hours. Time is injected: each pass runs at its simulated
time, which is also the contract server's clock, so hours take a minute or two. Printed
for the poller as it is, and for the baseline measured in the same run (the same poller
listing only from shortly before its last pass, which is what it did before C8a):

- list requests per pass (mean, p99, max), and per message;
- messages found, and missed (listed before the event's end, never fetched);
- the delay from listing to fetch (median, p99, max), beside the lag.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncengine import engine, store  # noqa: E402
from syncengine.mimecast import api as api_mod  # noqa: E402
from syncengine.mimecast import config as config_mod  # noqa: E402
from syncengine.mimecast import poller  # noqa: E402
from tests import mimecast_contract as contract_mod  # noqa: E402

MAILBOX = "alice@acme.example"
LIST = "/api/archive/get-message-list"


def lag(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.70:
        return rng.uniform(0, 60)
    if roll < 0.90:
        return rng.uniform(60, 1200)
    if roll < 0.98:
        return rng.uniform(1200, 7200)
    return rng.uniform(7200, 21600)


class RecentOnly(poller.Ladder):
    """The baseline: each pass lists from shortly before the last one ended, no ladder."""

    def window(self, target, last_end, now, interval, first):
        start = first if last_end is None else max(target.horizon, last_end - poller.OVERLAP_SECONDS)
        return start, []


def run(work: Path, messages: list[tuple[str, float, float]], t0: float, hours: float, interval: int,
        ladder: poller.Ladder) -> dict:
    contract = contract_mod.Contract(messages=[contract_mod.Message(
        mid, MAILBOX, f"Message-ID: <{mid}@bench>\r\nSubject: {mid}\r\n\r\nx\r\n".encode(),
        received=contract_mod.mimecast_time(received), message_id=f"<{mid}@bench>", listed_at=listed)
        for mid, received, listed in messages])
    server, url = contract_mod.serve(contract)
    work.mkdir()
    (work / "secret").write_text(contract_mod.CLIENT_SECRET)
    os.chmod(work / "secret", 0o600)
    (work / "c.toml").write_text(
        f'[mimecast]\nbase_url = "{url}"\nauth = "oauth2"\nclient_id = "{contract_mod.CLIENT_ID}"\n'
        f'client_secret_file = "secret"\nmailboxes = ["{MAILBOX}"]\npage_size = 500\ninterval_s = {interval}\n')
    settings = config_mod.load(work / "c.toml")
    db = store.connect(work / "store.db")
    engine.start_event(db, "bench", [MAILBOX], False, t0, no_local_mail=[MAILBOX])
    api = api_mod.Api(settings)
    per_pass = []
    started = time.perf_counter()
    now = t0
    while now <= t0 + hours * 3600:
        contract.now = now
        before = contract.calls[LIST]
        poller.fetch(api, settings, db, now, ladder, apply=lambda folder, t=now: poller.apply_folder(db, folder, t))
        per_pass.append(contract.calls[LIST] - before)
        now += interval
    seconds = time.perf_counter() - started
    fetched = dict(db.execute("SELECT id, fetched_at FROM mimecast_fetched").fetchall())
    end = t0 + hours * 3600
    listed_by_end = {mid: listed for mid, _, listed in messages if listed <= end}
    delays = [fetched[mid] - listed for mid, listed in listed_by_end.items() if mid in fetched]
    api.close()
    server.shutdown()
    per_pass.sort()
    return {"passes": len(per_pass), "list_mean": statistics.mean(per_pass),
            "list_p99": per_pass[int(len(per_pass) * 0.99)], "list_max": per_pass[-1],
            "found": len(delays), "missed": len(listed_by_end) - len(delays), "listed": len(listed_by_end),
            "delay": sorted(delays), "seconds": seconds, "details": contract.calls["/api/archive/get-message-detail"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=1.0, help="messages a second")
    parser.add_argument("--interval", type=int, default=60, help="seconds between passes")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    t0 = float(int(time.time()) - 86_400)
    count = int(args.hours * 3600 * args.rate)
    messages = []
    for n in range(count):
        received = t0 + n / args.rate
        messages.append((f"m{n}", received, received + lag(rng)))
    lags = sorted(listed - received for _, received, listed in messages)
    print(f"{count:,} messages over {args.hours:g} h ({args.rate:g}/s), a pass every {args.interval} s; "
          f"lag median {statistics.median(lags):.0f} s, p99 {lags[int(len(lags) * 0.99)] / 60:.0f} min, "
          f"max {lags[-1] / 3600:.1f} h")
    with tempfile.TemporaryDirectory(prefix="lag-bench-") as temp:
        results = {"ladder (C8a)": run(Path(temp) / "ladder", messages, t0, args.hours, args.interval, poller.Ladder()),
                   "recent only (baseline)": run(Path(temp) / "recent", messages, t0, args.hours, args.interval,
                                                 RecentOnly())}
    base = results["recent only (baseline)"]
    for name, r in results.items():
        delay = r["delay"]
        print(f"{name}: {r['passes']} passes in {r['seconds']:.0f} s; list requests per pass mean {r['list_mean']:.2f}"
              f" (p99 {r['list_p99']}, max {r['list_max']}; {r['list_mean'] / base['list_mean']:.2f}x the baseline),"
              f" {r['list_mean'] * r['passes'] / max(r['found'], 1):.3f} per message; "
              f"found {r['found']:,} of {r['listed']:,} listed before the end, missed {r['missed']:,}; "
              f"delay listed->fetched median {statistics.median(delay):.0f} s, p99 {delay[int(len(delay) * 0.99)]:.0f} s,"
              f" max {delay[-1]:.0f} s; detail requests {r['details']:,} (one per message found)")


if __name__ == "__main__":
    main()
