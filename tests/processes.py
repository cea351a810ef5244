"""Real processes for the notification tests: started, read with deadlines, stopped.

Nothing here sleeps to synchronise: a test waits for a line it expects, and fails
with what it saw when the deadline passes first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


class Proc:
    """A child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict | None = None, preexec_fn=None):
        self.args = args
        self.popen = subprocess.Popen([sys.executable, "-m", "syncengine", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                                      preexec_fn=preexec_fn)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        for stream, sink in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "the expected output"):
        """Block until predicate(self) is true; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what} from {' '.join(self.args)}:\n"
                                         f"stdout tail: {self.out[-5:]}\nstderr tail: {self.err[-10:]}")
                self._changed.wait(min(left, 0.5))
        return True

    def deltas(self) -> list[dict]:
        return [json.loads(line) for line in list(self.out) if line.startswith("{")]

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:  # a hang: the daemon's thread stacks, for the report
                if self.args[0] == "daemon":
                    seen = len(self.err)
                    self.popen.send_signal(signal.SIGUSR1)
                    with contextlib.suppress(AssertionError):
                        self.wait_for(lambda p: len(p.err) > seen + 5, timeout=3, what="the stacks")
                print(f"{' '.join(self.args)} did not stop within 10 s of SIGTERM; stderr tail:\n"
                      + "\n".join(self.err[-60:]), flush=True)
                self.kill()
        return self.popen.returncode


def serve(db: Path, *extra: str, env: dict | None = None) -> Proc:
    server = Proc("serve", "--db", str(db), "-v", *extra, env=env)
    server.wait_for(lambda p: any(line.startswith("serving") for line in p.err), what="the serving line")
    return server


def free_port_pair() -> int:
    """A port p with p and p+1 free now (ROUTER and PUB)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


def wait_until(predicate, timeout: float = 30.0, what: str = "the condition", every: float = 0.1):
    """Until predicate() returns a true value (returned); AssertionError after `timeout`
    seconds, for state outside a process's output (a store, a folder, a server's calls)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        threading.Event().wait(every)
