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

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from . import endpoints as endpoints_mod
from . import engine, files, locks, normalise, protocol, store
from .files import open_regular
from .store import transaction

log = logging.getLogger("syncengine.notify")

HEARTBEAT_SECONDS = 1.0
CONTENT_CHUNK = 512 << 10  # bytes of a message in one content reply
CONTENT_OPEN = 32          # content transfers in flight in all (a reply sent, not yet shown read) ...
CONTENT_OPEN_PER_CLIENT = 4  # ... and per CURVE client
CONTENT_EXPIRY = 300.0     # seconds after which a transfer never continued frees its place
PAGE = 5000                # deltas in one catch-up reply, across its mailboxes
CHECK_SECONDS = 0.05       # how often to look for deltas committed by other processes
BUSY_MS = 100              # a request's write waits this long for another writer before it is retried
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
                 context: zmq.Context | None = None, forward: Forward | None = None,
                 check_seconds: float = CHECK_SECONDS):
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
        self._reply_endpoint = f"inproc://syncengine-replies-{id(self)}"
        self.forward = forward  # the daemon runs event requests on its writer, never on this loop
        self.check_seconds = check_seconds
        self._topics: dict[str, bytes] = {}  # topic bytes per mailbox, built once
        # N5: content in flight, per peer: (token the next request must echo, user, when).
        # A reply is in flight until the peer shows it read it by echoing its token.
        self._content: dict[bytes, tuple[str, str | None, float]] = {}
        self._admin_peers: set[bytes] = set()  # waiting for a forwarded command's answer on the local channel
        self._bind()

    # --- set-up -------------------------------------------------------------------------------

    def _take_lock(self):
        """One engine per store: a second server must not silently take over the ipc path."""
        try:
            return locks.hold(Path(str(self.db_path.absolute()) + ".d") / "serve.lock")
        except locks.Held as held:
            raise ServeError(f"{self.db_path}: already served by {held}") from None

    def _bind(self) -> None:
        ctx = self.context
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 2 * PAGE + 16)  # a whole reply queues without EAGAIN
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES)  # N5: a bigger one drops the peer
        self.router.setsockopt(zmq.LINGER, 0)
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_MANUAL, 1)
        self.pub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_SUBSCRIPTION_BYTES)
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
        self.admin = self._local_admin() if self.endpoints.is_tcp and self.forward is not None else None
        self.wake_pull = ctx.socket(zmq.PULL)
        self.wake_pull.bind(self._wake_endpoint)
        self.reply_pull = ctx.socket(zmq.PULL)
        self.reply_pull.bind(self._reply_endpoint)

    def _local_admin(self) -> zmq.Socket | None:
        """Beside a tcp endpoint, the owner's private local channel for the command line: the
        store's own ipc socket (0600, in an owner-only folder), which the command line finds
        from the store's path. None where the platform has no ipc (Windows): the command
        line then writes to the store itself, which SQLite serialises with the daemon."""
        local = endpoints_mod.for_store(self.db_path, None)
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        previous = os.umask(0o077)
        try:
            endpoints_mod.prepare_ipc(local)
            path = Path(local.router[len("ipc://"):])
            path.unlink(missing_ok=True)  # left by a daemon that died; the lock says none runs
            sock.bind(local.router)
            os.chmod(path, 0o600)
        except (zmq.ZMQError, OSError, endpoints_mod.EndpointError) as exc:
            sock.close(linger=0)
            log.warning("no local channel for the command line (%s): it writes to the store itself", exc)
            return None
        finally:
            os.umask(previous)
        return sock

    def _drain_admin(self) -> None:
        """The local channel takes the owner's commands (and status), nothing else."""
        for frames in drain(self.admin, copy=False):
            identity, body = frames[0].bytes, frames[-1].bytes
            try:
                request = protocol.parse(body)
                if isinstance(request, protocol.Admin):
                    self._admin_peers.add(identity)
                    self.forward(request, identity)
                    replies = [{"op": "working"}]
                elif isinstance(request, protocol.Status):
                    replies = [self._status(request, None)]
                else:
                    replies = [_error("this local channel takes the owner's commands only", body)]
            except protocol.RequestError as exc:
                replies = [_error(f"bad request: {exc}", body)]
            try:
                for reply in replies:
                    self.admin.send_multipart([identity, json.dumps(reply).encode()], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # --- running --------------------------------------------------------------------------------

    def waker(self) -> "Waker":
        """For an engine in the same process: tell the server, after a commit, to publish."""
        return Waker(self.context, self._wake_endpoint)

    def replier(self) -> "Replier":
        """For the thread that runs forwarded requests: answer them through the server."""
        return Replier(self.context, self._reply_endpoint)

    def stop(self) -> None:
        self._stop.set()

    def _open(self) -> None:
        self.db = store.connect(self.db_path)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")  # heartbeats never wait long on another writer
        self._acks: list[tuple[bytes, protocol.Ack, str]] = []  # checked, waiting for their commit
        self.published = self.db.execute("SELECT coalesce(max(seq), 0) FROM deltas").fetchone()[0]
        self.store_id = store.identity(self.db.conn)
        self.latest = dict(self.db.execute("SELECT mailbox, max(mailbox_seq) FROM deltas GROUP BY mailbox").fetchall())
        self._data_version = self._version()

    def serve_forever(self) -> None:
        self._open()
        poller = zmq.Poller()
        for sock in (self.router, self.pub, self.wake_pull, self.reply_pull, *self.monitors):
            poller.register(sock, zmq.POLLIN)
        if self.admin is not None:
            poller.register(self.admin, zmq.POLLIN)
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
                if self.reply_pull in ready:
                    for identity, *bodies in drain(self.reply_pull):
                        self._reply(identity, bodies)
                        self.publish_new()
                if self.router in ready:
                    self._drain_requests()
                if self.admin is not None and self.admin in ready:
                    self._drain_admin()
                if self.pub in ready:
                    self._drain_subscriptions()
                for monitor in self.monitors:
                    if monitor in ready:
                        self._log_refusal(recv_monitor_message(monitor))
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.check_seconds
                    if self._acks:  # the store was busy: try again, they are idempotent
                        self._commit_acks()
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
        for sock in (*self.monitors, self.router, self.pub, self.wake_pull, self.reply_pull, self.admin):
            if sock is not None:
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
            send, more, topics = self.pub.send, zmq.SNDMORE, self._topics
            for mailbox, mailbox_seq, body in rows:
                name = topics.get(mailbox)
                if name is None:
                    name = topics[mailbox] = topic(mailbox)
                send(name, more)
                send(body)
                self.latest[mailbox] = mailbox_seq
            self.published += len(rows)  # seq is gap-free
            sent += len(rows)

    def _heartbeat(self) -> None:
        """`heartbeat` for liveness; `beat.<mailbox>` with that mailbox's counter, which a
        CURVE subscriber receives only for the mailboxes it may see. On ipc (one user)
        `heartbeat` carries every counter too, as formats.md has it."""
        every = {} if self.curve else self.latest
        self.pub.send_multipart([b"heartbeat", json.dumps({"seq": self.published, "mailboxes": every}).encode()])
        for mailbox, latest in self.latest.items():
            self.pub.send_multipart([beat_topic(mailbox), json.dumps({"mailboxes": {mailbox: latest}}).encode()])

    def _drain_subscriptions(self) -> None:
        for (frame,) in drain(self.pub, copy=False):
            data = frame.bytes
            if not data or data[0] not in (0, 1):
                continue
            subscribe, prefix = data[0] == 1, data[1:]
            if not subscribe:  # leaving never needs permission (libzmq sends these itself)
                self.pub.setsockopt(zmq.UNSUBSCRIBE, prefix)
                continue
            allowed = self._may_subscribe(prefix, _user_id(frame) if self.curve else None)
            if not allowed:
                log.warning("refused subscription to %s by %s", files.shown(prefix.decode(errors="replace")),
                            _user_id(frame) or "an unauthenticated peer")
                continue
            self.pub.setsockopt(zmq.SUBSCRIBE, prefix)

    def _may_subscribe(self, prefix: bytes, user: str | None) -> bool:
        """On ipc the socket's 0600 mode is the boundary; with CURVE a subscriber sees
        heartbeats and the mailboxes its key's address may see (C18 delegates)."""
        if not self.curve:
            return True
        if user is None:
            return False
        if prefix == b"heartbeat":
            return True
        kind, _, rest = prefix.partition(b".")
        if kind not in (b"delta", b"beat") or not rest.endswith(b"\0"):
            return False
        mailbox = rest[:-1].decode(errors="replace")
        return engine.directory_at(self.db.conn, time.time()).may_see(user, mailbox)

    def _log_refusal(self, event: dict) -> None:
        names = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed",
                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol or mechanism mismatch (plain tcp?)",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (no CURVE, or not ZMTP)"}
        log.warning("refused a connection on %s: %s", event.get("endpoint", b"").decode(errors="replace"),
                    names.get(event["event"], event["event"]))

    # --- requests -------------------------------------------------------------------------------

    def _drain_requests(self) -> None:
        """Answer every waiting request. Acks of one burst commit in one transaction (one
        fsync, N1) before any of them is answered; a failing request never stops the loop."""
        for frames in drain(self.router, copy=False):
            identity, body = frames[0].bytes, frames[-1]
            user = _user_id(body) if self.curve else None
            try:
                request = protocol.parse(body.bytes)
                if isinstance(request, protocol.Ack):
                    self._acks.append((identity, request, self._check_ack(request, user)))
                    continue
                replies = self.handle(request, user, identity)
            except protocol.RequestError as exc:
                replies = [_error(f"bad request: {exc}", body.bytes)]
            except store.StoreBusy:
                replies = [_error("the store is busy; send the request again", body.bytes)]
            except Exception:  # N5: log it here; the peer learns nothing of our internals
                log.exception("a request failed")
                replies = [_error("internal error; the request was not applied", body.bytes)]
            self._reply(identity, replies)
        if self._acks:
            self._commit_acks()

    def _reply(self, identity: bytes, replies: list) -> None:
        sock = self.router
        if identity in self._admin_peers:  # a forwarded command that came on the local channel
            self._admin_peers.discard(identity)
            sock = self.admin
        for reply in replies:
            frames = reply if isinstance(reply, list) else [reply]
            frames = [f if isinstance(f, bytes) else json.dumps(f).encode() for f in frames]
            try:
                sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # gone, or its queue is full: it will say hello again
                log.info("stopped replying to a client: %s", exc)
                return

    def handle(self, request: protocol.Request, user: str | None, identity: bytes = b"") -> list:
        """The replies to one validated request: dicts, deltas as their stored JSON lines,
        or a list of frames (content). A forwarded request is answered later."""
        if isinstance(request, protocol.Hello):
            return self._hello(request, user)
        if isinstance(request, protocol.Status):
            return [self._status(request, user)]
        if isinstance(request, protocol.Content):
            return self._content_reply(request, user, identity)
        if isinstance(request, protocol.Admin):
            if self.curve is not None:
                return [{"op": "error", "reason": "admin requests only over the store's own ipc sockets"}]
            if self.forward is None:
                return [{"op": "error", "reason": "no daemon holds this store; run the command without one"}]
            self.forward(request, identity)
            return [{"op": "working"}]  # at once: the command line knows the daemon has it
        return self._event(request, user, identity)

    def _client(self, client: str, user: str | None) -> tuple[str, str]:
        """The client id and the address it acts for: with CURVE, the key's address."""
        try:
            claimed = normalise.mailbox(client.split("/", 1)[0])
        except ValueError as exc:
            raise protocol.RequestError(f"client: {exc}") from None
        if user is not None and claimed != user:
            raise protocol.RequestError("client does not match the address bound to its key")
        return client, user or claimed

    def _refused(self, address: str, mailboxes: list[str]) -> dict | None:
        view = engine.directory_at(self.db.conn, time.time())
        for mailbox in mailboxes:
            if not view.may_see(address, mailbox):
                log.warning("refused %s access to mailbox %s", address, mailbox)
                return {"op": "error", "reason": f"{address} may not see mailbox {mailbox}: "
                                                 "its own and delegated mailboxes only"}
        return None

    def _hello(self, request: protocol.Hello, user: str | None) -> list:
        """Catch-up in the order of `mailboxes`, at most PAGE deltas in all, then caught_up
        (always sent: the reply fits the ROUTER's queue, which holds two pages)."""
        client, address = self._client(request.client, user)
        refusal = self._refused(address, request.mailboxes)
        if refusal:
            return [refusal]
        view = engine.directory_at(self.db.conn, time.time())
        for mailbox in request.mailboxes:  # deltas name the primary: following an alias would hear nothing
            if view.primary(mailbox) != mailbox:
                return [{"op": "error", "reason": f"{mailbox} is an alias of {view.primary(mailbox)}; "
                                                  f"follow {view.primary(mailbox)}"}]
        since = request.since or {}
        replies: list = []
        last = {}
        for mailbox in request.mailboxes:
            if mailbox in since:
                start = since[mailbox]
            else:
                row = self.db.execute("SELECT mailbox_seq FROM client_acks WHERE client = ? AND mailbox = ?",
                                      (client, mailbox)).fetchone()
                start = row[0] if row else 0
            lines = engine.deltas_for(self.db, mailbox, start, PAGE - len(replies)) if len(replies) < PAGE else []
            replies.extend(lines)
            last[mailbox] = start + len(lines)  # mailbox_seq is gap-free
        return replies + [{"op": "caught_up", "mailboxes": last, "store": self.store_id}]

    def _check_ack(self, request: protocol.Ack, user: str | None) -> str:
        """N5: the client may see the mailbox, and the ack is within 0..latest."""
        client, address = self._client(request.client, user)
        refusal = self._refused(address, [request.mailbox])
        if refusal:
            raise protocol.RequestError(refusal["reason"])
        latest = self.db.execute("SELECT coalesce(max(mailbox_seq), 0) FROM deltas WHERE mailbox = ?",
                                 (request.mailbox,)).fetchone()[0]
        if request.mailbox_seq > latest:
            raise protocol.RequestError(f"mailbox_seq {request.mailbox_seq} is beyond the latest delta "
                                        f"of {request.mailbox} ({latest})")
        return client

    def _commit_acks(self) -> None:
        """Every checked ack in one durable transaction, then each `acked` reply. When
        another process holds the store, they wait for the next tick (no reply yet)."""
        acks = self._acks
        try:
            with transaction(self.db.conn, busy_wait=0) as conn:
                conn.executemany(
                    "INSERT INTO client_acks VALUES (?, ?, ?, ?) ON CONFLICT (client, mailbox) DO UPDATE"
                    " SET mailbox_seq = max(mailbox_seq, excluded.mailbox_seq), acked_at = excluded.acked_at",
                    [(client, a.mailbox, a.mailbox_seq, time.time()) for _, a, client in acks])
        except store.StoreBusy:
            return
        except sqlite3.OperationalError as exc:  # a full disk: rolled back; the server serves on
            log.error("acks not recorded: the store could not be written (%s); their clients are told", exc)
            self._acks = []
            reason = f"the store could not be written ({exc}); the ack did not count: send it again later"
            for identity, ack, _ in acks:
                self._reply(identity, [{"op": "error", "reason": reason, "request": "ack"}])
            return
        self._acks = []
        for identity, ack, _ in acks:
            self._reply(identity, [{"op": "acked", "mailbox": ack.mailbox, "mailbox_seq": ack.mailbox_seq}])

    def _status(self, request: protocol.Status, user: str | None) -> dict:
        """Only the events and errors of mailboxes the client may see (N5); on ipc without
        a client id, the owner's view of everything."""
        info = engine.status(self.db)
        if user is None and request.client is None:
            return {"op": "status", **info, "published": self.published}
        _, address = self._client(request.client or user, user)
        view = engine.directory_at(self.db.conn, time.time())
        events = []
        for item in info["events"]:
            visible = [m for m in item["mailboxes"] if view.may_see(address, m)]
            if visible:
                events.append({**item, "mailboxes": visible,
                               "report": {m: c for m, c in item["report"].items() if m in visible}})
        errors = [e for e in info["last_errors"] if e.get("mailbox") and view.may_see(address, e["mailbox"])]
        return {"op": "status", "events": events, "last_errors": errors, "waiting": [
            w for w in info.get("waiting", []) if view.may_see(address, w["mailbox"])]}

    def _content_reply(self, request: protocol.Content, user: str | None, identity: bytes) -> list:
        """The bytes a deliver or send delta names, for a client that cannot read the
        engine's files: a JSON header frame, then up to CONTENT_CHUNK bytes from `offset`.
        N5: one reply in flight per peer. Each header carries a token that the peer's next
        content request must echo, which only a peer that read the reply can do; a peer
        that never reads gets one chunk queued, and CONTENT_OPEN transfers at most are in
        flight in all, so a flood of requests cannot grow the server."""
        _, address = self._client(request.client, user)
        refusal = self._refused(address, [request.mailbox])
        if refusal:
            return [refusal]
        now = time.monotonic()
        for peer, (_, _, at) in list(self._content.items()):
            if now - at > CONTENT_EXPIRY:
                del self._content[peer]
        held = self._content.get(identity)
        if held is not None and request.token != held[0]:
            return [{"op": "error", "reason": "one content reply at a time: read the last one and send its token"}]
        if held is None and (len(self._content) >= CONTENT_OPEN or (user is not None and sum(
                1 for _, who, _ in self._content.values() if who == user) >= CONTENT_OPEN_PER_CLIENT)):
            return [{"op": "error", "reason": "too many content transfers at once; try again in a moment"}]
        self._content.pop(identity, None)
        row = self.db.execute("SELECT content, source, action FROM deltas WHERE mailbox = ? AND mailbox_seq = ?",
                              (request.mailbox, request.mailbox_seq)).fetchone()
        if row is None:
            return [{"op": "error", "reason": f"no delta {request.mailbox_seq} for {request.mailbox}"}]
        path = row[0]
        if path is None and row[2] == "deliver" and row[1].startswith("mimecast:"):
            # delivered before Mimecast gave its part: the poller may have fetched it since
            found = self.db.execute("SELECT content FROM entries WHERE entry_id = ? AND content IS NOT NULL LIMIT 1",
                                    (row[1][len("mimecast:"):],)).fetchone()
            path = found[0] if found else None
        if path is None:
            return [{"op": "error", "reason": "that delta has no content yet (content: null)"}]
        try:
            with open_regular(Path(path)) as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(min(request.offset, size))
                data = handle.read(CONTENT_CHUNK)
        except OSError:
            return [{"op": "error", "reason": "the content file is no longer readable"}]
        token = os.urandom(12).hex()
        self._content[identity] = (token, user, now)
        return [[{"op": "content", "mailbox": request.mailbox, "mailbox_seq": request.mailbox_seq, "size": size,
                  "offset": request.offset, "length": len(data), "token": token}, data]]

    def _event(self, request: protocol.StartEvent | protocol.EndEvent, user: str | None,
               identity: bytes) -> list[dict]:
        _, address = self._client(request.client, user)
        now = engine.wall_clock()
        try:
            covered = request.mailboxes if isinstance(request, protocol.StartEvent) else \
                engine.event_mailboxes(self.db.conn, request.event)
            refusal = self._refused(address, covered)  # N5: ending is as much an act on them as starting
            if refusal:
                return [refusal]
            if self.forward is not None:
                self.forward(request, identity)
                return []
            if isinstance(request, protocol.StartEvent):
                written = engine.start_event(self.db, request.event, request.mailboxes,
                                             request.expand_distribution_lists, now, request.no_local_mail)
                self.publish_new()
                return [{"op": "event_started", "event": request.event, "deltas": len(written)}]
            engine.end_event(self.db, request.event, now)
            return [{"op": "event_ending", "event": request.event}]
        except engine.EngineError as exc:
            return [{"op": "error", "reason": str(exc)}]


