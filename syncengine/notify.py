"""The notification server: the ZeroMQ guide's Clone pattern, made durable by the log.

- PUB (an XPUB in manual mode, so that each subscription can be checked against what
  the subscriber may see): `delta.<mailbox>\\0` + the delta, `heartbeat` about once a
  second with the latest `seq` and each mailbox's latest `mailbox_seq`.
- ROUTER: JSON requests from DEALER clients: hello (catch-up), ack, status,
  start_event, end_event. docs/protocol.md is the wire protocol.

The delta log in SQLite is the record; the sockets only carry it. Under burst PUB
drops at the high-water mark, clients see the gap in `mailbox_seq` and catch up over
the ROUTER, a page at a time, at their own pace.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from . import endpoints as endpoints_mod
from . import engine, normalise, store
from .store import transaction

log = logging.getLogger("syncengine.notify")

HEARTBEAT_SECONDS = 1.0
PAGE = 5000                # deltas per mailbox in one catch-up reply
CHECK_SECONDS = 0.05       # how often to look for deltas committed by other processes
ZAP_DOMAIN = b"syncengine"


class ServeError(Exception):
    """The server cannot start; the text says why."""


@dataclass
class Curve:
    folder: Path           # server.key_secret, and clients/*.key: the allow-list


class _KeyAuthenticator(ThreadAuthenticator):
    """CURVE: a key is allowed when its certificate is in the allow-list, and the
    address bound to it becomes the connection's User-Id."""

    def __init__(self, context: zmq.Context, allowed: dict[bytes, str]):
        super().__init__(context, log=logging.getLogger("syncengine.auth"))
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        log.warning("refused a client: CURVE key %s is not in the allow-list", key.decode())
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowed[zmq.utils.z85.encode(client_public_key)]


