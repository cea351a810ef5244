"""Poller benchmark against the contract server on loopback (tests/mimecast_contract.py).

    python tools/bench/mimecast_bench.py [--messages 500] [--size 100000]

- messages fetched per second (list + detail + part, 100 KB messages, snapshot folder
  written and applied to a store), beside the raw request rate of the same HTTP client
  (httpx, one connection reused) on the same server: a list call of one page;
- requests per new message (target: one list call per page plus two per new message),
  and for a second pass with nothing new.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from syncengine import store  # noqa: E402
from syncengine.mimecast import api as api_mod  # noqa: E402
from syncengine.mimecast import config as config_mod  # noqa: E402
from syncengine.mimecast import poller  # noqa: E402
from tests import mimecast_contract as contract_mod  # noqa: E402

MAILBOX = "alice@acme.example"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=100_000)
    args = parser.parse_args()
    body = b"x" * args.size
    contract = contract_mod.Contract(messages=[contract_mod.Message(
        f"id-{n}", MAILBOX, f"Message-ID: <b{n}@bench>\r\nSubject: {n}\r\n\r\n".encode() + body,
        message_id=f"<b{n}@bench>") for n in range(args.messages)])
    server, url = contract_mod.serve(contract)
    with tempfile.TemporaryDirectory(prefix="mimecast-bench-") as temp:
        work = Path(temp)
        secret = work / "secret"
        secret.write_text(contract_mod.CLIENT_SECRET)
        os.chmod(secret, 0o600)
        config = work / "c.toml"
        config.write_text(f'[mimecast]\nbase_url = "{url}"\nauth = "oauth2"\nclient_id = "{contract_mod.CLIENT_ID}"\n'
                          f'client_secret_file = "secret"\nmailboxes = ["{MAILBOX}"]\npage_size = 500\n')
        settings = config_mod.load(config)
        db = store.connect(work / "store.db")
        api = api_mod.Api(settings)
        now = time.time()
        started = time.perf_counter()
        poller.fetch(api, settings, db, now, apply=lambda folder: poller.apply_folder(db, folder, now))
        seconds = time.perf_counter() - started
        first = api.requests
        poller.fetch(api, settings, db, now + 60, apply=lambda folder: poller.apply_folder(db, folder, now + 60))
        second = api.requests - first
        token = api._token
        with httpx.Client() as raw:
            started = time.perf_counter()
            for _ in range(args.messages):
                raw.post(url + "/api/archive/get-message-detail", json={"data": [{"id": "id-0", "mailbox": MAILBOX}]},
                         headers={"Authorization": f"Bearer {token}"})
            raw_seconds = time.perf_counter() - started
        api.close()
    server.shutdown()
    pages = -(-args.messages // 500)
    print(f"fetched {args.messages} messages of {args.size // 1000} KB in {seconds:.2f} s: "
          f"{args.messages / seconds:.0f} messages/s ({args.messages * 3 / seconds:.0f} API requests/s)")
    print(f"raw httpx requests on the same server: {args.messages / raw_seconds:.0f} requests/s; "
          f"ratio {args.messages * 3 / seconds / (args.messages / raw_seconds):.2f}x of raw (requests/s)")
    print(f"requests: first pass {first} for {args.messages} new ({pages} list page(s), 1 token, "
          f"{(first - pages - 1) / args.messages:.2f} per message); a pass with nothing new: {second}")


if __name__ == "__main__":
    main()
