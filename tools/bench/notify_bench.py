"""Notification benchmark: commit -> client receipt, beside raw pyzmq in the same run.

    python tools/bench/notify_bench.py [--latency-samples 2000] [--burst 200000]

- latency: one delta committed at a time; the engine (a thread here, as the daemon
  embeds it) is woken right after the commit; a client in another process notes when
  each delta arrives (CLOCK_MONOTONIC is shared by processes). Baseline: a raw REQ/REP
  round trip of the same payload over ipc between two processes. Target: p99 <= 3x.
- throughput: deltas committed together (as one poll commits them), published from
  the log to one client process. Baseline: raw PUB/SUB of the same payloads.
  Target: >= 100,000 deltas/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import zmq

from syncengine import client as client_mod
from syncengine import endpoints, engine, notify, store

MAILBOX = "bench@acme.example"
_FORK = multiprocessing.get_context("fork")


def delta(n: int) -> dict:
    return {"at": 1_900_000_000.0, "event": "bench", "mailbox": MAILBOX, "action": "deliver", "folder": "Inbox",
            "message_id": f"<bench-{n}@example.org>", "subject": f"Benchmark message {n}",
            "fingerprint": f"{n:020x}", "source": f"mimecast:e{n}", "content": None, "reason": "not-in-mailbox"}


def commit(db, first: int, count: int) -> None:
    """Deltas written the way a poll writes them: numbered and inserted in one transaction."""
    with store.transaction(db.conn) as conn:
        engine._append(conn, [delta(n) for n in range(first, first + count)])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- our path ---------------------------------------------------------------------------------

def _receiver(where: endpoints.Endpoints, count: int, out) -> None:
    times = {}
    with client_mod.Client(where, MAILBOX, [MAILBOX]) as listener:
        out.send("ready")
        for item in listener.deltas():
            times[item["mailbox_seq"]] = time.monotonic_ns()
            if len(times) >= count:
                break
    out.send(times)


def run_ours(workdir: Path, latency_samples: int, burst: int) -> dict:
    db_path = workdir / "store.db"
    server = notify.Server(db_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wake = server.waker()
    db = store.connect(db_path)

    parent, child = _FORK.Pipe()
    receiver = _FORK.Process(target=_receiver, args=(server.endpoints, latency_samples, child))
    receiver.start()
    assert parent.recv() == "ready"
    time.sleep(0.5)  # a benchmark, not a test: let the SUB's subscription reach the engine
    committed = {}
    for n in range(1, latency_samples + 1):
        commit(db, n, 1)
        committed[n] = time.monotonic_ns()
        wake()
        time.sleep(0.001)
    received = parent.recv()
    receiver.join()
    latencies = [(received[n] - committed[n]) / 1000 for n in committed]

    # Live: one poll's deltas committed together, then published; timed from the commit's end.
    parent, child = _FORK.Pipe()
    receiver = _FORK.Process(target=_receiver, args=(server.endpoints, latency_samples + burst, child))
    receiver.start()
    assert parent.recv() == "ready"
    time.sleep(0.5)
    commit(db, latency_samples + 1, burst)
    started = time.monotonic_ns()
    wake()
    received = parent.recv()
    receiver.join()
    live = burst / ((max(received.values()) - started) / 1e9)
    # Catch-up: a client that was away reads the whole log over the ROUTER.
    parent, child = _FORK.Pipe()
    receiver = _FORK.Process(target=_receiver, args=(server.endpoints, latency_samples + burst, child))
    started = time.monotonic_ns()
    receiver.start()
    assert parent.recv() == "ready"
    received = parent.recv()
    receiver.join()
    catch_up = (latency_samples + burst) / ((max(received.values()) - started) / 1e9)
    server.stop()
    thread.join()
    wake.close()
    db.conn.close()
    return {"p50_us": percentile(latencies, 0.5), "p99_us": percentile(latencies, 0.99),
            "per_s": live, "catch_up_per_s": catch_up, "burst": burst}


# --- raw pyzmq baselines ------------------------------------------------------------------------

def _echo(endpoint: str, count: int) -> None:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoint)
    for _ in range(count):
        rep.send(rep.recv())
    rep.close()
    ctx.term()


def raw_round_trip(workdir: Path, samples: int) -> dict:
    endpoint = f"ipc://{workdir}/rtt.ipc"
    process = _FORK.Process(target=_echo, args=(endpoint, samples))
    process.start()
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.connect(endpoint)
    payload = json.dumps({"seq": 1, "mailbox_seq": 1, **delta(1)}).encode()
    times = []
    for _ in range(samples):
        started = time.monotonic_ns()
        req.send(payload)
        req.recv()
        times.append((time.monotonic_ns() - started) / 1000)
    process.join()
    req.close()
    ctx.term()
    return {"p50_us": percentile(times, 0.5), "p99_us": percentile(times, 0.99)}


def _subscriber(endpoint: str, count: int, out) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"delta.")
    out.send("ready")
    for _ in range(count):  # transport only: the upper bound for any client
        sub.recv_multipart()
    out.send(time.monotonic_ns())
    sub.close()
    ctx.term()


def raw_pub_sub(workdir: Path, count: int) -> dict:
    endpoint = f"ipc://{workdir}/pub.ipc"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # nothing dropped, so that the rate is of delivered messages
    pub.bind(endpoint)
    parent, child = _FORK.Pipe()
    process = _FORK.Process(target=_subscriber, args=(endpoint, count, child))
    process.start()
    assert parent.recv() == "ready"
    time.sleep(0.5)
    topic = notify.topic(MAILBOX)
    bodies = [json.dumps({"seq": n, "mailbox_seq": n, **delta(n)}).encode() for n in range(count)]
    started = time.monotonic_ns()
    for body in bodies:
        pub.send_multipart([topic, body])
    finished = parent.recv()
    process.join()
    pub.close()
    ctx.term()
    return {"per_s": count / ((finished - started) / 1e9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nb") as tmp:
        work = Path(tmp)
        rtt = raw_round_trip(work, args.latency_samples)
        raw = raw_pub_sub(work, args.burst)
        ours = run_ours(work, args.latency_samples, args.burst)
    print(f"latency commit->client: p50 {ours['p50_us']:.0f} us, p99 {ours['p99_us']:.0f} us; "
          f"raw REQ/REP round trip p50 {rtt['p50_us']:.0f} us, p99 {rtt['p99_us']:.0f} us; "
          f"p99 ratio {ours['p99_us'] / rtt['p99_us']:.1f}x (target <= 3x)")
    print(f"throughput log->client: live {ours['per_s']:,.0f} deltas/s over {ours['burst']:,}, catch-up "
          f"{ours['catch_up_per_s']:,.0f}/s; raw PUB/SUB of the same payloads {raw['per_s']:,.0f}/s; "
          f"ratio {ours['per_s'] / raw['per_s']:.2f} (target >= 100,000/s)")
    print(json.dumps({"ours": ours, "raw_rtt": rtt, "raw_pubsub": raw}))


if __name__ == "__main__":
    main()
