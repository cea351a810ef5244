"""The [mimecast] section of a config: typed and checked at start (unknown keys, bad
values, http to a non-loopback host, a secret file others can read)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from .. import files, formats, normalise


class ConfigError(Exception):
    """A [mimecast] section that cannot work; the text names the key and the reason."""


class Section(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str
    auth: Literal["oauth2", "hmac"]
    mailboxes: list[str]
    client_id: str | None = None
    client_secret_file: str | None = None
    app_id: str | None = None
    app_key: str | None = None
    access_key: str | None = None
    secret_key_file: str | None = None
    groups: list[str] = []
    lookback_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 365)] = 72
    lag_allowance_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 365)] = 24
    page_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 500
    interval_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    snapshot_folder: str | None = None
    directory_file: str | None = None
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1 << 20, le=1 << 32)] = 150 << 20
    download_hosts: list[str] = []   # hosts besides the API's that pre-signed download URLs may name
    request_deadline_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 120  # a whole API call, however slow


class File(msgspec.Struct):
    mimecast: Section


@dataclass
class Mimecast:
    base_url: str
    auth: str
    mailboxes: list[str]
    groups: list[str]
    lookback_hours: int
    lag_allowance_hours: int
    page_size: int
    interval_s: int
    snapshot_folder: Path
    directory_file: Path
    client_id: str | None = None
    app_id: str | None = None
    app_key: str | None = None
    access_key: str | None = None
    secret: bytes = b""  # read from the owner-only file; never printed or written elsewhere
    hmac_key: bytes = b""  # API 1.0: the secret key decoded
    max_message_bytes: int = 150 << 20
    download_hosts: tuple[str, ...] = ()
    request_deadline_s: int = 120

    def __repr__(self) -> str:  # no secret in any log or traceback
        return f"Mimecast({self.base_url!r}, auth={self.auth!r}, mailboxes={self.mailboxes!r})"


def section(raw: dict, where: Path, defaults: dict[str, Path] | None = None) -> Mimecast:
    """The [mimecast] table `raw` of the config at `where`; `defaults` gives the daemon's
    own snapshot_folder and directory_file, so the poller writes where the daemon watches."""
    try:
        got = msgspec.convert(raw, type=Section)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: [mimecast] {formats._path_first(str(exc))}") from None
    base = where.absolute().parent
    parts = urlsplit(got.base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{where}: [mimecast] base_url: expected https://HOST, got {got.base_url!r}")
    if parts.scheme == "http" and not loopback(parts.hostname):
        raise ConfigError(f"{where}: [mimecast] base_url: http is refused except for loopback hosts; use https")
    needed = {"oauth2": ("client_id", "client_secret_file"),
              "hmac": ("app_id", "app_key", "access_key", "secret_key_file")}[got.auth]
    for key in needed:
        if not getattr(got, key):
            raise ConfigError(f"{where}: [mimecast] {key}: required with auth = {got.auth!r}")
    secret_file = base / (got.client_secret_file if got.auth == "oauth2" else got.secret_key_file)
    secret = _secret(secret_file, where)
    try:
        mailboxes = [normalise.mailbox(m) for m in got.mailboxes]
        groups = [normalise.mailbox(g) for g in got.groups]
    except ValueError as exc:
        raise ConfigError(f"{where}: [mimecast] mailboxes/groups: {exc}") from None
    hmac_key = b""
    if got.auth == "hmac":
        try:
            hmac_key = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: [mimecast] secret_key_file: the secret key is not base64, as the "
                              f"Mimecast console shows it ({secret_file})") from None
    hosts = []
    for host in got.download_hosts:
        if not host or "/" in host or ":" in host or not host.isascii() or not host.isprintable():
            raise ConfigError(f"{where}: [mimecast] download_hosts: {host!r} is not a host name")
        hosts.append(host.lower())
    defaults = defaults or {}
    folder = base / got.snapshot_folder if got.snapshot_folder else defaults.get("snapshot_folder", base / "snapshots")
    directory = base / got.directory_file if got.directory_file else \
        defaults.get("directory_file", base / "directory.json")
    return Mimecast(got.base_url.rstrip("/"), got.auth, mailboxes, groups, got.lookback_hours,
                    got.lag_allowance_hours, got.page_size,
                    got.interval_s, folder, directory, got.client_id, got.app_id, got.app_key, got.access_key, secret,
                    hmac_key, got.max_message_bytes, tuple(hosts), got.request_deadline_s)


def load(path: Path) -> Mimecast:
    """A config file holding (at least) a [mimecast] table."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply to read") from None
    if not isinstance(raw.get("mimecast"), dict):
        raise ConfigError(f"{path}: no [mimecast] table")
    return section(raw["mimecast"], path)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(path: Path, where: Path) -> bytes:
    try:
        return files.read_secret(path)
    except OSError as exc:
        raise ConfigError(f"{where}: [mimecast] secret file: {exc.strerror or exc}"
                          + (f" ({path})" if exc.strerror else "")) from None
