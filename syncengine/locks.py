"""One process per role per store: a lock file held for the process's life, naming its
holder. fcntl on POSIX, msvcrt on Windows; the lock goes with the process, even on kill -9."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from .files import private_dir

if os.name == "nt":
    import msvcrt

    def _try_lock(handle: IO, shared: bool = False) -> bool:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(handle: IO, shared: bool = False) -> bool:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except OSError:
            return False


class Held(Exception):
    """The lock is held by another process; the text names it."""


def hold(path: Path) -> IO:
    """Take the lock at `path` for this process, or Held naming the holder."""
    private_dir(path.parent)
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    if not _try_lock(handle):
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Held(holder)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def holder(path: Path) -> str | None:
    """Who holds the lock at `path` ('pid N'), or None when nobody does."""
    try:
        handle = open(path)
    except OSError:
        return None
    with handle:
        if _try_lock(handle, shared=True):
            return None
        return handle.read().strip() or "another process"
