"""A pass of the poller: for each address it follows (the configured mailboxes, and while
an event that expands distribution lists covers one of them, the lists it belongs to),
the messages Mimecast archived that were not fetched before become one snapshot folder
(formats.md), built under a dot-name and renamed into place.

Archive lag (C8a). Mimecast's archive lists a message some time after receiving it
(minutes, at busy times hours), and its message list filters by receipt time only. So a
pass lists more than the time since the last one: every pass lists from a little before
the last pass's end, and a ladder of wider listings runs on slower schedules (the last
hour every 4 passes, 4 hours every 16, 16 hours every 64, ...) down to the horizon: the
look-back before the start of an event that covers the address, or `lag_allowance_hours`
outside events. A message listed L late is found within about L/3; what a pass lists
that was fetched before costs one list page per 500 ids, nothing more.

One applier. A folder carries a manifest (`mimecast.json`: what was fetched, for which
address, up to when). Whoever applies the folder (this process, the daemon's writer when
a daemon holds the store, or a daemon's drop-folder watcher) records what was fetched in
the transaction that applies it, with `apply_folder`: nothing counts as fetched until
its page is applied, and an applied folder is removed. Fetching writes nothing to the
store, so the daemon runs it on its own thread and hands only the apply to its writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import sqlite_utils

from .. import engine, files, formats, normalise, snapshot, store
from .api import Api, ApiError
from .config import Mimecast

log = logging.getLogger("syncengine.mimecast")

OVERLAP_SECONDS = 300   # each pass lists from this long before the last one ended
LADDER_BASE = 900       # level k lists the last 15 min x 4^k, every 4^k passes
LADDER_FACTOR = 4
MANIFEST = "mimecast.json"
RETRY_PARTS = 20        # parts tried again per address and pass
RETRY_ATTEMPTS = 10     # then the entry stays without content (the client may fetch it elsewhere)


@dataclass(frozen=True)
class Target:
    address: str
    kind: str         # mailbox | group
    horizon: float    # the oldest receipt time the ladder lists down to


@dataclass
class Fetched:
    """One address's pass: the snapshot folder written (None when nothing was new)."""
    target: Target
    window_end: float
    ids: list[str]
    folder: Path | None = None
    without_content: list[str] = field(default_factory=list)  # ids whose part could not be fetched
    error: str | None = None   # why this address's pass failed (the others went on)
    warnings: list[str] = field(default_factory=list)  # odd entries, normalised, dropped or without content


class Ladder:
    """When each wider listing last ran, per address: kept by the poller process (a restart
    lists down to the horizon once, which is a sweep, not a loss)."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str, int], float] = {}

    def window(self, target: Target, last_end: float | None, now: float, interval: float,
               first: float) -> tuple[float, list[int]]:
        """The start of this pass's listing (it ends now), and the levels it covers."""
        start = min(target.horizon, first) if last_end is None else max(target.horizon, last_end - OVERLAP_SECONDS)
        levels = []
        while now - LADDER_BASE * LADDER_FACTOR ** len(levels) > target.horizon:
            levels.append(len(levels) + 1)
        if last_end is None:
            return start, levels
        due = [k for k in levels if now - self.runs.get((target.kind, target.address, k), float("-inf"))
               >= interval * LADDER_FACTOR ** k]
        if not due:
            return start, []
        top = max(due)
        return min(start, max(target.horizon, now - LADDER_BASE * LADDER_FACTOR ** top)), levels[:top]

    def done(self, target: Target, levels: list[int], now: float) -> None:
        for k in levels:
            self.runs[(target.kind, target.address, k)] = now


def _mimecast_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(epoch))


def targets(settings: Mimecast, db: sqlite_utils.Database, now: float) -> list[Target]:
    """The configured mailboxes, and the lists of those an event with
    expand_distribution_lists covers (C16: list mail comes from the archive too, C8a)."""
    view = engine.directory_at(db.conn, now)
    covered: dict[str, tuple[float, bool]] = {}  # primary -> (earliest open event start, expands lists)
    for event in engine.open_events(db.conn):
        for mailbox in event.mailboxes:
            start, expands = covered.get(mailbox, (event.started_at, False))
            covered[mailbox] = (min(start, event.started_at), expands or event.expand_lists)
    back, lag = settings.lookback_hours * 3600, settings.lag_allowance_hours * 3600
    found = []
    lists: dict[str, float] = {}
    for address in settings.mailboxes:
        primary = view.primary(address)
        if primary in covered:
            start, expands = covered[primary]
            found.append(Target(address, "mailbox", start - back))
            if expands:
                for group in sorted(view.groups(primary) | set(settings.groups)):
                    lists[group] = min(lists.get(group, start - back), start - back)
        else:
            found.append(Target(address, "mailbox", now - lag))
    return found + [Target(group, "group", horizon) for group, horizon in sorted(lists.items())]


