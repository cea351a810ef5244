"""A pass of the poller: for each mailbox, the messages Mimecast archived in the window
that were not fetched before become one snapshot folder (formats.md), written atomically
(built under a dot-name beside its final name, then renamed), then applied by the same
code as `snapshot add`, recording what was fetched in the same transaction.

Fetching does no write to the store, so the daemon runs it on its own thread and hands
only the apply to its writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from .. import engine, files, normalise, store
from .api import Api, ApiError
from .config import Mimecast

log = logging.getLogger("syncengine.mimecast")

OVERLAP_SECONDS = 300  # each window starts this long before the last one ended: nothing slips between


@dataclass
class Fetched:
    """One mailbox's pass: the snapshot folder written (None when nothing was new)."""
    mailbox: str
    window_end: float
    ids: list[str]
    folder: Path | None = None
    without_content: list[str] = field(default_factory=list)  # ids whose part could not be fetched


def _mimecast_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(epoch))


def fetch(api: Api, settings: Mimecast, db: sqlite_utils.Database, now: float) -> list[Fetched]:
    """List, detail and part for every new message of every mailbox; snapshot folders on
    disk. `db` is only read. ApiError (fatal or transient) stops the pass: folders
    already written stand, and the one being built is removed."""
    if not settings.snapshot_folder.exists():
        files.private_dir(settings.snapshot_folder)
    for left in settings.snapshot_folder.glob(".*.part"):  # built by a pass that was killed
        shutil.rmtree(left, ignore_errors=True)
    passes = []
    for mailbox in settings.mailboxes:
        row = db.execute("SELECT last_end FROM mimecast_windows WHERE mailbox = ?", (mailbox,)).fetchone()
        start = row[0] - OVERLAP_SECONDS if row else now - settings.lookback_hours * 3600
        listed = list(api.pages("/api/archive/get-message-list", [{
            "mailbox": mailbox, "view": "INBOX", "start": _mimecast_time(start), "end": _mimecast_time(now)}]))
        known = _fetched(db, mailbox, [item["id"] for item in listed if isinstance(item.get("id"), str)])
        new = [item for item in listed if isinstance(item.get("id"), str) and item["id"] not in known]
        new = list({item["id"]: item for item in new}.values())  # an id listed on two pages counts once
        result = Fetched(mailbox, now, [item["id"] for item in new])
        if new:
            result.folder = _write(api, settings, mailbox, new, start, now, result)
        passes.append(result)
    return passes


def _fetched(db: sqlite_utils.Database, mailbox: str, ids: list[str]) -> set[str]:
    """Which of the listed ids were fetched before: asks about these, not every id ever seen."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(r[0] for r in db.execute(
            f"SELECT id FROM mimecast_fetched WHERE mailbox = ? AND id IN ({', '.join('?' * len(chunk))})",
            (mailbox, *chunk)))
    return found


def _write(api: Api, settings: Mimecast, mailbox: str, new: list[dict], start: float, now: float,
           result: Fetched) -> Path:
    name = f"{mailbox}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{uuid.uuid4().hex[:8]}"
    final = settings.snapshot_folder / name
    building = settings.snapshot_folder / f".{name}.part"  # watchers ignore dot-names
    files.private_dir(building / "messages")
    try:
        entries = []
        for item in new:
            detail = api.call("/api/archive/get-message-detail", [{"id": item["id"], "mailbox": mailbox}])
            details = (detail.get("data") or [{}])[0]
            entry = {key: item[key] for key in ("id", "status", "received", "from", "subject", "size",
                                                  "attachmentCount", "expired", "smash") if key in item}
            entry.update({key: details[key] for key in ("mimeMessageId", "headerDate", "headers", "to", "cc")
                          if key in details})
            try:
                raw = api.part(item["id"], mailbox)
            except ApiError as exc:
                if exc.fatal:
                    raise
                log.warning("%s; entry %s is written without content", exc, item["id"])
                result.without_content.append(item["id"])
            else:
                stored = f"messages/{hashlib.sha256(item['id'].encode()).hexdigest()[:32]}.eml"
                files.write_durable(building / stored, raw)
                entry["content"] = stored
            entries.append(entry)
        page = {"meta": {"status": 200, "snapshot": {
            "address": mailbox, "kind": "mailbox", "taken": normalise.iso(now),
            "start": normalise.iso(start), "end": normalise.iso(now)}}, "data": entries, "fail": []}
        files.write_durable(building / "snapshot.json", json.dumps(page, ensure_ascii=False).encode())
        os.replace(building, final)
        files.fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)  # nothing half-written stays
        raise
    log.info("%s: %d new message(s) -> %s", mailbox, len(new), final)
    return final


def apply(db: sqlite_utils.Database, passes: list[Fetched], now: float) -> None:
    """Apply each written snapshot (once, whoever sees it first) and remember what was
    fetched and how far the window went, in the transaction that applies it."""
    for result in passes:
        prepared = engine.prepare_snapshot(db, result.folder, once=True) if result.folder is not None else None
        with store.transaction(db.conn) as conn:
            applied = engine.insert_snapshot(conn, prepared, now, once=True) if prepared is not None else None
            conn.executemany("INSERT OR IGNORE INTO mimecast_fetched VALUES (?, ?, ?)",
                             [(result.mailbox, i, now) for i in result.ids])
            conn.execute("INSERT INTO mimecast_windows VALUES (?, ?) ON CONFLICT (mailbox) DO UPDATE"
                         " SET last_end = excluded.last_end", (result.mailbox, result.window_end))
        if result.folder is not None and applied is None:
            log.info("%s was applied already (the daemon saw it first)", result.folder)


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
        for member in api.pages("/api/directory/get-group-members", [{"id": match["id"]}], key="groupMembers"):
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
