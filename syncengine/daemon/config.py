"""The daemon's TOML config: typed, validated at start (unknown keys and bad values are
refused naming the key and the reason), paths relative to the config file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .. import files, formats, normalise

Seconds = Annotated[int, msgspec.Meta(ge=1, le=86_400)]


class ConfigError(Exception):
    """A config that cannot work; the text names the file, the key and the reason."""


class MailboxConfig(msgspec.Struct, forbid_unknown_fields=True):
    address: str
    exports: list[str] = []
    no_local_mail: bool = False  # a mailbox with no local mail at all (C19): every entry is new to it


class NotifyConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str = "ipc"    # ipc: the store's default sockets (as `serve --db`); or tcp://HOST:PORT with keys
    keys: str | None = None  # folder of CURVE keys (`syncengine keys generate`), required for tcp


class EventConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    mailboxes: list[str]
    start: str
    end: str | None = None
    expand_distribution_lists: bool = False


class Config(msgspec.Struct, forbid_unknown_fields=True):
    db: str = "store.db"
    snapshot_folder: str = "snapshots"
    directory_file: str = "directory.json"
    poll_interval: Seconds = 60
    post_event_window: Annotated[int, msgspec.Meta(ge=0, le=7 * 86_400)] = 600
    calendar_items: bool = True
    rescan_interval: Seconds = 600
    mailbox: list[MailboxConfig] = []
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    event: list[EventConfig] = []
    mimecast: dict[str, Any] | None = None


@dataclass
class Settings:
    """The config with every path made absolute and every address normalised."""
    file: Path
    db: Path
    snapshot_folder: Path
    directory_file: Path
    poll_interval: int
    post_event_window: int
    calendar_items: bool
    rescan_interval: int
    mailboxes: dict[str, list[Path]]   # address -> exports
    no_local_mail: set[str]            # mailboxes declared to have no local mail (C19)
    endpoint: str | None               # None: the store's default ipc sockets
    keys: Path | None
    events: list[EventConfig]
    mimecast: Any = None               # mimecast.config.Mimecast when [mimecast] is present

    def engine_settings(self) -> formats.Settings:
        return formats.Settings(self.poll_interval, self.post_event_window, self.calendar_items)


def check_trust(settings: Settings) -> None:
    """The drop folder and the directory file take input as if from Mimecast: refused
    when another user owns them or group or others can write them (N4)."""
    for key, where in (("snapshot_folder", settings.snapshot_folder), ("directory_file", settings.directory_file)):
        reason = files.untrusted(where)
        if reason:
            raise ConfigError(f"{settings.file}: $.{key}: {where} is {reason}; anyone who can write there could "
                              "forge mail")


def load(path: Path) -> Settings:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {formats._path_first(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply to read") from None
    base = path.absolute().parent

    def place(value: str) -> Path:
        return (base / Path(value).expanduser()).absolute()

    mimecast = None
    if config.mimecast is not None:  # the poller writes where the daemon watches, unless told otherwise
        from ..mimecast import config as mimecast_config
        try:
            mimecast = mimecast_config.section(config.mimecast, path, {
                "snapshot_folder": place(config.snapshot_folder), "directory_file": place(config.directory_file)})
        except mimecast_config.ConfigError as exc:
            raise ConfigError(str(exc)) from None
    mailboxes: dict[str, list[Path]] = {}
    for number, box in enumerate(config.mailbox):
        try:
            address = normalise.mailbox(box.address)
        except ValueError as exc:
            raise ConfigError(f"{path}: $.mailbox[{number}].address: {exc}") from None
        if address in mailboxes:
            raise ConfigError(f"{path}: $.mailbox[{number}].address: {address} is configured twice")
        if box.no_local_mail and box.exports:
            raise ConfigError(f"{path}: $.mailbox[{number}].no_local_mail: true says {address} has no local mail, "
                              "but it names exports; keep one of the two")
        mailboxes[address] = [place(e) for e in box.exports]
    if not mailboxes:
        raise ConfigError(f"{path}: no [[mailbox]]: name at least one mailbox and its exports")
    names = set()
    for number, event in enumerate(config.event):  # all checked now, not when each comes due
        where = f"{path}: $.event[{number}]"
        if not event.name or not event.name.strip() or len(event.name) > 200 or not event.name.isprintable():
            raise ConfigError(f"{where}.name: not an event name: {event.name[:60]!r} (1 to 200 printable characters)")
        if event.name in names:
            raise ConfigError(f"{where}.name: {event.name!r} is scheduled twice")
        names.add(event.name)
        if not event.mailboxes:
            raise ConfigError(f"{where}.mailboxes: an event needs at least one mailbox")
        for k, mailbox in enumerate(event.mailboxes):
            try:
                normalise.mailbox(mailbox)
            except ValueError as exc:
                raise ConfigError(f"{where}.mailboxes[{k}]: {exc}") from None
        try:
            times = [formats.check_time(getattr(event, key), str(path), f"$.event[{number}].{key}")
                     for key in ("start", "end")]
        except formats.FormatError as exc:
            raise ConfigError(str(exc)) from None
        if times[1] is not None and times[1] <= times[0]:
            raise ConfigError(f"{where}.end: {event.end} is not after its start {event.start}")
    endpoint = None if config.notify.endpoint == "ipc" else config.notify.endpoint
    keys = place(config.notify.keys) if config.notify.keys else None
    if endpoint and endpoint.startswith("tcp://") and keys is None:
        raise ConfigError(f"{path}: $.notify.keys: a tcp endpoint needs CURVE keys (syncengine keys generate DIR)")
    return Settings(path.absolute(), place(config.db), place(config.snapshot_folder), place(config.directory_file),
                    config.poll_interval, config.post_event_window, config.calendar_items, config.rescan_interval,
                    mailboxes, {normalise.mailbox(b.address) for b in config.mailbox if b.no_local_mail},
                    endpoint, keys, config.event, mimecast)


STARTER = '''\
# syncengine config (TOML): every command reads it (`syncengine config` shows how it resolves).
# Paths are relative to this file's folder.
# Run:  syncengine{option} index     (read the exports once)
#       syncengine{option} daemon    (keep everything current; docs/daemon.md has a systemd unit)

db = {db}                      # the store: one SQLite file (owner-only)
snapshot_folder = {snapshots}        # drop folder: each snapshot folder or .json file dropped here is applied once
directory_file = {directory}    # directory sync, re-read when it changes (missing: no directory yet)
poll_interval = 60                   # seconds between polls of a running event (C8)
post_event_window = 600              # seconds Exchange copies are watched for after an event ends (C14)
calendar_items = true                # deliver calendar items (Outlook 2013 and later)
rescan_interval = 600                # seconds between full rescans, for changes the watcher missed

[[mailbox]]
address = "{address}"
# PST/OST files and folder trees of .msg/.eml files:
exports = [{exports}]
# no_local_mail = true               # instead of exports, for a mailbox with no local mail at all
                                     # (a new employee, a web-only user): every entry is new to it.
                                     # A mailbox with neither waits for its index in any event (C19).

[notify]
endpoint = "ipc"                     # the store's own sockets (`syncengine listen` finds them)
# endpoint = "tcp://0.0.0.0:5560"    # for clients on other machines; needs CURVE keys:
# keys = "keys"                      #   syncengine keys generate keys; ... --client ADDRESS

# An event on a schedule (optional); events also start from the command line or a client.
# [[event]]
# name = "outage-1"
# mailboxes = ["{address}"]
# start = "2026-12-01T09:00:00Z"
# end = "2026-12-01T17:00:00Z"
'''


def starter(address: str, exports: list[str], option: str = "", data: str = "") -> str:
    """The starter config; `option` is how commands must name it (empty at the default
    place), `data` the folder for the store and drop folder (empty: beside the config)."""
    def quoted(name: str) -> str:  # a TOML basic string is a JSON string
        return json.dumps(f"{data}/{name}" if data else name)

    return STARTER.format(option=option, address=address, exports=", ".join(json.dumps(e) for e in exports),
                          db=quoted("store.db"), snapshots=quoted("snapshots"), directory=quoted("directory.json"))