def fetch(api: Api, settings: Mimecast, db: sqlite_utils.Database, now: float, ladder: Ladder | None = None,
          apply: Callable[[Path], None] | None = None) -> list[Fetched]:
    """List, detail and part for every new message of every target; a snapshot folder on
    disk per target, handed to `apply` as soon as it is written. `db` is only read. A
    target whose calls fail records the error and the others go on; refused credentials
    (a fatal ApiError) stop the pass. The folder being built when anything fails is removed."""
    ladder = ladder or Ladder()
    if not settings.snapshot_folder.exists():
        files.private_dir(settings.snapshot_folder)
    for left in settings.snapshot_folder.glob(".*.part"):  # built by a pass that was killed
        shutil.rmtree(left, ignore_errors=True)
    passes = []
    for target in targets(settings, db, now):
        result = Fetched(target, now, [])
        passes.append(result)
        row = db.execute("SELECT last_end FROM mimecast_windows WHERE mailbox = ?", (target.address,)).fetchone()
        start, levels = ladder.window(target, row[0] if row else None, now, settings.interval_s,
                                      now - settings.lookback_hours * 3600)
        try:
            new: dict[str, dict] = {}  # page by page: only what is new is kept (a sweep lists many)
            try:
                for page in api.pages("/api/archive/get-message-list", [{
                        "mailbox": target.address, "view": "INBOX", "start": _mimecast_time(start),
                        "end": _mimecast_time(now)}]):
                    listed = {item["id"]: item for item in page if _usable_id(item.get("id"))}
                    known = _fetched(db, target.address, list(listed))
                    new.update((i, item) for i, item in listed.items() if i not in known and i not in new)
            except ApiError as exc:
                if exc.fatal or exc.transient or not new:
                    raise
                result.error = str(exc)  # a listing cut short (a looping token): what it gave is written
            retry = _parts_to_retry(db, target.address, now, settings.interval_s)
            result.ids = list(new)
            if new or retry:
                result.folder = _write(api, settings, target, list(new.values()), retry, start,
                                       now if result.error is None else None, result)
        except ApiError as exc:
            if exc.fatal:
                raise
            result.error = str(exc)
            continue
        if result.error is None:
            ladder.done(target, levels, now)
        if result.folder is not None and apply is not None:
            apply(result.folder)
    return passes


def _fetched(db: sqlite_utils.Database, address: str, ids: list[str]) -> set[str]:
    """Which of the listed ids were fetched before: asks about these, not every id ever seen."""
    return {r[0] for part, marks in store.in_parts(ids)
            for r in db.execute(f"SELECT id FROM mimecast_fetched WHERE mailbox = ? AND id IN ({marks})", (address, *part))}


def _parts_to_retry(db: sqlite_utils.Database, address: str, now: float, interval: int) -> list[str]:
    """Entries written without content whose backoff has run out: tried again this pass."""
    return [r[0] for r in db.execute(
        "SELECT id FROM mimecast_fetched WHERE mailbox = ? AND content = 0 AND attempts < ?"
        " AND fetched_at + ? * (1 << min(attempts, 16)) <= ? ORDER BY fetched_at LIMIT ?",
        (address, RETRY_ATTEMPTS, interval, now, RETRY_PARTS))]


def _usable_id(value) -> bool:
    """A Mimecast id the poller can record and ask about again."""
    return isinstance(value, str) and 0 < len(value) <= 1024 and value.isprintable() and value == _text(value)


def _text(value: str) -> str:
    """Text that JSON and SQLite can hold: lone surrogates (which no UTF-8 can) replaced."""
    return _SURROGATE.sub("\ufffd", value)


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_TEXT = 16_384        # characters of a subject or a header value copied into a page
MAX_ADDRESSES = 1_000    # recipients copied per entry


