"""Replay a scenario (formats.md "Replay scenario") on a virtual clock.

The replay differs from the daemon only in its clock and where inputs come from: it
calls the same engine functions. Each timeline step is journalled in the store in the
transaction that applies it (the step's own effect where the engine writes one), so a
replay stopped at any point, by a `restart` step or a crash, resumes from the store
and ends with the same delta log.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import coverage, engine, files, formats, index, normalise, store
from .store import transaction

LOAD_STEP = -1  # exports and directory, before the first timeline entry


@dataclass
class Outcome:
    deltas: list[dict]
    phases: dict[str, Counter]
    events: list[dict] = field(default_factory=list)  # engine.status()'s events, with reports
    missing: list[dict] = field(default_factory=list)
    unexpected: list[dict] = field(default_factory=list)
    restarts: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.missing or self.unexpected)


Say = Callable[[str], None]


def load_scenario(folder: Path) -> formats.Scenario:
    where = folder / "scenario.json"
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise formats.FormatError(f"{where}: cannot read ({exc.strerror or exc})") from None
    scenario = formats.decode(data, formats.Scenario, str(where))
    for number, step in enumerate(scenario.timeline):
        formats.check_time(step.at, str(where), f"$.timeline[{number}].at")
        needs = {"snapshot": ["path"], "directory_sync": ["path"], "start_event": ["event"],
                 "end_event": ["event"], "exchange_deliver": ["mailbox", "folder", "path"],
                 "exchange_remove": ["mailbox", "path"], "outbox_add": ["mailbox", "path"],
                 "add_export": ["mailbox", "path"]}.get(step.do, [])
        for name in needs:
            if getattr(step, name) is None:
                raise formats.FormatError(f"{where}: $.timeline[{number}].{name}: required for {step.do!r}")
        try:  # N4: checked before anything runs, so a bad step cannot act half-way
            if step.mailbox is not None:
                try:
                    step.mailbox = normalise.mailbox(step.mailbox)
                except ValueError as exc:
                    raise files.OutsideError(f"$.timeline[{number}].mailbox: {exc}") from None
            if step.folder is not None:
                files.inside(folder, step.folder, f"$.timeline[{number}].folder")
            if step.path is not None:  # whether it exists is the step's own concern (N3)
                files.inside(folder, step.path, f"$.timeline[{number}].path")
        except (ValueError, files.OutsideError) as exc:
            raise formats.FormatError(f"{where}: {exc}") from None
    for number, mailbox in enumerate(scenario.mailboxes):
        if (mailbox.export is None) != mailbox.no_local_mail:  # C19: coverage is declared
            raise formats.FormatError(f"{where}: $.mailboxes[{number}]: give its export, or \"no_local_mail\": true "
                                      "(and no export) for a mailbox that has no local mail")
        try:
            mailbox.address = normalise.mailbox(mailbox.address)
            if mailbox.export is not None:
                files.inside(folder, mailbox.export, f"$.mailboxes[{number}].export")
        except files.OutsideError as exc:
            raise formats.FormatError(f"{where}: {exc}") from None
        except ValueError as exc:
            raise formats.FormatError(f"{where}: $.mailboxes[{number}].address: {exc}") from None
    if scenario.directory is not None:
        try:
            files.inside(folder, scenario.directory, "$.directory")
        except files.OutsideError as exc:
            raise formats.FormatError(f"{where}: {exc}") from None
    formats.check_time(scenario.until, str(where), "$.until")
    return scenario


def replay(folder: Path, db_path: Path, say: Say = lambda text: None) -> Outcome:
    """Run the scenario in `folder` against the store at `db_path` (resuming it if it
    holds an earlier, interrupted run of the same scenario)."""
    scenario = load_scenario(folder)
    restarts = 0
    while True:
        db = store.connect(db_path)
        try:
            finished = _run(db, scenario, folder, say)
        finally:
            db.conn.close()
        if finished:
            break
        restarts += 1  # a `restart` step: nothing survives but the store
    db = store.connect(db_path)
    try:
        outcome = Outcome(engine.deltas(db), _phases(db), engine.status(db)["events"], restarts=restarts)
    finally:
        db.conn.close()
    if scenario.expect is not None:
        outcome.missing, outcome.unexpected = compare(scenario.expect, outcome.deltas)
        if not scenario.exact:
            outcome.unexpected = []
    return outcome


def _run(db: sqlite_utils.Database, scenario: formats.Scenario, folder: Path, say: Say) -> bool:
    """Advance the virtual clock until `until`; False when a `restart` step stops it."""
    done = {row[0] for row in db.execute("SELECT step FROM replay_steps")}
    steps = sorted(((normalise.epoch(normalise.parse_iso(s.at)), n, s) for n, s in enumerate(scenario.timeline)),
                   key=lambda item: (item[0], item[1]))
    until = normalise.epoch(normalise.parse_iso(scenario.until))
    start = steps[0][0] if steps else until
    if LOAD_STEP not in done:
        _load(db, scenario, folder, start, say)
    pending = [item for item in steps if item[1] not in done]
    while True:
        next_step = pending[0][0] if pending else None
        polls = [e.next_poll() for e in engine.open_events(db.conn)]
        next_poll = min(polls) if polls else None
        now = min(t for t in (next_step, next_poll) if t is not None) if (pending or polls) else None
        if now is None or now > until:
            return True
        while pending and pending[0][0] == now:
            _, number, step = pending.pop(0)
            if step.do == "restart":
                _mark(db.conn, number, now)
                say(f"{normalise.iso(now)}  restart: the engine stops hard and starts again from its store")
                return False
            _apply(db, scenario, number, now, folder, say)
        due = engine.due_events(db, now)
        if due:
            for delta in engine.poll(db, now, due):
                say(_describe(delta))


def _load(db, scenario: formats.Scenario, folder: Path, now: float, say: Say) -> None:
    with transaction(db.conn) as conn:
        engine.set_settings(conn, scenario.settings)
    for mailbox in scenario.mailboxes:
        with transaction(db.conn) as conn:
            coverage.declare_mailbox(conn, mailbox.address, mailbox.no_local_mail, now)
        # The overlay is part of the mailbox from the start: what the timeline adds to it
        # later arrives in an export that has read, never in a first read (a baseline, C19).
        overlay = files.private_dir(overlay_root(db, mailbox.address))
        _index(db, ([folder / mailbox.export] if mailbox.export else []) + [overlay], mailbox.address, now, say)
    sync = None
    if scenario.directory:
        try:
            sync = engine.read_directory(_input(folder, scenario.directory))
        except (formats.FormatError, files.OutsideError) as exc:
            say(f"error: {exc}")
    with transaction(db.conn) as conn:  # the directory commits with the step that loads it
        if sync is not None:
            engine.insert_directory(conn, sync, now)
        _mark(conn, LOAD_STEP, now)


def _index(db, paths: list[Path], mailbox: str, now: float, say: Say) -> None:
    def report(rep: index.FileReport) -> None:
        for error in rep.errors:
            say(f"error: {rep.path}: {error.reason}" if error.where == rep.path
                else f"{rep.status}: {rep.path} ({error.where}): {error.reason}")
    index.run(db, paths, mailbox, now=now, on_file=report, workers=1)


def _input(folder: Path, name: str) -> Path:
    """A file or folder the scenario names, resolved inside the scenario (N4)."""
    return files.confined(folder, name, str(folder / name), folder_ok=True)


def _mark(conn: sqlite3.Connection, number: int, now: float) -> None:
    conn.execute("INSERT OR IGNORE INTO replay_steps VALUES (?, ?)", (number, now))


def _apply(db, scenario: formats.Scenario, number: int, now: float, folder: Path, say: Say) -> None:
    """One timeline step, journalled in the transaction that applies it: a replay stopped
    anywhere resumes with each step done exactly once (C1, N1)."""
    step = scenario.timeline[number]
    stamp = normalise.iso(now)
    try:
        if step.do == "snapshot":
            prepared = engine.prepare_snapshot(db, _input(folder, step.path))  # files first, then one commit
            with transaction(db.conn) as conn:
                result = engine.insert_snapshot(conn, prepared, now)
                _mark(conn, number, now)
            say(f"{stamp}  snapshot {step.path}: {result.entries} entries in {result.pages} page(s)")
            for _, reason in result.rejected:
                say(f"error: rejected page: {reason}")
            for file, reason in result.warnings:
                say(f"warning: {file}: {reason}")
            return
        if step.do == "directory_sync":
            sync = engine.read_directory(_input(folder, step.path))
            with transaction(db.conn) as conn:
                engine.insert_directory(conn, sync, now)
                _mark(conn, number, now)
            say(f"{stamp}  directory sync {step.path}")
            return
        if step.do == "start_event":
            say(f"{stamp}  start event {step.event} for {', '.join(step.mailboxes)}")
            with transaction(db.conn) as conn:
                written = engine.start_event_in(conn, step.event, step.mailboxes, step.expand_distribution_lists, now,
                                                no_local_mail=step.no_local_mail)
                _mark(conn, number, now)
            for delta in written:
                say(_describe(delta))
            _say_waiting(db, say)
            return
        if step.do == "end_event":
            with transaction(db.conn) as conn:
                engine.end_event_in(conn, step.event, now)
                _mark(conn, number, now)
            say(f"{stamp}  end event {step.event}")
            return
        if step.do == "add_export":  # declared now, read now: C19's late coverage
            say(f"{stamp}  {step.mailbox}: export {step.path} added")
            _index(db, [_input(folder, step.path)], step.mailbox, now, say)
        else:
            _exchange(db, step, number, now, folder, scenario.timeline, say)
    except (formats.FormatError, engine.EngineError, files.OutsideError) as exc:
        say(f"error: {stamp} {step.do}: {exc}")
    with transaction(db.conn) as conn:  # steps whose effect is not one engine transaction
        _mark(conn, number, now)


def overlay_root(db, mailbox: str) -> Path:
    return engine.store_dir(db) / "overlay" / normalise.mailbox(mailbox)


def _exchange(db, step: formats.Step, number: int, now: float, folder: Path, steps: list[formats.Step],
              say: Say) -> None:
    """A message appears in (or leaves) the mailbox as the daemon would see the exported
    store change: the file lands in the mailbox's overlay tree and is indexed from there.
    Every path stays inside the scenario and the overlay (N4; checked at load too)."""
    root = files.private_dir(overlay_root(db, step.mailbox))
    name = Path(step.path).name
    if step.do == "exchange_remove":
        added = [s for s in steps[:number] if s.do in ("exchange_deliver", "outbox_add")
                 and s.mailbox == step.mailbox and s.path == step.path]
        if not added:
            raise formats.FormatError(f"exchange_remove: no earlier step added {files.shown(step.path)}")
        target = files.inside(root, f"{_overlay_folder(added[-1])}/{name}", "exchange_remove")
        target.unlink(missing_ok=True)
        if target.parent.exists():
            files.fsync_dir(target.parent)
        say(f"{normalise.iso(now)}  {step.mailbox}: {name} removed")
    else:
        source = files.confined(folder, step.path, "path")
        target = files.inside(root, f"{_overlay_folder(step)}/{name}", "folder")
        files.private_dir(target.parent)
        files.write_durable(target, files.read_regular(source))
        say(f"{normalise.iso(now)}  {step.mailbox}: {name} appears in {_overlay_folder(step)}")
    _index(db, [root], step.mailbox, now, say)


def _overlay_folder(step: formats.Step) -> str:
    return "Outbox" if step.do == "outbox_add" else step.folder


def _say_waiting(db, say: Say) -> None:
    for item in engine.waiting(db.conn):
        say(f"warning: {item['mailbox']} is waiting for its index ({item['export']}: {item['why']}); "
            "nothing is decided for it until the export reads (C19)")


def _describe(delta: dict) -> str:
    what = delta["message_id"] or delta["subject"] or delta["source"]
    return f"{delta['at']}    #{delta['seq']} {delta['action']:<7} {delta['mailbox']} {what} ({delta['reason']})"


def _phases(db) -> dict[str, Counter]:
    """Deltas per phase: reconcile (at the start), active (until the end), ending."""
    phases: dict[str, Counter] = {"reconcile": Counter(), "active": Counter(), "ending": Counter()}
    for event, started, ended in db.execute("SELECT name, started_at, ended_at FROM events"):
        for at, action in db.execute("SELECT at, action FROM deltas WHERE event = ?", (event,)):
            phase = "reconcile" if at == started else "active" if ended is None or at <= ended else "ending"
            phases[phase][action] += 1
    return phases


_SPECIFIC = ("message_id", "source", "folder")


def compare(expect: list[formats.Expectation], deltas: list[dict]) -> tuple[list[dict], list[dict]]:
    """Pair each expected item with one delta; the most specific items choose first."""
    remaining = list(deltas)
    missing = []
    ordered = sorted(expect, key=lambda e: -sum(getattr(e, f) is not None for f in _SPECIFIC))
    for item in ordered:
        wanted = {"action": item.action, "mailbox": normalise.address(item.mailbox) or item.mailbox}
        for name in _SPECIFIC:
            value = getattr(item, name)
            if value is not None:
                wanted[name] = normalise.display_message_id(normalise.message_id(value)) \
                    if name == "message_id" else value
        match = next((d for d in remaining if all(d.get(k) == v for k, v in wanted.items())), None)
        if match is None:
            missing.append(wanted)
        else:
            remaining.remove(match)
    return missing, remaining


def write_jsonl(deltas: list[dict], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with open(partial, "w", encoding="utf-8") as handle:
        for delta in deltas:
            handle.write(json.dumps(delta, ensure_ascii=False) + "\n")
    partial.replace(target)
