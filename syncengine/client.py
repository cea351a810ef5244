"""A plugin client of the notification server (docs/protocol.md), for Python programs.

    with Client(endpoints.for_store(Path("alice.db")), "alice@acme.example/outlook",
                ["alice@acme.example"]) as client:
        for delta in client.deltas():
            apply(delta)
            client.ack(delta["mailbox"], delta["mailbox_seq"])

It subscribes first, then says hello; it hands each delta over once and in
`mailbox_seq` order, whether it came from the catch-up or from the live feed; on a
gap it says hello again from the last one it handed over; five seconds without a
heartbeat mean a dead engine, and it reconnects and catches up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import msgspec
import zmq

from .endpoints import Endpoints
from .notify import beat_topic, drain, topic

log = logging.getLogger("syncengine.client")

_DECODE = msgspec.json.Decoder().decode  # several times json.loads' speed on the hot path
DEAD_AFTER = 5.0       # seconds without a heartbeat
HELLO_TIMEOUT = 5.0    # seconds without a reply to hello before saying it again
SILENT_NOTICE = 3.0    # seconds of nothing at all from the start before saying so (a heartbeat comes every 1 s)


class ClientError(Exception):
    """The server refused the client (an `error` reply); the text is its reason."""


class Client:
    def __init__(self, endpoints: Endpoints, client: str, mailboxes: list[str],
                 since: dict[str, int] | None = None, curve: tuple[bytes, bytes, bytes] | None = None,
                 dead_after: float = DEAD_AFTER, context: zmq.Context | None = None, serving: str | None = None):
        """`curve` is (server public key, client public key, client secret key). `serving`
        says what is missing when nothing answers (a WARNING after SILENT_NOTICE seconds:
        a client that waits silently on a mistyped store looks hung)."""
        self.endpoints = endpoints
        self.client = client
        self.mailboxes = list(mailboxes)
        self.last = dict.fromkeys(self.mailboxes, 0)
        self._since_given = since is not None
        if since:
            self.last.update(since)
        self.curve = curve
        self.dead_after = dead_after
        self.context = context or zmq.Context.instance()
        self.acked: dict[str, int] = {}
        self.reconnects = 0
        self.store: str | None = None  # the engine's store id (caught_up), once known
        self._held: list[dict] = []    # a catch-up's deltas, handed over once caught_up names the store
        self._sub = self._dealer = None
        self.serving = serving or "no engine answers there"
        self._silent_since: float | None = time.monotonic()  # None once the engine has answered
        self._noticed = False
        self._connect()

    # --- connection ---------------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.curve
        return sock

    def _connect(self) -> None:
        self._sub = self._socket(zmq.SUB)
        self._sub.connect(self.endpoints.pub)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        for mailbox in self.mailboxes:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic(mailbox))
            self._sub.setsockopt(zmq.SUBSCRIBE, beat_topic(mailbox))
        self._dealer = self._socket(zmq.DEALER)
        self._dealer.connect(self.endpoints.router)
        self._heard = time.monotonic()
        self._hello()

    def _hello(self) -> None:
        request = {"op": "hello", "client": self.client, "mailboxes": self.mailboxes}
        if self._since_given or any(self.last.values()):
            request["since"] = dict(self.last)
        self._send(request)
        self._catching_up = True
        self._hello_sent = time.monotonic()
        self._fetched = 0  # catch-up deltas handed over since this hello

    def _send(self, request: dict) -> None:
        self._dealer.send(json.dumps(request).encode())

    def reconnect(self) -> None:
        """The engine is gone (or restarted): new sockets, then hello from where we are."""
        self.reconnects += 1
        for sock in (self._sub, self._dealer):
            sock.close(linger=0)
        self._connect()

    def close(self) -> None:
        for sock in (self._sub, self._dealer):
            if sock is not None:
                sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- receiving ----------------------------------------------------------------------------

    def deltas(self, timeout: float | None = None, tick: float | None = None) -> Iterator[dict | None]:
        """Each delta once, in order; stops after `timeout` seconds without one (None: never).
        With `tick`, also None at least every `tick` seconds, so the caller can do its own
        timed work (retries) between deltas."""
        poller = zmq.Poller()
        registered = None
        idle_since = ticked = time.monotonic()
        while True:
            if registered != (self._sub, self._dealer):
                poller = zmq.Poller()
                poller.register(self._sub, zmq.POLLIN)
                poller.register(self._dealer, zmq.POLLIN)
                registered = (self._sub, self._dealer)
            ready = dict(poller.poll(100))
            handed = False
            if ready and self._silent_since is not None:
                self._answered()
            if self._dealer in ready:
                for reply in drain(self._dealer):
                    for delta in self._on_reply(_DECODE(reply[0])):
                        handed = True
                        yield delta
            if self._sub in ready:
                self._heard = time.monotonic()  # once per batch: this loop is the live hot path
                for name, body in drain(self._sub):
                    delta = self._on_feed(name, body)
                    if delta is not None:
                        handed = True
                        yield delta
            now = time.monotonic()
            if handed:
                idle_since = now
            if not self._noticed and self._silent_since is not None and now - self._silent_since > SILENT_NOTICE:
                self._noticed = True
                log.warning("nothing answers on %s after %.0f s: %s; still trying", self.endpoints.router,
                            now - self._silent_since, self.serving)
            if now - self._heard > self.dead_after:
                log.info("no heartbeat for %.1fs: reconnecting", now - self._heard)
                self.reconnect()
            elif self._catching_up and now - self._hello_sent > HELLO_TIMEOUT:
                self._hello()
            if timeout is not None and now - idle_since > timeout:
                return
            if tick is not None and now - ticked >= tick:
                ticked = now
                yield None

    @property
    def answered(self) -> bool:
        """Whether the engine has said anything since this client started."""
        return self._silent_since is None

    def _answered(self) -> None:
        self._silent_since = None
        if self._noticed:
            log.warning("%s answers now", self.endpoints.router)

    def _accept(self, delta: dict, caught_up: bool = False) -> dict | None:
        """Hand over `delta` if it is the next one. A catch-up reply is contiguous from
        where the server started (the `since` we sent, or our last ack), so it may set
        the base; a live delta must follow the last one handed over, or it is a gap."""
        mailbox, seq = delta["mailbox"], delta["mailbox_seq"]
        if mailbox not in self.last or seq <= self.last[mailbox]:
            return None  # already handed over
        if seq == self.last[mailbox] + 1 or caught_up:
            self.last[mailbox] = seq
            self._fetched += caught_up
            return delta
        if not self._catching_up:
            log.info("gap in %s: %d after %d; saying hello again", mailbox, seq, self.last[mailbox])
            self._hello()
        return None

    def _on_reply(self, reply: dict) -> Iterator[dict]:
        op = reply.get("op")
        if op is None:  # a catch-up delta: held until caught_up says which store it is from
            delta = self._accept(reply, caught_up=True)
            if delta is not None:
                self._held.append(delta)
        elif op == "caught_up":
            store = reply.get("store")
            if self.store is not None and store != self.store:
                # another store answers under this name (rebuilt, or a new one): its numbering is
                # its own. Nothing held is from it; start again from its beginning.
                log.warning("the engine's store changed (%s, was %s): catching up from its start", store, self.store)
                self.store, self._held = store, []
                self.last = dict.fromkeys(self.mailboxes, 0)
                self._since_given = True
                self._hello()
                return
            self.store = store
            self._catching_up = False
            for mailbox, seq in reply["mailboxes"].items():  # where the server started, when it sent none
                if mailbox in self.last:
                    self.last[mailbox] = max(self.last[mailbox], seq)
            held, self._held = self._held, []
            yield from held
            if self._fetched:  # a page, or the feed moved on meanwhile: ask until one comes back empty
                self._hello()
        elif op == "acked":
            self.acked[reply["mailbox"]] = max(self.acked.get(reply["mailbox"], 0), reply["mailbox_seq"])
            log.info("acked %s %d (durable)", reply["mailbox"], reply["mailbox_seq"])
        elif op == "error" and reply.get("request") == "ack":
            log.warning("an ack was refused (%s); the next ack covers it", reply.get("reason"))
        elif op == "error":
            raise ClientError(reply.get("reason", "refused"))

    def _on_feed(self, name: bytes, body: bytes) -> dict | None:
        if name[0] == 0x64:  # "delta.": the hot path, checked first
            if self._catching_up:
                return None  # not even decoded: the catch-up repeats until it brings nothing new
            return self._accept(_DECODE(body))
        if name == b"heartbeat" or name.startswith(b"beat."):
            beat = _DECODE(body)
            if not self._catching_up and any(beat["mailboxes"].get(m, 0) > self.last[m] for m in self.mailboxes):
                self._hello()  # the last delta before a quiet spell was lost
        return None

    # --- requests -----------------------------------------------------------------------------

    def fetch_content(self, mailbox: str, mailbox_seq: int, timeout: float = 30.0) -> bytes | None:
        """The bytes a deliver or send delta names, over the protocol (`content`), for a
        client that cannot read the engine's files; None when the engine has none (yet).
        The server sends a chunk at a time, each with a token the next request echoes."""
        dealer = self._socket(zmq.DEALER)
        parts: list[bytes] = []
        try:
            dealer.connect(self.endpoints.router)
            offset, token = 0, None
            while True:
                request = {"op": "content", "client": self.client, "mailbox": mailbox, "mailbox_seq": mailbox_seq,
                           "offset": offset}
                if token:
                    request["token"] = token
                dealer.send(json.dumps(request).encode())
                if not dealer.poll(int(timeout * 1000)):
                    return None
                frames = dealer.recv_multipart()
                header = _DECODE(frames[0])
                if header.get("op") != "content" or len(frames) != 2 or header.get("offset") != offset:
                    return None
                parts.append(frames[1])
                offset, token = offset + len(frames[1]), header.get("token")
                if offset >= header.get("size", 0) or not frames[1]:
                    return b"".join(parts)
        finally:
            dealer.close(linger=0)

    def ack(self, mailbox: str, mailbox_seq: int) -> None:
        """Acknowledge a delta as applied; the server makes it durable and answers `acked`."""
        self._send({"op": "ack", "client": self.client, "mailbox": mailbox, "mailbox_seq": mailbox_seq})

    def run(self, callback: Callable[[dict], None], ack: bool = True) -> None:
        """Call `callback` for every delta, then acknowledge it, until interrupted."""
        for delta in self.deltas():
            callback(delta)
            if ack:
                self.ack(delta["mailbox"], delta["mailbox_seq"])