def _entry(item: dict, details: dict, now: float, warnings: list[str]) -> dict | None:
    """The snapshot entry for one listed message, every field normalised or dropped with a
    warning naming its id, so the page the poller writes is valid (formats.md): one odd
    message never costs the others of its window. None when even that cannot make it one."""
    mimecast_id = item["id"]
    said = []

    def text(name: str, value, required: bool = False) -> str | None:
        if value is None:
            if required:
                said.append(f"no {name}: taken as empty")
                return ""
            return None
        if not isinstance(value, str):
            said.append(f"{name} is not text: {'taken as empty' if required else 'dropped'}")
            return "" if required else None
        if len(value) > MAX_TEXT:
            said.append(f"{name} longer than {MAX_TEXT} characters: cut")
            value = value[:MAX_TEXT]
        cleaned = _text(value)
        if cleaned != value:
            said.append(f"{name} is not valid Unicode: replaced characters")
        return cleaned

    def when(name: str, value, fallback: float | None) -> str | None:
        if value is None:
            return None if fallback is None else normalise.iso(fallback)
        if isinstance(value, str):
            try:
                formats.check_time(value, "", name)
                return value
            except formats.FormatError:
                pass
        said.append(f"{name} {files.shown(str(value), 40)} is not a time: "
                    + ("taken as the pass's time" if fallback is not None else "dropped"))
        return None if fallback is None else normalise.iso(fallback)

    def address(name: str, value) -> dict | None:
        if isinstance(value, dict) and isinstance(value.get("emailAddress"), str):
            out = {"emailAddress": _text(value["emailAddress"][:1024])}
            if isinstance(value.get("displayableName"), str):
                out["displayableName"] = _text(value["displayableName"][:1024])
            return out
        if value is not None:
            said.append(f"{name} is not an address: dropped")
        return None

    def addresses(name: str, value) -> list[dict]:
        if value is None:
            return []
        if not isinstance(value, list):
            said.append(f"{name} is not a list: dropped")
            return []
        if len(value) > MAX_ADDRESSES:
            said.append(f"{name} has more than {MAX_ADDRESSES} addresses: cut")
        return [a for a in (address(name, v) for v in value[:MAX_ADDRESSES]) if a is not None]

    entry: dict = {"id": mimecast_id, "received": when("received", item.get("received"), now),
                   "from": address("from", item.get("from")) or {"emailAddress": ""},
                   "subject": text("subject", item.get("subject"), required=True),
                   "to": addresses("to", details.get("to")), "cc": addresses("cc", details.get("cc"))}
    if entry["from"] == {"emailAddress": ""} and not isinstance(item.get("from"), dict):
        said.append("no sender: taken as empty")
    for name, value in (("mimeMessageId", text("mimeMessageId", details.get("mimeMessageId"))),
                        ("headerDate", when("headerDate", details.get("headerDate"), None)),
                        ("status", text("status", item.get("status"))), ("smash", text("smash", item.get("smash")))):
        if value is not None:
            entry[name] = value
    if isinstance(item.get("expired"), bool):
        entry["expired"] = item["expired"]
    for name in ("size", "attachmentCount"):
        value = item.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
            entry[name] = value
    headers = details.get("headers")
    if isinstance(headers, list):
        entry["headers"] = [{"name": _text(h["name"][:256]),
                             "values": [_text(v[:MAX_TEXT]) for v in h.get("values") or [] if isinstance(v, str)][:16]}
                            for h in headers[:256] if isinstance(h, dict) and isinstance(h.get("name"), str)
                            and isinstance(h.get("values", []), list)]
    try:
        msgspec.convert(entry, formats.Entry)
    except msgspec.ValidationError as exc:  # what normalising could not mend
        warnings.append(f"entry {files.shown(mimecast_id)}: not written ({exc})")
        return None
    if said:
        warnings.append(f"entry {files.shown(mimecast_id)}: " + "; ".join(said))
    return entry


def _write(api: Api, settings: Mimecast, target: Target, new: list[dict], retry: list[str], start: float,
           window_end: float | None, result: Fetched) -> Path:
    """The snapshot folder for `new` (and parts fetched again for `retry`). `window_end`
    is how far the listing went; None when it was cut short (the window stays)."""
    now = result.window_end
    name = f"{target.address}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{uuid.uuid4().hex[:8]}"
    final = settings.snapshot_folder / name
    building = settings.snapshot_folder / f".{name}.part"  # watchers ignore dot-names
    files.private_dir(building / "messages")
    try:
        entries, dropped = [], []
        for item in new:
            try:
                detail = api.call("/api/archive/get-message-detail", [{"id": item["id"], "mailbox": target.address}])
            except ApiError as exc:  # this message's problem: it is listed, and tried, again later
                if exc.fatal or exc.transient:
                    raise
                result.warnings.append(f"entry {files.shown(item['id'])}: {exc}; not written this pass")
                result.ids.remove(item["id"])
                continue
            data = detail.get("data")
            details = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
            entry = _entry(item, details, now, result.warnings)
            if entry is None:
                dropped.append(item["id"])
                continue
            stored = _part(api, target, item["id"], building, result)
            if stored is None:
                result.without_content.append(item["id"])
            else:
                entry["content"] = stored
            entries.append(entry)
        contents = {}
        for mimecast_id in retry:
            stored = _part(api, target, mimecast_id, building, result)
            if stored is not None:
                contents[mimecast_id] = stored
        page = {"meta": {"status": 200, "snapshot": {
            "address": target.address, "kind": target.kind, "taken": normalise.iso(now),
            "start": normalise.iso(start), "end": normalise.iso(now)}}, "data": entries, "fail": []}
        files.write_durable(building / "snapshot.json", json.dumps(page, ensure_ascii=False).encode())
        manifest = {"address": target.address, "kind": target.kind, "window_end": window_end,
                    "fetched": [e["id"] for e in entries] + dropped, "without_content": result.without_content,
                    "contents": contents, "retried": retry, "warnings": result.warnings}
        files.write_durable(building / MANIFEST, json.dumps(manifest).encode())
        os.replace(building, final)
        files.fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)  # nothing half-written stays
        raise
    if new:
        log.info("%s: %d new message(s) -> %s", target.address, len(new), final)
    return final


