"""Worker processes that end with the process that started them.

A kill -9 of the daemon or of `syncengine index` mid-read must not leave its parsing
workers behind: a ProcessPoolExecutor's workers wait on a queue whose write end they
hold themselves, so they never see their parent go, and live on holding memory and the
export open. On Linux each worker asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG); elsewhere a thread in the worker watches its parent's pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1


def pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))


def _start(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    _die_with(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent() -> None:
    """For a child process started otherwise (multiprocessing.Process): end with its parent."""
    _die_with(os.getppid())


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            asked = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            asked = False
        if asked:
            if os.getppid() != parent:  # it died before we asked
                os._exit(1)
            return
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
