"""A contract server for Mimecast's API: the one test double allowed, standing in for
Mimecast's cloud only. It speaks the documented shapes (the `meta` / `data` / `fail`
envelope, `meta.pagination.pageSize/pageToken/next`, failures with HTTP 200 and
`fail[]`), checks API 2.0 bearer tokens and API 1.0 HMAC signatures, and injects the
faults a test asks for. It runs on loopback in a thread of the test process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

CLIENT_ID, CLIENT_SECRET = "client-1", "s3cret-value"
APP_ID, APP_KEY, ACCESS_KEY = "app-1", "app-key-1", "access-1"
SECRET_KEY = base64.b64encode(b"hmac-secret-bytes").decode()


def mimecast_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(epoch))


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


@dataclass
class Message:
    """A message as the archive holds it: `mailbox` is the address it was received for (a
    mailbox, or a distribution list's own address); the list answers by receipt time, and
    only once the archive has listed it (`listed_at` on the contract's clock)."""
    id: str
    mailbox: str
    raw: bytes
    received: str = field(default_factory=lambda: mimecast_time(time.time() - 600))
    subject: str = "Hello"
    sender: str = "bob@example.org"
    header_date: str = "2026-11-28T08:59:02+0000"
    message_id: str = ""
    listed_at: float = 0.0


@dataclass
class Contract:
    auth: str = "oauth2"
    messages: list[Message] = field(default_factory=list)
    groups: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # address -> [(member, type)]
    faults: dict[str, list] = field(default_factory=dict)   # path -> faults to answer first, in order
    presigned: bool = False                                  # parts answered with a JSON download url
    token_lifetime: int = 1800
    calls: Counter = field(default_factory=Counter)
    tokens: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event | None = None                      # when set up, parts wait for it
    now: float | None = None      # the archive's clock for `listed_at` (None: everything is listed)
    listings: list = field(default_factory=list)             # (start, end) of every list request
    # hostile modes (issue 19): a buggy or hostile endpoint, per path
    mutate: dict = field(default_factory=dict)     # path -> f(payload) -> payload, before it is sent
    trickle: dict = field(default_factory=dict)    # path -> seconds between the answer's bytes
    loop_pages: bool = False                       # the list answers "next" with the same token forever
    token_value: str | None = None                 # the access token handed out (default token-N)
    download_url: object = None                    # f(message, host) -> the pre-signed url to answer

    def fault(self, path: str):
        with self.lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


def serve(contract: Contract) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            delay = contract.trickle.get(self.path.split("?")[0])
            try:
                if delay is None:
                    self.wfile.write(body)
                    return
                for byte in body:  # a byte at a time, within any per-read timeout
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(delay)
            except OSError:
                self.close_connection = True  # the client gave up: that is the point

        def _json(self, payload, status: int = 200, headers=None) -> None:
            mutate = contract.mutate.get(self.path)
            if mutate is not None:
                payload = mutate(payload)
            self._send(status, json.dumps(payload).encode(), headers=headers)

        def _envelope(self, data: list, next_token: str | None = None, fail=()) -> None:
            meta = {"status": 200}
            if next_token is not None:
                meta["pagination"] = {"next": next_token}
            self._json({"meta": meta, "data": data, "fail": list(fail)})

        def do_GET(self) -> None:
            contract.calls[self.path.split("?")[0]] += 1
            if self.path.startswith("/download/"):
                wanted = self.path.split("?")[0][len("/download/"):]  # a pre-signed url's query is its signature
                found = [m for m in contract.messages if m.id == wanted]
                return self._send(200, found[0].raw, "message/rfc822") if found else self._send(404, b"")
            self._send(404, b"")

        def do_POST(self) -> None:
            path = self.path
            contract.calls[path] += 1
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if path == "/oauth/token":
                form = parse_qs(body.decode())
                if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [CLIENT_SECRET] \
                        or form.get("grant_type") != ["client_credentials"]:
                    return self._json({"error": "invalid_client"}, 401)
                token = contract.token_value or f"token-{len(contract.tokens)}"
                contract.tokens.add(token)
                return self._json({"access_token": token, "token_type": "Bearer",
                                   "expires_in": contract.token_lifetime})
            if not self._authorised(path):
                return self._json({"meta": {"status": 401}, "data": [], "fail": [{"errors": [
                    {"code": "err_authentication", "message": "unauthorised", "retryable": False}]}]}, 401)
            fault = contract.fault(path)
            if fault is not None:
                kind = fault[0]
                if kind == "status":
                    return self._json({"meta": {"status": fault[1]}, "data": [], "fail": []}, fault[1],
                                      headers=fault[2] if len(fault) > 2 else None)
                if kind == "fail":
                    return self._envelope([], fail=[{"key": {}, "errors": [
                        {"code": fault[1], "message": "injected", "retryable": fault[2]}]}])
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
            request = json.loads(body or b"{}")
            data = (request.get("data") or [{}])[0]
            pagination = (request.get("meta") or {}).get("pagination") or {}
            if path == "/api/archive/get-message-list":
                if "mailbox" not in data:
                    return self._envelope([], fail=[{"errors": [{"code": "err_mailbox_required",
                                                                 "message": "no logged-in user",
                                                                 "retryable": False}]}])
                window = (_epoch(data["start"]), _epoch(data["end"]))
                contract.listings.append(window)
                listed = time.time() if contract.now is None else contract.now
                mine = sorted((m for m in list(contract.messages) if m.mailbox == data["mailbox"]
                               and window[0] <= _epoch(m.received) <= window[1] and m.listed_at <= listed),
                              key=lambda m: (m.received, m.id))
                size = int(pagination.get("pageSize") or 25)
                start = 0 if contract.loop_pages else int(pagination.get("pageToken") or 0)
                page = mine[start:start + size]
                nxt = str(start + size) if start + size < len(mine) else None
                if contract.loop_pages:
                    page, nxt = mine[:size], "same-token"
                return self._envelope([{"id": m.id, "status": "ARCHIVED", "received": m.received,
                                        "from": {"emailAddress": m.sender, "displayableName": "Bob"},
                                        "subject": m.subject, "size": len(m.raw), "attachmentCount": 0}
                                       for m in page], nxt)
            if path == "/api/archive/get-message-detail":
                found = [m for m in contract.messages if m.id == data.get("id")]
                if not found:
                    return self._envelope([], fail=[{"errors": [{"code": "err_not_found", "message": "no message",
                                                                 "retryable": False}]}])
                m = found[0]
                return self._envelope([{"id": m.id, "mimeMessageId": m.message_id, "headerDate": m.header_date,
                                        "to": [{"emailAddress": m.mailbox}], "cc": [],
                                        "headers": [{"name": "X-Test", "values": ["1"]}]}])
            if path == "/api/archive/get-message-part":
                if contract.gate is not None:
                    contract.gate.wait(30)
                found = [m for m in contract.messages if m.id == data.get("id")]
                if not found or data.get("context") != "DELIVERED" or data.get("type") != "RFC822" \
                        or "mailbox" not in data:
                    return self._envelope([], fail=[{"errors": [{"code": "err_part", "message": "no part",
                                                                 "retryable": False}]}])
                if contract.download_url is not None:
                    return self._envelope([{"url": contract.download_url(found[0], self.headers["Host"])}])
                if contract.presigned:
                    host = self.headers["Host"]
                    return self._envelope([{"url": f"http://{host}/download/{found[0].id}"}])
                return self._send(200, found[0].raw, "application/octet-stream")
            if path == "/api/directory/find-groups":
                query = data.get("query", "")
                folders = [{"id": f"grp-{g}", "description": g} for g in contract.groups if g == query]
                return self._envelope([{"folders": folders}])
            if path == "/api/directory/get-group-members":
                group = data.get("id", "")[len("grp-"):]
                members = contract.groups.get(group, [])
                start = int(pagination.get("pageToken") or 0)
                page = members[start:start + 2]
                nxt = str(start + 2) if start + 2 < len(members) else None
                return self._envelope([{"groupMembers": [{"emailAddress": a, "type": t} for a, t in page]}], nxt)
            self._json({"meta": {"status": 404}, "data": [], "fail": []}, 404)

        def _authorised(self, path: str) -> bool:
            header = self.headers.get("Authorization", "")
            if contract.auth == "oauth2":
                return header.startswith("Bearer ") and header[len("Bearer "):] in contract.tokens
            date, request_id = self.headers.get("x-mc-date", ""), self.headers.get("x-mc-req-id", "")
            if self.headers.get("x-mc-app-id") != APP_ID or not date or not request_id:
                return False
            signed = ":".join((date, request_id, path, APP_KEY)).encode()
            expected = base64.b64encode(hmac.new(base64.b64decode(SECRET_KEY), signed, hashlib.sha1).digest())
            return header == f"MC {ACCESS_KEY}:{expected.decode()}"

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