def _part(api: Api, target: Target, mimecast_id: str, building: Path, result: Fetched) -> str | None:
    """The raw message streamed into the folder being built; None (and a warning) when
    Mimecast cannot give it now (it is tried again on a later pass)."""
    stored = f"messages/{hashlib.sha256(mimecast_id.encode()).hexdigest()[:32]}.eml"
    try:
        api.part(mimecast_id, target.address, building / stored)
    except ApiError as exc:
        if exc.fatal:
            raise
        result.warnings.append(f"entry {files.shown(mimecast_id)}: {exc}; written without content for now")
        return None
    return stored


def read_manifest(folder: Path) -> dict | None:
    """The poller's manifest of a snapshot folder, or None for a folder it did not write."""
    try:
        data = files.read_regular(folder / MANIFEST, limit=64 << 20)
    except OSError:
        return None
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("address"), str) else None


def apply_folder(db: sqlite_utils.Database, folder: Path, now: float, once: bool = True) -> engine.SnapshotResult | None:
    """Apply a folder the poller wrote (once, whoever sees it first), and record what was
    fetched, what came without content, the content fetched again, and how far the window
    went, in the transaction that applies it. The folder is removed once applied."""
    folder = Path(folder).absolute()
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"{folder}: no {MANIFEST}; not a folder the Mimecast poller wrote")
    address = manifest["address"]
    prepared = engine.prepare_snapshot(db, folder, once=once)
    if prepared is not None:  # what the poller mended or dropped is reported with the snapshot
        prepared.loaded.warnings += [(str(folder), str(w)[:1000]) for w in manifest.get("warnings") or []]
    stored = _store_contents(db, folder, manifest.get("contents") or {})
    with store.transaction(db.conn) as conn:
        applied = engine.insert_snapshot(conn, prepared, now, once=once) if prepared is not None else None
        missing = set(manifest.get("without_content") or [])
        conn.executemany("INSERT OR IGNORE INTO mimecast_fetched (mailbox, id, fetched_at, content) VALUES (?, ?, ?, ?)",
                         [(address, i, now, int(i not in missing)) for i in manifest.get("fetched") or []])
        conn.executemany("UPDATE mimecast_fetched SET attempts = attempts + 1, fetched_at = ? WHERE mailbox = ?"
                         " AND id = ? AND content = 0", [(now, address, i) for i in manifest.get("retried") or []])
        for mimecast_id, path in stored.items():
            conn.execute("UPDATE entries SET content = ? WHERE entry_id = ? AND address = ? AND content IS NULL",
                         (path, mimecast_id, address))
            conn.execute("UPDATE mimecast_fetched SET content = 1 WHERE mailbox = ? AND id = ?", (address, mimecast_id))
        if isinstance(manifest.get("window_end"), (int, float)):  # None: the listing was cut short
            conn.execute("INSERT INTO mimecast_windows VALUES (?, ?) ON CONFLICT (mailbox) DO UPDATE"
                         " SET last_end = max(last_end, excluded.last_end)", (address, float(manifest["window_end"])))
    shutil.rmtree(folder, ignore_errors=True)  # its content is in the store now
    return applied


def _store_contents(db: sqlite_utils.Database, folder: Path, contents: dict) -> dict[str, str]:
    """Content fetched again for entries stored without it, copied into the store (N1:
    durable before the commit that names it)."""
    stored = {}
    content_dir = files.private_dir(engine.store_dir(db) / "content")
    for mimecast_id, name in contents.items():
        try:
            path = files.confined(folder, name, f"{MANIFEST}: contents")
            stored[mimecast_id] = snapshot.store_content(files.read_regular(path), content_dir)
        except (OSError, files.OutsideError) as exc:
            log.warning("%s: content of %s: %s", folder, files.shown(str(mimecast_id)), exc)
    return stored