class Server:
    def __init__(self, db_path: Path, endpoint: str | None = None, curve: Curve | None = None,
                 context: zmq.Context | None = None):
        self.db_path = Path(db_path)
        self.endpoints = endpoints_mod.for_store(self.db_path, endpoint)
        if self.endpoints.is_tcp and curve is None:
            raise ServeError(f"{self.endpoints.router}: tcp endpoints need CURVE keys (--keys DIR)")
        self.curve = curve
        self.context = context or zmq.Context.instance()
        store.connect(self.db_path).conn.close()  # fail here, not in the loop, on a bad store
        self.db = None  # opened by the thread that serves: SQLite connections stay in their thread
        self._lock = self._take_lock()
        self._auth = None
        self._stop = threading.Event()
        self._wake_endpoint = f"inproc://syncengine-wake-{id(self)}"
        self._bind()

    # --- set-up -------------------------------------------------------------------------------

    def _take_lock(self):
        """One engine per store: a second server must not silently take over the ipc path."""
        folder = Path(str(self.db_path.absolute()) + ".d")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(folder / "serve.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ServeError(f"{self.db_path}: already served by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    def _bind(self) -> None:
        ctx = self.context
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 4 * PAGE)  # a whole page queues without EAGAIN
        self.router.setsockopt(zmq.LINGER, 0)
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.pub.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            allowed = endpoints_mod.allowed_clients(self.curve.folder)
            self._auth = _KeyAuthenticator(ctx, allowed)
            self._auth.start()
            self._auth.configure_curve_callback(ZAP_DOMAIN.decode(), self._auth)
            public, secret = endpoints_mod.load_secret(self.curve.folder / f"{endpoints_mod.SERVER_CERT}.key_secret")
            for sock in (self.router, self.pub):
                sock.curve_server = True
                sock.curve_publickey = public
                sock.curve_secretkey = secret
                sock.zap_domain = ZAP_DOMAIN
        self.monitors = [sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                 | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                 | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
                         for sock in (self.router, self.pub)]
        endpoints_mod.prepare_ipc(self.endpoints)
        previous = os.umask(0o077)  # ipc sockets are created 0600, with no window
        try:
            for path in self.endpoints.ipc_paths():
                path.unlink(missing_ok=True)  # left by a server that died; the lock says none runs
            self.router.bind(self.endpoints.router)
            self.pub.bind(self.endpoints.pub)
            for path in self.endpoints.ipc_paths():
                os.chmod(path, 0o600)
        except zmq.ZMQError as exc:
            raise ServeError(f"cannot bind {self.endpoints.router}: {exc}") from None
        finally:
            os.umask(previous)
        self.wake_pull = ctx.socket(zmq.PULL)
        self.wake_pull.bind(self._wake_endpoint)

    def _version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # --- running --------------------------------------------------------------------------------

    def waker(self) -> "Waker":
        """For an engine in the same process: tell the server, after a commit, to publish."""
        return Waker(self.context, self._wake_endpoint)

    def stop(self) -> None:
        self._stop.set()

    def _open(self) -> None:
        self.db = store.connect(self.db_path)
        self.published = self.db.execute("SELECT coalesce(max(seq), 0) FROM deltas").fetchone()[0]
        self.latest = dict(self.db.execute("SELECT mailbox, max(mailbox_seq) FROM deltas GROUP BY mailbox").fetchall())
        self._data_version = self._version()

    def serve_forever(self) -> None:
        self._open()
        poller = zmq.Poller()
        for sock in (self.router, self.pub, self.wake_pull, *self.monitors):
            poller.register(sock, zmq.POLLIN)
        next_beat = 0.0
        next_check = 0.0
        self.publish_new()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                timeout = max(0.0, min(next_beat, next_check) - now)
                ready = dict(poller.poll(timeout * 1000))
                if self.wake_pull in ready:
                    for _ in drain(self.wake_pull):
                        pass
                    self.publish_new()
                if self.router in ready:
                    self._drain_requests()
                if self.pub in ready:
                    self._drain_subscriptions()
                for monitor in self.monitors:
                    if monitor in ready:
                        self._log_refusal(recv_monitor_message(monitor))
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + CHECK_SECONDS
                    version = self._version()
                    if version != self._data_version:  # another process committed
                        self._data_version = version
                        self.publish_new()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_SECONDS
                    self._heartbeat()
        finally:
            self.close()

    def close(self) -> None:
        for sock in (*self.monitors, self.router, self.pub, self.wake_pull):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self.db is not None:
            self.db.conn.close()
        self._lock.close()

    # --- publishing -----------------------------------------------------------------------------

    def publish_new(self) -> int:
        sent = 0
        while True:
            rows = engine.delta_lines(self.db, self.published, limit=5000)
            if not rows:
                return sent
            for mailbox, mailbox_seq, body in rows:
                self.pub.send_multipart([topic(mailbox), body])
                self.latest[mailbox] = mailbox_seq
            self.published += len(rows)  # seq is gap-free
            sent += len(rows)

    def _heartbeat(self) -> None:
        body = {"seq": self.published, "mailboxes": self.latest}
        self.pub.send_multipart([b"heartbeat", json.dumps(body).encode()])

    def _drain_subscriptions(self) -> None:
        for (frame,) in drain(self.pub, copy=False):
            data = frame.bytes
            if not data or data[0] not in (0, 1):
                continue
            subscribe, prefix = data[0] == 1, data[1:]
            allowed = self._may_subscribe(prefix, frame.get("User-Id") if self.curve else None)
            if not allowed:
                log.warning("refused subscription to %r by %s", prefix.decode(errors="replace"),
                            frame.get("User-Id") or "an unauthenticated peer")
                continue
            self.pub.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, prefix)

    def _may_subscribe(self, prefix: bytes, user: str | None) -> bool:
        """On ipc the socket's 0600 mode is the boundary; with CURVE a subscriber sees
        heartbeats and the mailboxes its key's address may see (C18 delegates)."""
        if user is None:
            return True
        if prefix == b"heartbeat":
            return True
        if not prefix.startswith(b"delta.") or not prefix.endswith(b"\0"):
            return False
        mailbox = prefix[len(b"delta."):-1].decode(errors="replace")
        return engine.directory_at(self.db.conn, time.time()).may_see(user, mailbox)

    def _log_refusal(self, event: dict) -> None:
        names = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed",
                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol or mechanism mismatch (plain tcp?)",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (no CURVE, or not ZMTP)"}
        log.warning("refused a connection on %s: %s", event.get("endpoint", b"").decode(errors="replace"),
                    names.get(event["event"], event["event"]))

    # --- requests -------------------------------------------------------------------------------

    def _drain_requests(self) -> None:
        for frames in drain(self.router, copy=False):
            identity, body = frames[0].bytes, frames[-1]
            user = body.get("User-Id") if self.curve else None
            try:
                request = json.loads(body.bytes)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                replies = self.handle(request, user)
            except (ValueError, KeyError, TypeError) as exc:
                replies = [{"op": "error", "reason": f"bad request: {exc}"}]
            for reply in replies:
                body = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                try:
                    self.router.send_multipart([identity, body], flags=zmq.NOBLOCK)
                except zmq.ZMQError as exc:  # gone, or its queue is full: it will say hello again
                    log.info("stopped replying to a client: %s", exc)
                    break

    def handle(self, request: dict, user: str | None) -> list[dict | bytes]:
        """The replies to one request: dicts, or deltas as their stored JSON lines."""
        op = request.get("op")
        if op == "hello":
            return self._hello(request, user)
        if op == "ack":
            return self._ack(request, user)
        if op == "status":
            return [{"op": "status", **engine.status(self.db), "published": self.published}]
        if op in ("start_event", "end_event"):
            return self._event(request, user)
        return [{"op": "error", "reason": f"unknown op {op!r}"}]

    def _client(self, request: dict, user: str | None) -> tuple[str, str]:
        """The client id and the address it acts for: with CURVE, the key's address."""
        client = str(request["client"])
        claimed = normalise.address(client.split("/", 1)[0]) or client
        if user is not None and claimed != user:
            raise ValueError(f"client {client!r} does not match the address bound to its key")
        return client, user or claimed

    def _refused(self, address: str, mailboxes: list[str]) -> str | None:
        view = engine.directory_at(self.db.conn, time.time())
        for mailbox in mailboxes:
            if not view.may_see(address, mailbox):
                log.warning("refused %s access to mailbox %s", address, mailbox)
                return f"{address} may not see mailbox {mailbox}: its own and delegated mailboxes only"
        return None

    def _hello(self, request: dict, user: str | None) -> list[dict | bytes]:
        client, address = self._client(request, user)
        mailboxes = [normalise.address(m) or m for m in request["mailboxes"]]
        refusal = self._refused(address, mailboxes)
        if refusal:
            return [{"op": "error", "reason": refusal}]
        since = request.get("since")
        replies, last = [], {}
        for mailbox in mailboxes:
            if since is not None and mailbox in since:
                start = int(since[mailbox])
            else:
                row = self.db.execute("SELECT mailbox_seq FROM client_acks WHERE client = ? AND mailbox = ?",
                                      (client, mailbox)).fetchone()
                start = row[0] if row else 0
            lines = engine.deltas_for(self.db, mailbox, start, PAGE)
            replies.extend(lines)
            last[mailbox] = start + len(lines)  # mailbox_seq is gap-free
        return replies + [{"op": "caught_up", "mailboxes": last}]

    def _ack(self, request: dict, user: str | None) -> list[dict]:
        client, address = self._client(request, user)
        mailbox = normalise.address(request["mailbox"]) or request["mailbox"]
        refusal = self._refused(address, [mailbox])
        if refusal:
            return [{"op": "error", "reason": refusal}]
        seq = int(request["mailbox_seq"])
        with transaction(self.db.conn) as conn:
            conn.execute("INSERT INTO client_acks VALUES (?, ?, ?, ?) ON CONFLICT (client, mailbox) DO UPDATE"
                         " SET mailbox_seq = max(mailbox_seq, excluded.mailbox_seq), acked_at = excluded.acked_at",
                         (client, mailbox, seq, time.time()))
        return [{"op": "acked", "mailbox": mailbox, "mailbox_seq": seq}]

    def _event(self, request: dict, user: str | None) -> list[dict]:
        _, address = self._client(request, user)
        name, now = str(request["event"]), float(int(time.time()))
        try:
            if request["op"] == "start_event":
                mailboxes = [normalise.address(m) or m for m in request["mailboxes"]]
                refusal = self._refused(address, mailboxes)
                if refusal:
                    return [{"op": "error", "reason": refusal}]
                written = engine.start_event(self.db, name, mailboxes,
                                             bool(request.get("expand_distribution_lists")), now)
                self.publish_new()
                return [{"op": "event_started", "event": name, "deltas": len(written)}]
            engine.end_event(self.db, name, now)
            return [{"op": "event_ending", "event": name}]
        except engine.EngineError as exc:
            return [{"op": "error", "reason": str(exc)}]


def drain(sock: zmq.Socket, copy: bool = True):
    """Every message waiting on `sock`, without blocking (socket.poll(0) builds a
    Poller each call, which costs more than the message)."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return


def topic(mailbox: str) -> bytes:
    """The zero byte ends the topic, so subscribing to one address never matches a longer one."""
    return f"delta.{mailbox}".encode() + b"\0"


class Waker:
    """Lets an engine in the same process tell the server to publish, right after a commit."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.sock = context.socket(zmq.PUSH)
        self.sock.connect(endpoint)

    def __call__(self) -> None:
        self.sock.send(b"", flags=zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(linger=0)
