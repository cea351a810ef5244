"""A real SMTP relay (aiosmtpd) on loopback for the tests and the soak: it logs every
transaction (envelope and bytes) and answers as asked: past `limit` recipients 452, a
greylisted recipient 451 the first time, a `refused` one 550 always; with a `rng`, also
at random: greylisting, a 421 for a transaction, a stall before answering DATA."""

from __future__ import annotations

import asyncio
import random
import socket
import threading

from aiosmtpd.controller import Controller


class Relay:
    def __init__(self, limit: int | None = None, greylist: bool = False, refused: frozenset = frozenset(),
                 rng: random.Random | None = None, chances: dict | None = None, **options):
        self.transactions: list[tuple[str, list[str], bytes]] = []
        self.limit, self.greylist, self.refused, self.seen = limit, greylist, refused, set()
        self.rng, self.chances = rng, {"greylist": 0.0, "busy": 0.0, "stall": 0.0, **(chances or {})}
        self.lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)
        self.controller.start()

    def _chance(self, name: str) -> bool:
        with self.lock:
            return self.rng is not None and self.rng.random() < self.chances[name]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return "550 5.1.1 no such user here"
        if address not in self.seen and (self.greylist or self._chance("greylist")):
            self.seen.add(address)
            return "451 4.7.1 greylisted, try again in a moment"
        if self.limit is not None and len(envelope.rcpt_tos) >= self.limit:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self._chance("stall"):
            await asyncio.sleep(3.0)  # a slow relay: the client waits, within its timeout
        if self._chance("busy"):
            return "421 4.3.2 system busy, try again later"
        with self.lock:
            self.transactions.append((envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content))
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()
