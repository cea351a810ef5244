"""The Mimecast API as the poller uses it: authentication (API 2.0 client credentials, or
API 1.0 HMAC signatures), the `meta` / `data` / `fail` envelope, pagination, and faults.

The peer is untrusted until checked (issue 19): every request has an overall deadline
(a server that trickles a byte every few seconds runs out of it; httpx's own timeouts
are per read), answers are read up to a size, a listing stops after MAX_PAGES or when a
pagination token repeats, rate-limit waits are clamped, every shape of `fail[]` is read,
and a raw message is streamed to disk under a size cap, from the API's own host or one
the config allows, over https (loopback excepted). A failure is read from what came
back, not only from the status code: Mimecast answers many failures with HTTP 200 and a
non-empty `fail[]`. Secrets and pre-signed URLs never reach a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx

from .. import files
from .config import Mimecast, loopback

log = logging.getLogger("syncengine.mimecast")

RETRIES = 3              # retryable failures and server errors, with backoff
RATE_LIMIT_WAITS = 5     # 429s honoured (waiting X-RateLimit-Reset) before giving up
RATE_LIMIT_MAX = 60.0    # seconds: the longest wait a 429 can ask for
BACKOFF = 0.5            # seconds, doubled each retry
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DOWNLOAD_FACTOR = 8      # a raw message's deadline, in request deadlines (150 MB at 1.3 MB/s)
MAX_ANSWER_BYTES = 64 << 20  # an API answer (a list page of 500 entries is well under 1 MB)
MAX_PAGES = 2000         # a listing's pages (a million ids at 500 a page)
MAX_TOKEN = 8192         # characters of an access token


class ApiError(Exception):
    """A call that failed; `fatal` means stop (credentials), `transient` means try later."""

    def __init__(self, call: str, reason: str, fatal: bool = False, transient: bool = False):
        super().__init__(f"{call}: {reason}")
        self.call, self.reason, self.fatal, self.transient = call, reason, fatal, transient


class _Deadline:
    """When the request under way must be done (one request at a time per Api)."""

    def __init__(self) -> None:
        self.at = math.inf

    def left(self) -> float:
        return self.at - time.monotonic()


class _Stream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most what is left of the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline):
        self.inner, self.deadline = inner, deadline

    def _timeout(self, timeout: float | None, error: type[Exception]) -> float:
        left = self.deadline.left()
        if left <= 0:
            raise error("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self._timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self._timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, self._timeout(timeout, httpcore.ConnectTimeout)),
                       self.deadline)

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline):
        self.inner, self.deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        left = self.deadline.left()
        if left <= 0:
            raise httpcore.ConnectTimeout("the request's deadline passed")
        timeout = left if timeout is None else min(timeout, left)
        return _Stream(self.inner.connect_tcp(host, port, timeout, local_address, socket_options), self.deadline)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _Transport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose connections keep the deadline."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._pool = httpcore.ConnectionPool(ssl_context=ssl.create_default_context(cafile=certifi.where()),
                                             max_connections=10, max_keepalive_connections=5, keepalive_expiry=5.0,
                                             network_backend=_Backend(deadline))


class Api:
    def __init__(self, settings: Mimecast):
        self.settings = settings
        self._deadline = _Deadline()
        self.http = httpx.Client(timeout=TIMEOUT, transport=_Transport(self._deadline))
        self.requests = 0
        self._token: str | None = None
        self._token_until = 0.0

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, download: bool = False, limit: int = MAX_ANSWER_BYTES,
              into: Path | None = None, **kwargs) -> tuple[httpx.Response, bytes]:
        """One request under an overall deadline (request_deadline_s; a raw message's is
        longer); its answer read up to `limit` bytes (or, with `into`, streamed to that
        file, which appears only when whole)."""
        self.requests += 1
        seconds = self.settings.request_deadline_s * (DOWNLOAD_FACTOR if download else 1)
        self._deadline.at = time.monotonic() + seconds
        try:
            with self.http.stream(method, url, **kwargs) as response:
                if into is not None and response.status_code == 200:
                    files.write_durable(into, response.iter_bytes(), limit=limit)
                    return response, b""
                body, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise files.TooLarge(f"an answer larger than {limit:,} bytes")
                    body.append(chunk)
                return response, b"".join(body)
        finally:
            self._deadline.at = math.inf

    # --- authentication ---------------------------------------------------------------------------

    def _headers(self, path: str) -> dict[str, str]:
        if self.settings.auth == "oauth2":
            if self._token is None or time.monotonic() >= self._token_until:
                self._fetch_token()
            return {"Authorization": f"Bearer {self._token}"}
        date = formatdate(usegmt=True).replace("GMT", "UTC")
        request_id = str(uuid.uuid4())
        signed = ":".join((date, request_id, path, self.settings.app_key or ""))
        digest = hmac.new(self.settings.hmac_key, signed.encode(), hashlib.sha1).digest()
        return {"Authorization": f"MC {self.settings.access_key}:{base64.b64encode(digest).decode()}",
                "x-mc-app-id": self.settings.app_id or "", "x-mc-date": date, "x-mc-req-id": request_id}

    def _fetch_token(self) -> None:
        call = "/oauth/token"
        try:
            response, body = self._send("POST", self.settings.base_url + call, data={
                "grant_type": "client_credentials", "client_id": self.settings.client_id or "",
                "client_secret": self.settings.secret.decode()})
        except (httpx.TransportError, files.TooLarge) as exc:
            raise ApiError(call, f"network: {_reason(exc)}", transient=True) from None
        if response.status_code != 200:
            raise ApiError(call, f"HTTP {response.status_code}: the client credentials were refused", fatal=True)
        try:
            answer = json.loads(body)
            token = answer["access_token"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ApiError(call, "the token answer has no access_token") from None
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or not token.isascii() \
                or not token.isprintable() or " " in token:
            raise ApiError(call, "the token answer's access_token is not a usable token")
        self._token = token
        expires = answer.get("expires_in") if isinstance(answer, dict) else None
        lifetime = float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool) else math.inf
        if not math.isfinite(lifetime) or lifetime <= 0:
            lifetime = 300.0 if expires is not None else 1e12  # an odd value: ask again soon
        self._token_until = time.monotonic() + max(lifetime - 60, 30.0)

    # --- calls ------------------------------------------------------------------------------------

    def post(self, path: str, data: list[dict], page_token: str | None = None) -> tuple[httpx.Response, bytes]:
        """One request, with 429, 401, 5xx and network faults handled; the raw answer."""
        body: dict = {"data": data}
        if page_token is not None or path.endswith(("get-message-list", "get-group-members")):
            body["meta"] = {"pagination": {"pageSize": self.settings.page_size,
                                           **({"pageToken": page_token} if page_token else {})}}
        refreshed, waits, attempt = False, 0, 0
        while True:
            try:
                response, answer = self._send("POST", self.settings.base_url + path, json=body,
                                              headers=self._headers(path))
            except (httpx.TransportError, files.TooLarge) as exc:
                if attempt < RETRIES:
                    attempt += 1
                    time.sleep(BACKOFF * 2 ** attempt)
                    continue
                raise ApiError(path, f"network: {_reason(exc)}", transient=True) from None
            status = response.status_code
            if status == 429 and waits < RATE_LIMIT_WAITS:
                waits += 1
                wait = _milliseconds(response.headers.get("X-RateLimit-Reset"))
                log.warning("%s: rate limited; waiting %.1f s as the API asks", path, wait)
                time.sleep(wait)
                continue
            if status == 401 and self.settings.auth == "oauth2" and not refreshed:
                refreshed = True
                self._fetch_token()
                continue
            if status in (401, 403, 418):
                reason = {401: "unauthorised (credentials refused)", 403: "forbidden (the application lacks "
                          "permission)", 418: "the API binding has expired; renew the access key"}[status]
                raise ApiError(path, f"HTTP {status}: {reason}", fatal=True)
            if status >= 500 and attempt < RETRIES:
                attempt += 1
                time.sleep(BACKOFF * 2 ** attempt)
                continue
            if status != 200:
                raise ApiError(path, f"HTTP {status}", transient=status >= 500 or status == 429)
            return response, answer

    def call(self, path: str, data: list[dict], page_token: str | None = None) -> dict:
        """The envelope of one call; retryable `fail[]` entries are retried with backoff."""
        for attempt in range(RETRIES + 1):
            _, answer = self.post(path, data, page_token)
            envelope = _envelope(path, answer)
            errors = _errors(envelope.get("fail"))
            if not errors:
                return envelope
            if all(e.get("retryable") is True for e in errors) and attempt < RETRIES:
                time.sleep(BACKOFF * 2 ** (attempt + 1))
                continue
            first = errors[0]
            raise ApiError(path, f"{str(first.get('code', 'failed'))[:100]}: {str(first.get('message', ''))[:200]}")
        raise AssertionError("unreachable")

    def pages(self, path: str, data: list[dict], key: str | None = None) -> Iterator[list[dict]]:
        """Each page's items, following `meta.pagination.next`, at most MAX_PAGES of them;
        a token that repeats ends the listing (ApiError: a loop is the peer's fault). With
        `key`, the items are `data[0][key]` (get-group-members); otherwise `data` itself."""
        token, seen = None, set()
        for _ in range(MAX_PAGES):
            envelope = self.call(path, data, token)
            items = envelope.get("data")
            items = items if isinstance(items, list) else []
            if key is not None:
                items = items[0].get(key) if items and isinstance(items[0], dict) else []
                items = items if isinstance(items, list) else []
            yield [item for item in items if isinstance(item, dict)]
            meta = envelope.get("meta")
            pagination = meta.get("pagination") if isinstance(meta, dict) else None
            token = pagination.get("next") if isinstance(pagination, dict) else None
            if not token:
                return
            if not isinstance(token, str) or len(token) > 4096 or token in seen:
                raise ApiError(path, "the pagination token repeats or is not a token; the listing stops here")
            seen.add(token)
        raise ApiError(path, f"more than {MAX_PAGES} pages; the listing stops here")

    def part(self, message_id: str, mailbox: str, target: Path) -> int:
        """The raw message as archived, streamed into `target` (at most max_message_bytes):
        the body of the answer, or on API 2.0 tenants a JSON answer naming a pre-signed
        `url` to download it from. Returns its size."""
        path = "/api/archive/get-message-part"
        body = {"data": [{"id": message_id, "mailbox": mailbox, "context": "DELIVERED", "type": "RFC822"}]}
        limit = self.settings.max_message_bytes
        for attempt in range(RETRIES + 1):
            try:
                response, answer = self._send("POST", self.settings.base_url + path, True, limit,
                                              json=body, headers=self._headers(path))
            except files.TooLarge as exc:
                raise ApiError(path, f"the message is too large to fetch ({exc}; max_message_bytes)") from None
            except httpx.TransportError as exc:
                if attempt < RETRIES:
                    time.sleep(BACKOFF * 2 ** (attempt + 1))
                    continue
                raise ApiError(path, f"network: {_reason(exc)}", transient=True) from None
            break
        if response.status_code in (401, 403, 418):
            raise ApiError(path, f"HTTP {response.status_code}: credentials refused", fatal=True)
        if response.status_code != 200:
            raise ApiError(path, f"HTTP {response.status_code}", transient=response.status_code >= 500)
        if not response.headers.get("content-type", "").startswith("application/json"):
            files.write_durable(target, answer, limit=limit)
            return len(answer)
        envelope = _envelope(path, answer)
        errors = _errors(envelope.get("fail"))
        if errors:
            raise ApiError(path, f"the message part cannot be fetched: {str(errors[0].get('message', ''))[:200]}")
        data = envelope.get("data")
        url = data[0].get("url") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if not isinstance(url, str) or not url:
            raise ApiError(path, "JSON answer without a download url")
        refusal = self._refuse_download(url)
        if refusal:
            raise ApiError(path, f"download refused: {refusal}")
        try:
            response, _ = self._send("GET", url, True, limit, into=target)
        except files.TooLarge as exc:
            raise ApiError(path, f"download: too large ({exc}; max_message_bytes)") from None
        except httpx.TransportError as exc:
            raise ApiError(path, f"download: network: {_reason(exc)}", transient=True) from None
        if response.status_code != 200:
            raise ApiError(path, f"download: HTTP {response.status_code}")
        return target.stat().st_size

    def _refuse_download(self, url: str) -> str | None:
        """Why a pre-signed URL is not fetched, or None: https only (loopback excepted, as for
        base_url), and only from the API's host or one the config names (download_hosts)."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError:
            return "not a URL"
        if parts.scheme not in ("https", "http") or not host:
            return "not an http(s) URL"
        if parts.scheme == "http" and not loopback(host):
            return f"plain http to {host}"
        api = urlsplit(self.settings.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if (host, port) == ((api.hostname or "").lower(), api.port or (443 if api.scheme == "https" else 80)):
            return None
        if host in self.settings.download_hosts and parts.scheme == "https" and port == 443:
            return None
        return f"{host}:{port} is not the API's own address nor an https download_hosts entry"


def _envelope(path: str, answer: bytes) -> dict:
    try:
        envelope = json.loads(answer)
    except (ValueError, RecursionError):
        raise ApiError(path, "the answer is not JSON") from None
    if not isinstance(envelope, dict):
        raise ApiError(path, "the answer is not an API envelope")
    return envelope


def _errors(fails) -> list[dict]:
    """Every error of `fail[]`, whatever its shape (a list of {errors: [...]}, errors null,
    strings): each as a dict with at least a message."""
    if not fails:
        return []
    if not isinstance(fails, list):
        fails = [fails]
    errors = []
    for failure in fails:
        inner = failure.get("errors") if isinstance(failure, dict) else None
        if isinstance(inner, list) and inner:
            errors += [e if isinstance(e, dict) else {"message": str(e)[:200]} for e in inner]
        else:
            errors.append({"message": str(failure)[:200]})
    return errors


def _milliseconds(value: str | None) -> float:
    """X-RateLimit-Reset (milliseconds) as seconds to wait: NaN, infinite, negative or
    absent values wait one second; at most RATE_LIMIT_MAX."""
    try:
        seconds = float(value) / 1000
    except (TypeError, ValueError):
        return 1.0
    if not math.isfinite(seconds) or seconds < 0:
        return 1.0
    return min(seconds, RATE_LIMIT_MAX)


def _reason(exc: Exception) -> str:
    """A transport failure by its kind, never its text (which may hold a pre-signed URL)."""
    return str(exc) if isinstance(exc, files.TooLarge) else type(exc).__name__