MAX_BACKOFF = 3600  # seconds: a poller that keeps failing tries again at least hourly


def record_health(conn, outcomes: dict[str, str | None], now: float) -> None:
    """Each address's last success, last error and failures in a row, for `status`
    (inside the caller's transaction)."""
    for address, error in outcomes.items():
        if error is None:
            conn.execute("INSERT INTO mimecast_health (address, last_success, failures) VALUES (?, ?, 0)"
                         " ON CONFLICT (address) DO UPDATE SET last_success = excluded.last_success, failures = 0",
                         (address, now))
        else:
            conn.execute("INSERT INTO mimecast_health (address, last_error, error_at, failures) VALUES (?, ?, ?, 1)"
                         " ON CONFLICT (address) DO UPDATE SET last_error = excluded.last_error,"
                         " error_at = excluded.error_at, failures = mimecast_health.failures + 1",
                         (address, error[:500], now))


def supervise(api: Api, settings: Mimecast, db: sqlite_utils.Database, stop: threading.Event,
              apply: Callable[[Path], None], record: Callable[[dict[str, str | None], float], None],
              before: Callable[[float], None] | None = None, once: bool = False) -> list[Fetched]:
    """Passes every interval_s until `stop`. Every failure of a pass (refused credentials,
    the network, an answer the poller did not expect, a full disk) is one log line, and
    the next pass comes after a backoff (doubling, at most an hour): the loop never ends
    on its own. `record` gets each address's outcome; with `once`, one pass, returned."""
    ladder, wait = Ladder(), float(settings.interval_s)
    while not stop.is_set():
        now = engine.wall_clock()
        passes: list[Fetched] = []
        try:
            if before is not None:
                before(now)
            passes = fetch(api, settings, db, now, ladder, apply)
            outcomes = {p.target.address: p.error for p in passes}
            for result in passes:
                for warning in result.warnings:
                    log.warning("Mimecast %s: %s", result.target.address, warning)
                if result.error:
                    log.warning("Mimecast: %s", result.error)
        except Exception as exc:  # one bad pass never ends the poller
            reason = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            outcomes = dict.fromkeys(settings.mailboxes, reason)
            if once:
                record(outcomes, now)
                raise
            log.error("Mimecast pass failed: %s", reason)
        record(outcomes, now)
        failed = any(outcomes.values())
        wait = min(wait * 2, MAX_BACKOFF) if failed else float(settings.interval_s)
        if once:
            return passes
        if failed:
            log.warning("Mimecast: next pass in %d s", wait)
        stop.wait(wait)
    return []


def directory(api: Api, settings: Mimecast, now: float) -> dict:
    """The configured groups and their members (nested groups followed, cycles end), in
    the directory format. Users are the polled mailboxes. Aliases and delegates are not
    fetched: get-internal-users lists addresses without naming their primary, and
    find-delegate-users answers per delegate, not per mailbox (a documented gap)."""
    groups, seen, queue = [], set(), list(settings.groups)
    while queue:
        address = queue.pop(0)
        if address in seen:
            continue
        seen.add(address)
        found = api.call("/api/directory/find-groups", [{"query": address}])
        folders = ((found.get("data") or [{}])[0] or {}).get("folders") or []
        match = next((f for f in folders if isinstance(f, dict) and address in (
            str(f.get("description", "")).lower(), str(f.get("emailAddress", "")).lower())), None)
        if match is None:
            log.warning("/api/directory/find-groups: no group named %s", address)
            continue
        members = []
        for member in (m for page in api.pages("/api/directory/get-group-members", [{"id": match["id"]}],
                                               key="groupMembers") for m in page):
            member_address = normalise.address(member.get("emailAddress"))
            if not member_address:
                continue
            nested = str(member.get("type", "")).lower() == "group"
            members.append({"emailAddress": member_address, "type": "group" if nested else "user"})
            if nested:
                queue.append(member_address)
        groups.append({"emailAddress": address, "groupMembers": members})
    return {"synced": normalise.iso(now), "users": [{"emailAddress": m} for m in settings.mailboxes],
            "groups": groups, "delegates": []}


def write_directory(data: dict, target: Path) -> None:
    if not target.parent.exists():
        files.private_dir(target.parent)
    files.write_durable(target, json.dumps(data, indent=1).encode())
