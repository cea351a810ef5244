"""The Mimecast API as the poller uses it: authentication (API 2.0 client credentials, or
API 1.0 HMAC signatures), the `meta` / `data` / `fail` envelope, pagination, and faults.

A failure is read from what came back, not only from the status code: Mimecast answers
many failures with HTTP 200 and a non-empty `fail[]`. Secrets never reach a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate

import httpx

from .config import Mimecast

log = logging.getLogger("syncengine.mimecast")

RETRIES = 3           # retryable failures and server errors, with backoff
RATE_LIMIT_WAITS = 5  # 429s honoured (waiting X-RateLimit-Reset) before giving up
BACKOFF = 0.5         # seconds, doubled each retry
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class ApiError(Exception):
    """A call that failed; `fatal` means stop (credentials), `transient` means try later."""

    def __init__(self, call: str, reason: str, fatal: bool = False, transient: bool = False):
        super().__init__(f"{call}: {reason}")
        self.call, self.reason, self.fatal, self.transient = call, reason, fatal, transient


class Api:
    def __init__(self, settings: Mimecast, http: httpx.Client | None = None):
        self.settings = settings
        self.http = http or httpx.Client(timeout=TIMEOUT)
        self.requests = 0
        self._token: str | None = None
        self._token_until = 0.0

    def close(self) -> None:
        self.http.close()

    # --- authentication ---------------------------------------------------------------------------

    def _headers(self, path: str) -> dict[str, str]:
        if self.settings.auth == "oauth2":
            if self._token is None or time.monotonic() >= self._token_until:
                self._fetch_token()
            return {"Authorization": f"Bearer {self._token}"}
        date = formatdate(usegmt=True).replace("GMT", "UTC")
        request_id = str(uuid.uuid4())
        signed = ":".join((date, request_id, path, self.settings.app_key or ""))
        digest = hmac.new(base64.b64decode(self.settings.secret), signed.encode(), hashlib.sha1).digest()
        return {"Authorization": f"MC {self.settings.access_key}:{base64.b64encode(digest).decode()}",
                "x-mc-app-id": self.settings.app_id or "", "x-mc-date": date, "x-mc-req-id": request_id}

    def _fetch_token(self) -> None:
        call = "/oauth/token"
        self.requests += 1
        try:
            response = self.http.post(self.settings.base_url + call, data={
                "grant_type": "client_credentials", "client_id": self.settings.client_id or "",
                "client_secret": self.settings.secret.decode()})
        except httpx.TransportError as exc:
            raise ApiError(call, f"network: {type(exc).__name__}", transient=True) from None
        if response.status_code != 200:
            raise ApiError(call, f"HTTP {response.status_code}: the client credentials were refused", fatal=True)
        try:
            body = response.json()
            self._token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(call, "the token answer has no access_token", fatal=True) from None
        expires = body.get("expires_in")
        self._token_until = time.monotonic() + (float(expires) - 60 if isinstance(expires, (int, float)) else 1e12)

    # --- calls ------------------------------------------------------------------------------------

    def post(self, path: str, data: list[dict], page_token: str | None = None) -> httpx.Response:
        """One request, with 429, 401, 5xx and network faults handled; the raw response."""
        body: dict = {"data": data}
        if page_token is not None or path.endswith(("get-message-list", "get-group-members")):
            body["meta"] = {"pagination": {"pageSize": self.settings.page_size,
                                           **({"pageToken": page_token} if page_token else {})}}
        refreshed, waits, attempt = False, 0, 0
        while True:
            self.requests += 1
            try:
                response = self.http.post(self.settings.base_url + path, json=body, headers=self._headers(path))
            except httpx.TransportError as exc:
                if attempt < RETRIES:
                    attempt += 1
                    time.sleep(BACKOFF * 2 ** attempt)
                    continue
                raise ApiError(path, f"network: {type(exc).__name__}", transient=True) from None
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
            return response

    def call(self, path: str, data: list[dict], page_token: str | None = None) -> dict:
        """The envelope of one call; retryable `fail[]` entries are retried with backoff."""
        for attempt in range(RETRIES + 1):
            response = self.post(path, data, page_token)
            try:
                envelope = response.json()
            except ValueError:
                raise ApiError(path, "the answer is not JSON") from None
            if not isinstance(envelope, dict):
                raise ApiError(path, "the answer is not an API envelope")
            fails = envelope.get("fail") or []
            if not fails:
                return envelope
            errors = [e for f in fails if isinstance(f, dict) for e in f.get("errors", []) if isinstance(e, dict)]
            if errors and all(e.get("retryable") for e in errors) and attempt < RETRIES:
                time.sleep(BACKOFF * 2 ** (attempt + 1))
                continue
            first = errors[0] if errors else {}
            raise ApiError(path, f"{first.get('code', 'failed')}: {str(first.get('message', fails[0]))[:200]}")
        raise AssertionError("unreachable")

    def pages(self, path: str, data: list[dict], key: str | None = None) -> Iterator[dict]:
        """Every item across the pages, following `meta.pagination.next`. With `key`, the
        items are `data[0][key]` (get-group-members); otherwise `data` itself."""
        token = None
        while True:
            envelope = self.call(path, data, token)
            items = envelope.get("data") or []
            if key is not None:
                items = (items[0].get(key) or []) if items and isinstance(items[0], dict) else []
            yield from (item for item in items if isinstance(item, dict))
            token = ((envelope.get("meta") or {}).get("pagination") or {}).get("next")
            if not token:
                return

    def part(self, message_id: str, mailbox: str) -> bytes:
        """The raw message as archived: the body of the answer, or on API 2.0 tenants a
        JSON answer naming a pre-signed `url` to download it from."""
        path = "/api/archive/get-message-part"
        response = self.post(path, [{"id": message_id, "mailbox": mailbox, "context": "DELIVERED",
                                     "type": "RFC822"}])
        if not response.headers.get("content-type", "").startswith("application/json"):
            return response.content
        try:
            envelope = response.json()
        except ValueError:
            raise ApiError(path, "the answer is neither a message nor JSON") from None
        fails = envelope.get("fail") or []
        if fails:
            raise ApiError(path, f"the message part cannot be fetched: {str(fails[0])[:200]}")
        data = envelope.get("data") or [{}]
        url = data[0].get("url") if isinstance(data[0], dict) else None
        if not url:
            raise ApiError(path, "JSON answer without a download url")
        self.requests += 1
        try:
            download = self.http.get(url)
        except httpx.TransportError as exc:
            raise ApiError(path, f"download: network: {type(exc).__name__}", transient=True) from None
        if download.status_code != 200:
            raise ApiError(path, f"download: HTTP {download.status_code}")
        return download.content


def _milliseconds(value: str | None) -> float:
    try:
        return min(max(float(value) / 1000, 0.0), 60.0)
    except (TypeError, ValueError):
        return 1.0