def _error(reason: str, body: bytes) -> dict:
    """An error reply, naming the op it answers when the request got that far."""
    reply = {"op": "error", "reason": reason}
    try:
        op = json.loads(body).get("op")
    except (ValueError, AttributeError, RecursionError):
        op = None
    if isinstance(op, str) and op in protocol.OPS:
        reply["request"] = op
    return reply


def _user_id(frame: zmq.Frame) -> str | None:
    """The address bound to the peer's CURVE key; None for frames libzmq made itself
    (an XPUB unsubscribe when a peer leaves carries no metadata)."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, KeyError, UnicodeDecodeError):
        return None


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


def beat_topic(mailbox: str) -> bytes:
    return f"beat.{mailbox}".encode() + b"\0"


Forward = Callable[[protocol.Request, bytes], None]


class Replier:
    """Answers forwarded requests from the thread that ran them (a socket per thread)."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.sock = context.socket(zmq.PUSH)
        self.sock.connect(endpoint)

    def __call__(self, identity: bytes, replies: list[dict]) -> None:
        self.sock.send_multipart([identity, *(json.dumps(r).encode() for r in replies)])

    def close(self) -> None:
        self.sock.close(linger=0)


class Waker:
    """Lets an engine in the same process tell the server to publish, right after a commit."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.sock = context.socket(zmq.PUSH)
        self.sock.connect(endpoint)

    def __call__(self) -> None:
        self.sock.send(b"", flags=zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(linger=0)
