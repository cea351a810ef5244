"""What every part of the engine shares: its error, its clock, its settings, its folder."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from .. import formats


class EngineError(Exception):
    """A request the engine refuses; the text says why."""


def wall_clock() -> float:
    """The engine's clock outside replay, in whole seconds, the same for every process and
    thread that writes to a store: an entry added at t is visible to an event started at t."""
    return float(int(time.time()))


def store_dir(db: sqlite_utils.Database) -> Path:
    """The folder beside the store file that holds stored content and replay overlays."""
    name = db.execute("PRAGMA database_list").fetchone()[2]
    return Path(name + ".d")


# --- settings ------------------------------------------------------------------------------

def get_settings(db: sqlite_utils.Database) -> formats.Settings:
    values = {row[0]: json.loads(row[1]) for row in db.execute("SELECT key, value FROM settings")}
    return formats.Settings(**values)


def set_settings(conn: sqlite3.Connection, settings: formats.Settings) -> None:
    for key in ("poll_interval", "post_event_window", "calendar_items"):
        conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(getattr(settings, key))))

