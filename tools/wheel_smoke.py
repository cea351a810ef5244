"""Packaging proven the way users install: build the wheel, install it into a fresh
virtual environment outside the checkout, and run every command group from a folder
that is not the checkout (so nothing is imported from the source tree).

    python tools/wheel_smoke.py            # .ci/run runs it after the test suite

Each step prints one line; the first failure shows the command's output and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice@acme.example"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wheel-smoke-") as temp:
        work = Path(temp)
        step("build the wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                                 str(ROOT)], cwd=work)
        (wheel,) = (work / "dist").glob("syncengine-*.whl")
        venv.EnvBuilder(with_pip=True).create(work / "env")
        python = work / "env" / ("Scripts" if os.name == "nt" else "bin") / "python"
        step("install it into a fresh venv", [str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=work)
        cli = [str(python.with_name("syncengine"))]  # the entry point, as a user runs it
        home = work / "home"
        home.mkdir()
        # the user's config and data folders (platformdirs reads these on Linux)
        os.environ.update(XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"))
        os.environ.pop("SYNCENGINE_CONFIG", None)
        where = step("it is not the checkout's", [str(python), "-c", "import syncengine; print(syncengine.__file__)"],
                     cwd=home)
        assert str(ROOT) not in where, f"imported from the checkout: {where}"
        step("--help", cli + ["--help"], cwd=home)
        step("demo", cli + ["demo", "--pace", "0"], cwd=home)
        step("init (the default config)", cli + ["init", "--mailbox", ALICE, "--export", "mail"], cwd=home)
        shown = step("config", cli + ["config"], cwd=home)
        assert str(home / ".config" / "syncengine" / "syncengine.toml") in shown, shown
        (home / "mail" / "Inbox").mkdir(parents=True)
        (home / "mail" / "Inbox" / "hello.eml").write_bytes(
            b"Message-ID: <hello@x>\r\nDate: Mon, 02 Mar 2026 08:00:00 +0000\r\nSubject: hi\r\n\r\nbody\r\n")
        step("index (what the config names)", cli + ["index"], cwd=home)
        (home / "snap.json").write_text(json.dumps({"meta": {"status": 200, "snapshot": {
            "address": ALICE, "kind": "mailbox"}}, "fail": [], "data": [{
                "id": "n1", "received": "2026-03-02T08:00:00Z", "mimeMessageId": "<new@x>",
                "from": {"emailAddress": "bob@example.org"}, "subject": "new"}]}))
        step("snapshot add", cli + ["snapshot", "add", "snap.json"], cwd=home)
        step("event start", cli + ["event", "start", "ev1"], cwd=home)
        deltas = step("deltas", cli + ["deltas", "--json"], cwd=home)
        assert '"<new@x>"' in deltas, deltas
        step("sync", cli + ["sync"], cwd=home)
        step("event end", cli + ["event", "end", "ev1"], cwd=home)
        step("status", cli + ["status"], cwd=home)
        replayed = str(home / "replay.db")
        demo = step("the demo's scenario", [str(python), "-c", "from importlib import resources; "
                                            "print(resources.files('syncengine.demo'))"], cwd=home).strip()
        step("replay into a store (--db)", cli + ["replay", demo, "--db", replayed, "-q"], cwd=home)
        step("export-pst", cli + ["export-pst", "--db", replayed, "--event", "outage", "out.pst"], cwd=home)
        assert (home / "out.pst").read_bytes()[:4] == b"!BDN"
        step("apply --help", cli + ["apply", "--help"], cwd=home)
        step("mimecast --help", cli + ["mimecast", "poll", "--help"], cwd=home)
        daemon = subprocess.Popen(cli + ["daemon"], cwd=home, stderr=subprocess.PIPE, text=True)
        for line in daemon.stderr:
            if "daemon started" in line:
                break
        else:
            fail("daemon start", daemon.wait(), "", "no 'daemon started' line")
        print("ok   daemon start")
        step("status (while the daemon runs)", cli + ["status"], cwd=home)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        if code != 0:
            fail("daemon stop", code, "", daemon.stderr.read())
        print("ok   daemon stop (SIGTERM, exit 0)")
    print("wheel smoke test: every command group works from the installed wheel")


def step(what: str, command: list[str], cwd: Path) -> str:
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        fail(what, result.returncode, result.stdout, result.stderr)
    print(f"ok   {what} ({time.monotonic() - started:.1f} s)")
    return result.stdout


def fail(what: str, code: int, out: str, err: str) -> None:
    print(f"FAIL {what}: exit {code}\n{out[-2000:]}\n{err[-2000:]}")
    sys.exit(1)


if __name__ == "__main__":
    main()
