"""The `syncengine` command line. Each command's --help is its manual."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import click

from . import formats, logs, normalise, store
from .files import printable

EXIT_OK = 0
EXIT_STORE = 1
EXIT_SOME_FAILED = 3
EXIT_REFUSED = 4

DB_OPTION = click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
                         help="The store, a SQLite file (default: the config's `db`). It must exist.")
NEW_DB_OPTION = click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
                             help="The store, a SQLite file (default: the config's `db`); created if missing.")


class _Commands(click.Group):
    """Errors any command can meet (a store held by another writer past the wait, a
    full disk) end as one clear line and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except store.StoreError as exc:
            _fail(str(exc), EXIT_STORE)
        except DaemonRefused as exc:
            _fail(str(exc), exc.code)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as cat and grep do, and keep
            # Python from complaining while it flushes the closed stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_OK)
        except OSError as exc:
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_STORE)
        except sqlite3.OperationalError as exc:  # a full disk, an I/O error: the step was rolled back
            _fail(f"the store could not be written ({exc}): the write that failed was rolled back; "
                  "run the command again once there is room", EXIT_STORE)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The config every command reads (store, mailboxes, exports, endpoint). Default: "
                   "$SYNCENGINE_CONFIG, else syncengine.toml in your config folder; `syncengine config` "
                   "shows which.")
@click.version_option(package_name="syncengine")
def cli(config_file: Path | None) -> None:
    """syncengine: keep a mailbox whole through an Exchange outage.

    It indexes a user's mailbox exports, decides what Mimecast continuity must
    deliver, purge, send or defer, and tells plugin clients about each decision.
    Every command works on one SQLite store, a plain file you can browse with
    `sqlite-utils` or datasette.

    One config serves every command, as notmuch's and mbsync's do: `syncengine init`
    writes it (in your config folder unless you say where), the daemon runs from it,
    and the other commands take the store, the mailboxes and the endpoint from it.
    --db and --mailbox on a command override it, for scripts.

    \b
    Getting started:
      syncengine init --mailbox alice@acme.example --export ~/exports/alice.pst
      syncengine index              # the exports the config names
      syncengine daemon             # watch, poll, serve clients
      syncengine status
    """


def _located(given: Path | None = None):
    """The config a command reads: its own --config, the root's, $SYNCENGINE_CONFIG, the default."""
    from . import userconfig

    return userconfig.locate(given or click.get_current_context().find_root().params.get("config_file"))


def _settings(given: Path | None = None, required: bool = False):
    """The config, loaded (once per command); None when there is none and none was named."""
    located = _located(given)
    cache = click.get_current_context().find_root().meta
    if located.path not in cache.setdefault("syncengine.configs", {}):
        if not located.chosen and not located.path.exists():
            if required:
                _fail(f"no config: {located.path} does not exist. Write one with `syncengine init`, or name one "
                      "with --config FILE (or $SYNCENGINE_CONFIG)", 2)
            return None
        cache["syncengine.configs"][located.path] = _load_config(located.path)
    return cache["syncengine.configs"][located.path]


def _db(db: Path | None, config: Path | None = None) -> Path:
    """--db, else the store of the config (the command's own --config, if it has one)."""
    if db is not None:
        return db
    settings = _settings(config)
    if settings is None:
        _fail(f"which store? Give --db FILE, or write a config (`syncengine init`; looked for "
              f"{_located(config).path})", 2)
    return settings.db


def _mailboxes(given: tuple[str, ...], what: str = "--mailbox") -> list[str]:
    """The mailboxes named, else those the config names."""
    if given:
        return list(given)
    settings = _settings()
    if settings is None:
        _fail(f"which mailbox? Give {what} ADDRESS, or write a config that names it (`syncengine init`)", 2)
    return list(settings.mailboxes)


def _one_mailbox(given: str | None) -> str:
    if given:
        return given
    configured = _mailboxes(())
    if len(configured) != 1:
        _fail(f"which mailbox? The config names {len(configured)} ({', '.join(configured)}): give --mailbox", 2)
    return configured[0]


def open_store(db: Path, create: bool = True):
    try:
        return store.connect(db, create=create)
    except store.StoreError as exc:
        _fail(str(exc), EXIT_STORE)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@NEW_DB_OPTION
@click.option("--mailbox", help="The address of the mailbox these exports belong to (default: the config's, "
                                "when it names one).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line per source file, then a {\"summary\": ...} line per mailbox.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes parsing MSG/EML files and stores of 20,000 messages or more (default: one per core).")
@click.option("--no-local-mail", is_flag=True,
              help="Instead of PATHS: declare that MAILBOX has no local mail at all (a new employee, a "
                   "web-only user), so an event delivers every entry to it.")
def index(paths: tuple[Path, ...], db: Path | None, mailbox: str | None, as_json: bool, workers: int | None,
          no_local_mail: bool) -> None:
    """Index mailbox exports into the store, incrementally.

    PATHS are PST/OST files, single .msg/.eml files, or folder trees of .msg/.eml
    files whose folder names are the mailbox folders (Inbox, Sent Items, ...).

    Each PATH belongs to MAILBOX from the moment it is named, before it is read:
    an event decides nothing for MAILBOX until every export named for it has read
    once (C19), and what that first read finds is the mailbox's own mail, never
    taken for an Exchange copy. A mailbox with no export at all waits too, unless
    you declare it has none (--no-local-mail).

    Running it again re-reads only files whose size or modification time changed;
    in a changed PST/OST only the messages that changed are read (its node B-tree
    says which), and a file that has disappeared from a folder tree drops its messages.

    A file that cannot be read gets a one-line error naming it and the reason; the
    run goes on with the other files.

    \b
    Exit codes:
      0  every file was indexed completely
      1  the store could not be opened or migrated
      2  wrong usage
      3  some files failed or were read only in part; the rest were indexed

    Without PATHS it indexes every export the config names, for each of its
    mailboxes (with --mailbox, that mailbox's), and declares the mailboxes it says
    have no local mail.

    \b
    Examples:
      syncengine index                      # what the config names
      syncengine index ~/exports/alice.pst --db alice.db --mailbox alice@acme.example
      syncengine index ~/exports/alice-msg/ --db alice.db --mailbox alice@acme.example --json
    """
    if no_local_mail and paths:
        _fail("name the exports to index (PATHS), or declare --no-local-mail, not both", 2)
    db = _db(db)
    if paths or no_local_mail:
        plan = [(_address(_one_mailbox(mailbox)), list(paths), no_local_mail)]
    else:
        settings = _settings(required=True)
        chosen = [_address(mailbox)] if mailbox else list(settings.mailboxes)
        unknown = [m for m in chosen if m not in settings.mailboxes]
        if unknown:
            _fail(f"{unknown[0]}: not a mailbox of {settings.file} (it names {', '.join(settings.mailboxes)})", 2)
        plan = [(m, settings.mailboxes[m], m in settings.no_local_mail) for m in chosen]
        if not any(exports or declared for _, exports, declared in plan):
            _fail(f"{settings.file} names no exports to index", 2)
    failed = False
    for address, exports, declared in plan:
        if declared:
            _declare_no_local_mail(db, address)
        if exports:
            failed |= _index_exports(db, address, exports, as_json, workers)
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _address(text: str) -> str:
    try:
        return normalise.mailbox(text)
    except ValueError as exc:
        _fail(f"--mailbox: {exc}", 2)


def _declare_no_local_mail(db: Path, mailbox: str) -> None:
    from . import index as indexing

    if _via_daemon(db, {"command": "index", "mailbox": mailbox, "no_local_mail": [mailbox]}) is None:
        indexing.declare_no_local_mail(open_store(db), mailbox, _now())
    click.echo(f"{mailbox}: declared to have no local mail; an event delivers every entry to it")


def _index_exports(db: Path, mailbox: str, paths: list[Path], as_json: bool, workers: int | None) -> bool:
    """Index `paths` for `mailbox`, reporting each file that is not ok and a summary;
    True when some failed or were read only in part."""
    from . import index as indexing

    def on_file(report: dict) -> None:
        if as_json:
            click.echo(json.dumps(report, ensure_ascii=False))
        elif report["status"] != "ok":
            for error in report["errors"]:
                where = "" if error["where"] == report["path"] else f" ({error['where']})"
                click.echo(printable(f"{report['status']}: {report['path']}{where}: {error['reason']}"), err=True)

    forwarded = _via_daemon(db, {"command": "index", "mailbox": mailbox, "every_file": as_json,
                                 "paths": [str(p.absolute()) for p in paths]})
    if forwarded is not None:
        for report in forwarded["reports"]:
            on_file(report)
        summary = indexing.Summary(**forwarded["summary"])
    else:
        database = open_store(db)
        progress = _Progress(enabled=not as_json and sys.stderr.isatty())
        with progress:
            summary = indexing.run(database, paths, mailbox, progress=progress.advance,
                                   on_file=lambda r: on_file(r.as_json()),
                                   on_tasks=progress.start if progress.enabled else None, workers=workers)
    if as_json:
        click.echo(json.dumps(summary.as_json()))
    else:
        click.echo(f"Indexed {summary.files} files for {mailbox}: {summary.ok} ok, "
                   f"{summary.partial} partial, {summary.error} failed, {summary.unchanged} unchanged, "
                   f"{summary.removed} removed; {summary.messages} messages in {summary.seconds:.2f}s.")
    return bool(summary.partial or summary.error)


@cli.command()
@click.argument("export", type=click.Path(path_type=Path))
@DB_OPTION
def forget(export: Path, db: Path | None) -> None:
    """Drop an export that is gone for good, with everything indexed from it.

    An export that disappears (a PST deleted, a folder unmounted) keeps its mailbox
    waiting-for-index (C19): the engine will not decide for a mailbox whose index it
    knows is missing a part. When the export will not come back, forget it.
    """
    from . import index as indexing
    db = _db(db)
    database = open_store(db, create=False)
    try:
        dropped = indexing.forget(database, export)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"forgot {export}: {dropped} source file(s) and their messages dropped")


@cli.command("export-pst")
@DB_OPTION
@click.option("--event", required=True, help="The event whose deliveries to export (its name).")
@click.option("--mailbox", help="The mailbox to export; needed only when the event delivered to several.")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def export_pst(db: Path | None, event: str, mailbox: str | None, out: Path) -> None:
    """Write the messages continuity delivered in EVENT as a PST file, OUT.

    Outlook imports it (File > Open & Export > Import/Export > "Import from another
    program or file"), as do readpst and pffexport. Each message is the copy Mimecast
    held: its original headers, body and attachments, in the folder it was delivered to,
    tagged `X-Syncengine-Delivery: <event>/<seq>` so an index of the imported mailbox
    knows it for continuity's own. A delivery whose stored copy is gone is still
    exported from the delta's subject and Message-ID, and listed as a warning.

    \b
        syncengine export-pst --db store.db --event outage-1 recovered.pst
        syncengine export-pst --db store.db --event outage-1 --mailbox bob@acme.example bob.pst

    The file appears only when complete; exit 3 if any delivery was exported from its
    delta alone, 4 if the event or mailbox is not in the store.
    """
    from .pst import export

    db = _db(db)
    database = open_store(db, create=False)
    if out.exists() and not out.is_file():
        _fail(f"{out} exists and is not a file")
    show = sys.stderr.isatty()
    try:
        with _Progress(show) as bar:
            summary = export.export_event(database.conn, event, out, mailbox,
                                          progress=bar.step if show else None)
    except export.ExportError as exc:
        _fail(str(exc))
    for where, reason in summary.problems:
        click.echo(printable(f"warning: {where}: {reason}"), err=True)
    click.echo(printable(f"wrote {summary.messages} message(s) delivered to {summary.mailbox or '(none)'} "
                         f"in {event} to {out}"))
    sys.exit(EXIT_SOME_FAILED if summary.problems else EXIT_OK)


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            self._bar.__enter__()
        return self

    def start(self, tasks) -> None:
        from . import index as indexing
        if self._bar is not None:
            self._task = self._bar.add_task("indexing", total=indexing.count_messages(tasks))

    def step(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("exporting", total=total)
            self._bar.update(self._task, completed=done)

    def advance(self, count: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, count)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _now() -> float:
    from . import engine
    return engine.wall_clock()


def _fail(message: str, code: int = EXIT_REFUSED):
    click.echo(printable(f"error: {message}"), err=True)
    sys.exit(code)


@cli.command()
@click.argument("scenario", type=click.Path(file_okay=False, path_type=Path))
@click.option("--deltas", "deltas_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the delta log here as JSON Lines (written whatever the outcome).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="Use (or resume) this store; default: a fresh temporary one.")
@click.option("--quiet", "-q", is_flag=True, help="Only the table and the comparison, not the timeline.")
def replay(scenario: Path, deltas_file: Path | None, db: Path | None, quiet: bool) -> None:
    """Run a scenario folder on a virtual clock and show what happened.

    SCENARIO is a folder with scenario.json (formats.md, "Replay scenario"). Exports
    and the directory are loaded before the first timeline entry; polls run every
    poll_interval from each event's start until `until`.

    When the scenario has `expect`, the delta log is compared with it and every
    missing and unexpected delta is listed.

    \b
    Exit codes:
      0  the replay ran (and matched `expect`, when there is one)
      1  the delta log differs from `expect`
      2  wrong usage, or the scenario itself is invalid

    \b
    Example:
      syncengine replay fixtures/scenarios/c13-outbox --deltas out.jsonl
    """
    _run_replay(scenario, deltas_file, db, quiet, pace=0.0)


def _run_replay(scenario: Path, deltas_file: Path | None, db: Path | None, quiet: bool, pace: float) -> None:
    from . import engine
    from . import replay as replaying

    def say(text: str) -> None:
        text = printable(text)
        if text.startswith(("error:", "warning:", "partial:")):
            click.echo(text, err=True)
        elif not quiet:
            click.echo(text)
            if pace:
                time.sleep(pace)  # the demo unfolds at a pace a person can follow

    temporary = None
    if db is None:
        temporary = tempfile.TemporaryDirectory(prefix="syncengine-replay-")
        db = Path(temporary.name) / "replay.db"
    outcome = None
    try:
        outcome = replaying.replay(scenario, db, say)
    except formats.FormatError as exc:
        _fail(str(exc), 2)
    except store.StoreError as exc:
        _fail(str(exc), EXIT_STORE)
    finally:
        if deltas_file is not None:
            try:
                database = store.connect(db)
                replaying.write_jsonl(engine.deltas(database), deltas_file)
                database.conn.close()
            except store.StoreError:
                replaying.write_jsonl([], deltas_file)
        if temporary is not None and outcome is not None:
            temporary.cleanup()
    _print_phases(outcome)
    for item in outcome.missing:
        click.echo(f"missing:    {_expectation(item)}")
    for delta in outcome.unexpected:
        click.echo(f"unexpected: {_expectation(delta)}")
    if outcome.failed:
        click.echo(f"{len(outcome.missing)} missing, {len(outcome.unexpected)} unexpected: the log differs from expect")
        sys.exit(1)


def _print_phases(outcome) -> None:
    actions = ("deliver", "purge", "send", "defer")
    click.echo("")
    click.echo(f"{'phase':<10}" + "".join(f"{a:>9}" for a in actions))
    for phase, counts in outcome.phases.items():
        click.echo(f"{phase:<10}" + "".join(f"{counts.get(a, 0):>9}" for a in actions))
    click.echo(f"{len(outcome.deltas)} deltas" + (f", {outcome.restarts} restart(s)" if outcome.restarts else ""))
    for item in outcome.events:
        when = f"closed {item['closed']}" if item["closed"] else item["phase"]
        click.echo(f"event {item['event']} ({when}):")
        for mailbox, counts in item["report"].items():
            click.echo(f"  {mailbox}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for kept in item["kept"]:
            click.echo(printable(f"  not purged: {kept['message_id'] or kept['subject']} in {kept['folder']} "
                                 f"({kept['mailbox']}): {kept['reason']}"))


def _expectation(item: dict) -> str:
    keys = ("action", "mailbox", "message_id", "source", "folder", "reason")
    return " ".join(f"{k}={item[k]}" for k in keys if item.get(k) is not None)


@cli.command()
@click.option("--pace", type=float, default=0.15, show_default=True,
              help="Seconds to pause after each line, so the outage unfolds at reading speed (0: none).")
def demo(pace: float) -> None:
    """Replay the bundled outage scenario and show each decision as it happens.

    Alice's mailbox is reconciled when the event starts, mail that Mimecast receives
    is delivered at the next minute's poll, her Outbox goes out through Mimecast,
    and Exchange's own copies are purged during the event and in the ten minutes
    after it.
    """
    from importlib import resources
    with resources.as_file(resources.files("syncengine.demo")) as folder:
        _run_replay(Path(folder), None, None, quiet=False, pace=pace)


@cli.group()
def snapshot() -> None:
    """Mimecast snapshots."""


@snapshot.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@NEW_DB_OPTION
def snapshot_add(path: Path, db: Path | None) -> None:
    """Make a snapshot (a folder of pages, or one .json page) visible now.

    Each page is validated; a page with errors, a non-empty fail[] or a status other
    than 200 is rejected whole and the others still apply. Entry content is copied
    into the store so clients can read it after the snapshot folder is gone.
    """
    from . import engine
    db = _db(db)
    forwarded = _via_daemon(db, {"command": "snapshot_add", "path": str(path.absolute())})
    if forwarded is not None:
        result = engine.SnapshotResult(**forwarded)
    else:
        try:
            result = engine.add_snapshot(open_store(db), path, _now())
        except formats.FormatError as exc:
            _fail(str(exc))
    for _, reason in result.rejected:
        click.echo(f"error: rejected page: {reason}", err=True)
    for file, reason in result.warnings:
        click.echo(f"warning: {file}: {reason}", err=True)
    click.echo(f"{path}: {result.entries} entries from {result.pages - len(result.rejected)} of "
               f"{result.pages} page(s)")
    sys.exit(EXIT_SOME_FAILED if result.rejected else EXIT_OK)


@cli.group()
def directory() -> None:
    """Directory syncs (users, aliases, groups, delegates)."""


@directory.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@NEW_DB_OPTION
def directory_add(path: Path, db: Path | None) -> None:
    """Record a successful directory sync; from now on it is the one in force (C16)."""
    from . import engine
    db = _db(db)
    counts = _via_daemon(db, {"command": "directory_add", "path": str(path.absolute())})
    if counts is None:
        try:
            parsed = engine.add_directory(open_store(db), path, _now())
        except formats.FormatError as exc:
            _fail(str(exc))
        counts = {"users": len(parsed.users), "groups": len(parsed.groups), "delegates": len(parsed.delegates)}
    click.echo(f"{path}: {counts['users']} users, {counts['groups']} groups, {counts['delegates']} delegations")


@cli.group()
def event() -> None:
    """Continuity events: start (reconcile), end (post-event window)."""


@event.command("start")
@click.argument("name")
@click.option("--mailbox", "mailboxes", multiple=True,
              help="A covered mailbox (repeatable; default: every mailbox of the config).")
@click.option("--expand-distribution-lists", is_flag=True, help="Deliver list mail to members (C16).")
@click.option("--no-local-mail", "no_local_mail", multiple=True, metavar="ADDRESS",
              help="A covered mailbox that has no local mail at all (a new employee, a web-only user): "
                   "every entry is new to it (repeatable).")
@NEW_DB_OPTION
def event_start(name: str, mailboxes: tuple[str, ...], expand_distribution_lists: bool,
                no_local_mail: tuple[str, ...], db: Path | None) -> None:
    """Start event NAME now and reconcile its mailboxes (C3).

    Every entry visible so far is matched against the index; what is not in the
    mailbox is delivered. A mailbox already in an open event is refused.

    A mailbox whose exports have not all read once, or that has none, waits for its
    index (C19): nothing is decided for it until they have read, then it is
    reconciled. `syncengine status` names what it waits for.
    """
    from . import engine
    db = _db(db)
    mailboxes = tuple(_mailboxes(mailboxes))
    settings = _settings()
    if settings is not None:  # what the config declares holds for a command as for the daemon (C19)
        no_local_mail += tuple(m for m in mailboxes if m in settings.no_local_mail)
    forwarded = _via_daemon(db, {"command": "event_start", "event": name, "mailboxes": list(mailboxes),
                                 "expand_distribution_lists": expand_distribution_lists,
                                 "no_local_mail": list(no_local_mail)})
    if forwarded is not None:
        click.echo(f"event {name} started: reconcile wrote {forwarded['deltas']} deltas")
        for item in forwarded.get("waiting", []):  # as the daemon's reconcile found it
            click.echo(printable(f"warning: {_waiting_line(item)}"), err=True)
        return
    database = open_store(db)
    try:
        written = engine.start_event(database, name, list(mailboxes), expand_distribution_lists, _now(),
                                     list(no_local_mail))
    except engine.EngineError as exc:
        _fail(str(exc))
    click.echo(f"event {name} started: reconcile wrote {len(written)} deltas")
    _warn_waiting(database, name)


@event.command("end")
@click.argument("name")
@DB_OPTION
def event_end(name: str, db: Path | None) -> None:
    """End event NAME now; duplicates are watched for during the post-event window (C14)."""
    from . import engine
    db = _db(db)
    if _via_daemon(db, {"command": "event_end", "event": name}) is None:
        try:
            engine.end_event(open_store(db, create=False), name, _now())
        except engine.EngineError as exc:
            _fail(str(exc))
    click.echo(f"event {name} ending")


@cli.command()
@NEW_DB_OPTION
def sync(db: Path | None) -> None:
    """One poll now, of every open event: what the daemon does each minute (C8)."""
    from . import engine
    db = _db(db)
    forwarded = _via_daemon(db, {"command": "sync"})
    if forwarded is not None:
        click.echo(f"{forwarded['deltas']} deltas")
        return
    database = open_store(db)
    written = engine.poll(database, _now())
    click.echo(f"{len(written)} deltas")
    _warn_waiting(database)


def _warn_waiting(database, event: str | None = None) -> None:
    from . import engine
    for item in engine.waiting(database.conn):
        if event is None or item["event"] == event:
            click.echo(printable(f"warning: {_waiting_line(item)}"), err=True)


def _waiting_line(item: dict) -> str:
    if item["export"] is None:
        return f"{item['mailbox']} is waiting for its index: {item['why']}"
    return (f"{item['mailbox']} is waiting for its index ({item['export']}: {item['why']}); nothing is decided "
            "for it until `syncengine index` (or the daemon) has read it (C19). If that path is wrong or gone "
            f"for good: syncengine forget {item['export']}")


@cli.command()
@DB_OPTION
@click.option("--since", type=click.IntRange(0), default=0, help="Only deltas with a greater seq.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (formats.md, \"Delta log\").")
def deltas(db: Path | None, since: int, as_json: bool) -> None:
    """The delta log, in seq order."""
    from . import engine
    db = _db(db)
    database = open_store(db, create=False)
    for delta in engine.deltas(database, since):
        if as_json:
            click.echo(json.dumps(delta, ensure_ascii=False))
        else:
            what = printable(delta["message_id"] or delta["subject"] or "")
            click.echo(f"{delta['seq']:>6} {delta['at']} {delta['action']:<7} {printable(delta['mailbox'])} {what} "
                       f"[{printable(delta['source'])}] {delta['reason']}")


CONFIG_OPTION = click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                             help="The config (as `syncengine --config FILE`); its `db` is the store.")


def _load_config(config: Path):
    from .daemon import config as config_mod
    try:
        return config_mod.load(config)
    except (config_mod.ConfigError, formats.FormatError) as exc:
        _fail(str(exc), 2)


@cli.command()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="The store.")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def status(db: Path | None, config: Path | None, as_json: bool) -> None:
    """Events, their phase and counts, mailboxes waiting for their index, stale exports,
    the last errors, and whether a daemon runs on the store (--db, else the config's)."""
    from . import engine
    settings = _settings(config, required=True) if db is None or config is not None else None
    db = db or settings.db
    database = open_store(db, create=False)
    info = engine.status(database)
    info["daemon"] = _daemon_holder(db)
    info["indexing"] = _indexing(db) if info["daemon"] else None
    info["missing_exports"] = [{"mailbox": address, "export": str(path)} for address, exports in
                               (settings.mailboxes.items() if settings else ()) for path in exports
                               if not path.exists()]
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    if not info["events"]:
        click.echo("no events")
    for item in info["events"]:
        click.echo(f"{item['event']}: {item['phase']} ({', '.join(item['mailboxes'])}), started {item['started']}"
                   + (f", ended {item['ended']}" if item["ended"] else ""))
        for mailbox, counts in item["report"].items():
            click.echo(f"  {mailbox}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for kept in item["kept"]:
            click.echo(printable(f"  not purged: {kept['message_id'] or kept['subject']} in {kept['folder']} "
                                 f"({kept['mailbox']}): {kept['reason']}"))
    if info["indexing"]:
        click.echo(printable(f"indexing {info['indexing']['mailbox']}: {info['indexing']['read']} message(s) read "
                             f"since {info['indexing']['since']}"))
    for item in info["missing_exports"]:
        click.echo(printable(f"missing export: {item['export']} ({item['mailbox']}), named in the config but not "
                             "there"))
    for item in info["waiting"]:
        click.echo(printable(f"waiting for index: {item['mailbox']} in {item['event']}: "
                             + (f"{item['export']}: {item['why']}" if item["export"] else item["why"])))
    for item in info["stale"]:
        click.echo(printable(f"stale: {item['file']} ({item['mailbox']}): {item['stale']}"))
    for item in info["clients"]:
        behind = (item["latest"] or 0) - item["acked"]
        click.echo(printable(f"client {item['client']} ({item['mailbox']}): acknowledged {item['acked']} of "
                             f"{item['latest'] or 0}" + (f", {behind} not applied yet" if behind else "")))
    for item in info["mimecast"]:
        if item["failures"]:
            click.echo(printable(f"mimecast {item['address']}: {item['failures']} failed pass(es) in a row, last at "
                                 f"{item['error_at']}: {item['last_error']}; last success "
                                 f"{item['last_success'] or 'never'}"))
        else:
            click.echo(printable(f"mimecast {item['address']}: polled at {item['last_success']}"))
    click.echo(f"{info['deltas']} deltas in the log")
    click.echo(f"daemon: {info['daemon'] or 'not running'}")
    for error in info["last_errors"]:
        click.echo(printable(f"error: {error['file']}: {error['reason']}"))


ADMIN_ANSWER_SECONDS = 10.0  # the daemon says "working" at once; silence this long is an error


def _via_daemon(db: Path, request: dict, idempotent: bool = False) -> dict | None:
    """While a daemon holds the store it is the one writer: send it the command over the
    store's own ipc socket and return its result (None: do it here; no daemon, or one
    that serves no local channel, which SQLite then serialises with). It never hangs:
    the daemon answers "working" at once, or the command fails naming the socket. An
    `idempotent` command (applying a poller's folder: once, whoever does it) is done here
    instead when the daemon does not answer or stops before it has."""
    holder = _daemon_holder(db)
    if holder is None:
        return None
    import zmq

    from . import endpoints as endpoints_mod
    where = endpoints_mod.for_store(db)
    if not os.path.exists(where.router[len("ipc://"):]):
        click.echo(f"note: the daemon ({holder}) serves no local channel; writing to the store directly", err=True)
        return None
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(where.router)
        dealer.send(json.dumps({"op": "admin", **request}).encode())
        if not dealer.poll(int(ADMIN_ANSWER_SECONDS * 1000)):
            if idempotent:
                return None
            _fail(f"the daemon ({holder}) did not answer on {where.router} within {ADMIN_ANSWER_SECONDS:g} s",
                  EXIT_STORE)
        reply = json.loads(dealer.recv())
        while reply.get("op") == "working":  # as long as it takes (an index of a large store), while it lives
            if dealer.poll(1000):
                reply = json.loads(dealer.recv())
            elif _daemon_holder(db) is None:
                if idempotent:
                    return None
                _fail(f"the daemon ({holder}) stopped before it answered", EXIT_STORE)
    finally:
        dealer.close()
        context.term()
    if reply.get("op") == "error":
        raise DaemonRefused(reply.get("reason", "refused by the daemon"),
                            EXIT_STORE if reply.get("store") else EXIT_REFUSED)
    return reply["result"]


class DaemonRefused(Exception):
    """The daemon answered a forwarded command with an error: one line and `code` for a
    command, a failed pass for the long-running poller (which must not end on it)."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.code = code


def _indexing(db: Path) -> dict | None:
    """How far the daemon's running index has got (it writes this beside the store)."""
    try:
        return json.loads((Path(f"{db}.d") / "indexing.json").read_bytes())
    except (OSError, ValueError):
        return None


def _daemon_holder(db: Path) -> str | None:
    """'pid N' of the daemon holding the store, or None."""
    from . import locks
    return locks.holder(Path(f"{db}.d") / "daemon.lock")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def config_command(as_json: bool) -> None:
    """Show the config every command reads: which file and why, each value with its
    paths resolved and whether the file set it or it is the default, and whether each
    export exists.

    The file is the one --config names, else $SYNCENGINE_CONFIG, else syncengine.toml
    in your config folder; --db and --mailbox on a command override what it says.
    """
    import tomllib

    from . import endpoints as endpoints_mod

    located = _located()
    if not located.path.exists():
        _fail(f"no config: {located.path} ({located.source}) does not exist; write one with `syncengine init`",
              EXIT_STORE)
    settings = _settings(required=True)
    given = tomllib.loads(located.path.read_text(encoding="utf-8"))
    values = {key: {"value": str(getattr(settings, key)) if isinstance(getattr(settings, key), Path)
                    else getattr(settings, key), "from": "file" if key in given else "default"}
              for key in ("db", "snapshot_folder", "directory_file", "poll_interval", "post_event_window",
                          "calendar_items", "rescan_interval")}
    served = endpoints_mod.for_store(settings.db, settings.endpoint)
    values["notify.endpoint"] = {"value": served.router,
                                 "from": "file" if "endpoint" in given.get("notify", {}) else "default"}
    if settings.keys is not None:
        values["notify.keys"] = {"value": str(settings.keys), "from": "file"}
    mailboxes = {address: {"no_local_mail": address in settings.no_local_mail,
                           "exports": [{"path": str(p), "exists": p.exists()} for p in exports]}
                 for address, exports in settings.mailboxes.items()}
    report = {"file": str(located.path.absolute()), "from": located.source, "values": values,
              "mailboxes": mailboxes, "events": [e.name for e in settings.events],
              "mimecast": settings.mimecast is not None}
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(printable(f"config {report['file']} (from {located.source})"))
    for key, item in values.items():
        shown = item["value"] if isinstance(item["value"], str) else json.dumps(item["value"])
        click.echo(printable(f"  {key} = {shown}  ({item['from']})"))
    for address, box in mailboxes.items():
        click.echo(printable(f"  mailbox {address}" + (": no local mail" if box["no_local_mail"] else "")))
        for export in box["exports"]:
            click.echo(printable(f"    export {export['path']}" + ("" if export["exists"] else "  (missing)")))
    for name in report["events"]:
        click.echo(printable(f"  event {name} (scheduled)"))
    click.echo(f"  mimecast: {'polled by the daemon' if report['mimecast'] else 'not configured'}")


@cli.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write the config (default: as for every command; see `syncengine config`).")
@click.option("--mailbox", "address", help="The mailbox's address (default: $USER@localhost, to edit).")
@click.option("--export", "exports", multiple=True, type=click.Path(path_type=Path),
              help="An export of the mailbox (repeatable), relative to the current folder as you type it.")
def init(config: Path | None, address: str | None, exports: tuple[Path, ...]) -> None:
    """Write a commented starter config, then exit.

    It names the store, the snapshot drop folder, the directory file, one mailbox and its
    exports, and the notification endpoint. Paths in it are relative to the config's
    own folder (an export elsewhere is written absolute), so every command and the
    daemon find the same files from any folder. An existing file is never overwritten.

    \b
    Examples:
      syncengine init --mailbox alice@acme.example --export ~/exports/alice.pst
      syncengine init --config ~/work/continuity.toml --export exports/alice.ost
    """
    from . import userconfig
    from .daemon import config as config_mod

    located = _located(config)
    path = located.path
    if path.exists():
        _fail(f"{path}: already exists; not overwritten (see it with `syncengine config`)", 2)
    address = address or f"{os.environ.get('USER', 'me')}@localhost"
    placed = [userconfig.place(e, path) for e in exports]
    path.parent.mkdir(parents=True, exist_ok=True)
    named = f" --config {path}" if located.source == "--config" else ""
    data = path.parent
    if located.source == "default":  # the store and drop folder are data, not config (XDG)
        import platformdirs
        data = platformdirs.user_data_path("syncengine")
    path.write_text(config_mod.starter(address, placed or ["mail"], named,
                                       "" if data == path.parent else str(data)), encoding="utf-8")
    (data / "snapshots").mkdir(parents=True, exist_ok=True)
    for typed, written in zip(exports, placed):
        if not typed.expanduser().exists():
            click.echo(f"note: {typed} does not exist (yet); the config names it as {written}", err=True)
    click.echo(f"wrote {path}: edit the mailbox and its exports if need be, then:\n"
               f"  syncengine{named} index     # read the exports once\n"
               f"  syncengine{named} daemon    # keep everything current")


@cli.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The config (TOML; `syncengine init` writes one). Default: as for every command.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per action; json for machines.")
@click.option("--verbose", "-v", is_flag=True, help="Also log each client connection and refusal.")
def daemon(config: Path | None, log_format: str, verbose: bool) -> None:
    """Run the workstation daemon in the foreground until SIGTERM or Ctrl-C.

    It watches every mailbox export and the snapshot drop folder, keeps the index
    current (a changed file is read once it has been quiet for a second; a store
    Outlook holds open keeps its last good index and is retried), applies each dropped
    snapshot once, re-reads the directory file when it changes, polls each running
    event on its schedule, starts and ends the config's [[event]]s, and serves plugin
    clients on the store's sockets (`syncengine listen --db STORE` finds them).
    Logs go to stderr. docs/daemon.md has a systemd unit and the Windows notes.

    \b
    Exit codes:
      0  stopped by SIGTERM or Ctrl-C, everything committed
      1  the store, its sockets or its lock could not be had (another daemon runs)
      2  the config is invalid (the message names the key and the reason)
    """
    import signal

    from .daemon import run as run_mod

    from .daemon import config as config_mod

    settings = _settings(config, required=True)
    try:
        config_mod.check_trust(settings)
    except config_mod.ConfigError as exc:
        _fail(str(exc), 2)
    logs.configure(log_format)
    logging.getLogger("syncengine.notify").setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        running = run_mod.Daemon(settings)
    except (run_mod.DaemonError, store.StoreError) as exc:
        _fail(str(exc), EXIT_STORE)
    except Exception as exc:  # endpoints and keys: say what, not how
        _fail(f"cannot start: {exc}", EXIT_STORE)
    signal.signal(signal.SIGTERM, lambda *_: (running.stop.set(), running.changes.kick.set()))
    signal.signal(signal.SIGINT, lambda *_: (running.stop.set(), running.changes.kick.set()))
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack on stderr, for a report
        import faulthandler
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    running.run()


@cli.group()
def mimecast() -> None:
    """Fetch snapshots and directory syncs from Mimecast's API."""


def _mimecast(config: Path | None):
    from .mimecast import api as api_mod
    from .mimecast import config as config_mod
    try:
        settings = config_mod.load(_located(config).path)
    except config_mod.ConfigError as exc:
        _fail(str(exc), 2)
    return settings, api_mod.Api(settings)


@mimecast.command("poll")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A TOML file with a [mimecast] table (default: the config every command reads).")
@NEW_DB_OPTION
@click.option("--once", is_flag=True, help="One pass, then exit.")
def mimecast_poll(config: Path | None, db: Path | None, once: bool) -> None:
    """Fetch what Mimecast archived for each mailbox since the last pass.

    Each pass lists each mailbox's messages by receipt time (the first pass looks back
    lookback_hours; later ones from shortly before the last, and on slower schedules
    wider, so that mail the archive lists late is still found: C8a), fetches detail and
    raw message for each one not fetched before, writes them as one snapshot folder per
    mailbox into snapshot_folder (built under a dot-name and renamed, so a watcher never
    sees half of one), and applies it to the store, as `snapshot add` does. While an
    event that expands distribution lists covers a mailbox, its lists' mail is fetched
    too (kind: group). Without --once it passes every interval_s until SIGTERM or
    Ctrl-C; a failed pass is retried after a backoff (doubling, at most an hour).

    While a daemon holds the store, the daemon applies what this fetches (one writer).
    One poller per store: a second one, or a daemon polling Mimecast itself, is refused.

    \b
    Exit codes (--once):
      0  the pass fetched everything it listed
      1  the credentials were refused (401, 403, 418), or the pass failed
      2  the config is invalid
      3  some messages came without content (they are fetched again on later passes),
         or some addresses failed; the rest was applied
    """
    import signal
    import threading

    from . import engine
    from . import locks
    from .mimecast import poller

    db = _db(db, config)
    logs.configure(level=logging.INFO, stamped=False)
    settings, api = _mimecast(config)
    database = open_store(db)
    try:
        lock = locks.hold(Path(f"{db}.d") / "mimecast.lock")
    except locks.Held as held:
        _fail(f"another Mimecast poller runs on this store ({held}): a `mimecast poll`, or a daemon whose "
              "config has [mimecast]", EXIT_STORE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def apply(folder: Path) -> None:  # once, whoever applies it: here when the daemon cannot
        if _via_daemon(db, {"command": "mimecast_apply", "paths": [str(folder)]}, idempotent=True) is None:
            poller.apply_folder(database, folder, engine.wall_clock())

    def record(outcomes: dict, now: float) -> None:
        try:
            if _via_daemon(db, {"command": "mimecast_apply", "outcomes": outcomes}, idempotent=True) is None:
                with store.transaction(database.conn) as conn:
                    poller.record_health(conn, outcomes, now)
        except (DaemonRefused, sqlite3.OperationalError) as exc:  # health is a courtesy: the passes go on
            if once:
                raise
            click.echo(printable(f"warning: the pass's outcome was not recorded: {exc}"), err=True)
        if not once:
            click.echo(f"pass: {sum(1 for e in outcomes.values() if e is None)} of {len(outcomes)} address(es) "
                       f"polled, {api.requests} request(s) so far")

    try:
        passes = poller.supervise(api, settings, database, stop, apply, record, once=once)
    except Exception as exc:  # --once: the pass failed as a whole
        _fail(printable(str(exc)), EXIT_STORE)
    finally:
        lock.close()
    if once:
        missing = sum(len(p.without_content) for p in passes)
        failed = [p for p in passes if p.error]
        click.echo(f"pass: {sum(len(p.ids) for p in passes)} new message(s) for {len(passes)} address(es), "
                   f"{api.requests} request(s)" + (f", {missing} without content" if missing else "")
                   + (f", {len(failed)} failed" if failed else ""))
        sys.exit(EXIT_SOME_FAILED if missing or failed else EXIT_OK)


@mimecast.command("directory")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A TOML file with a [mimecast] table (default: the config every command reads).")
@NEW_DB_OPTION
def mimecast_directory(config: Path | None, db: Path | None) -> None:
    """Fetch the configured groups' members (nested groups followed) into directory_file,
    written atomically in the directory format, and apply it as a directory sync."""
    from . import engine
    from .mimecast import api as api_mod
    from .mimecast import poller

    db = _db(db, config)
    settings, api = _mimecast(config)
    now = engine.wall_clock()
    try:
        data = poller.directory(api, settings, now)
    except api_mod.ApiError as exc:
        _fail(str(exc), EXIT_STORE)
    poller.write_directory(data, settings.directory_file)
    applied = engine.add_directory_if_new(open_store(db), settings.directory_file, now)
    click.echo(f"{settings.directory_file}: {len(data['groups'])} group(s)" + ("" if applied else " (unchanged)"))


ENDPOINT_OPTION = click.option(
    "--endpoint", help="ROUTER endpoint (the PUB is beside it: ipc PATH.pub, or tcp PORT+1). "
                       "Default: the config's [notify] endpoint, else ipc sockets in the store's folder. "
                       "tcp:// needs CURVE keys.")


def _served(db: Path | None, endpoint: str | None, keys: Path | None) -> tuple[Path | None, str | None, Path | None]:
    """(store, endpoint, keys folder) as given; with neither --db nor --endpoint, the
    config's, whose endpoint and keys go with its store."""
    if db is None and endpoint is None:
        settings = _settings()
        if settings is not None:
            return settings.db, settings.endpoint, keys or settings.keys
    return (_db(db) if endpoint is None else db), endpoint, keys


def _serving(db: Path | None) -> str:
    """What a client waits for, as its "nothing answers" notice names it."""
    return (f"no daemon serves the store {db} (start `syncengine daemon`, or `syncengine serve --db {db}`)"
            if db is not None else "no engine answers there")


def _existing_store(db: Path) -> None:
    """A client follows a store's server; a mistyped store would wait forever for none."""
    if not db.exists():
        _fail(f"{db}: no such store (check --db, or the config's `db`: `syncengine config`)", EXIT_STORE)


@cli.command()
@DB_OPTION
@ENDPOINT_OPTION
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path),
              help="CURVE keys: DIR/server.key_secret and the allow-list DIR/clients/*.key.")
@click.option("--verbose", "-v", is_flag=True, help="Log each refusal and reconnect.")
def serve(db: Path | None, endpoint: str | None, keys: Path | None, verbose: bool) -> None:
    """Publish the store's deltas to plugin clients until interrupted.

    Clients subscribe to `delta.<mailbox>` on the PUB socket and catch up over the
    ROUTER (docs/protocol.md). Deltas committed by any process using this store are
    published within 50 ms; heartbeats go out every second. One server per store.

    \b
    Examples:
      syncengine serve --db alice.db
      syncengine serve --db alice.db --endpoint tcp://0.0.0.0:5560 --keys keys/
    """
    import signal

    from . import endpoints as endpoints_mod
    from . import notify

    db, endpoint, keys = _served(db, endpoint, keys)
    _existing_store(db)
    logs.configure(level=logging.INFO if verbose else logging.WARNING, stamped=False)
    try:
        server = notify.Server(db, endpoint, notify.Curve(keys) if keys else None)
    except (notify.ServeError, endpoints_mod.EndpointError, store.StoreError) as exc:
        _fail(str(exc), EXIT_STORE)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    click.echo(f"serving {db}: ROUTER {server.endpoints.router}, PUB {server.endpoints.pub}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@cli.command()
@DB_OPTION
@click.option("--mailbox", "mailboxes", multiple=True,
              help="A mailbox to follow (repeatable; default: every mailbox of the config).")
@click.option("--client", "client_id", help="Client id, `ADDRESS[/INSTANCE]` (default: the first mailbox).")
@click.option("--since", type=click.IntRange(0), help="Start after this mailbox_seq (default: the last ack).")
@click.option("--ack", is_flag=True, help="Acknowledge each delta once printed.")
@ENDPOINT_OPTION
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="This client's CURVE secret key file (for tcp; default: the config's keys folder's "
                   "clients/MAILBOX.key_secret).")
@click.option("--server-key", type=click.Path(dir_okay=False, path_type=Path),
              help="The server's CURVE public key file (for tcp; default: the config's keys folder's server.key).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--verbose", "-v", is_flag=True, help="Log gaps and reconnects on stderr.")
def listen(db: Path | None, mailboxes: tuple[str, ...], client_id: str | None, since: int | None, ack: bool,
           endpoint: str | None, key_file: Path | None, server_key: Path | None, as_json: bool,
           verbose: bool) -> None:
    """Print each delta of MAILBOX as it arrives, catching up first; until interrupted.

    A reference client: it never misses a delta (gaps and a silent engine make it
    catch up again) and never prints one twice. When no engine answers (no daemon
    serves the store), it says so within seconds, naming the store and the socket,
    and keeps trying.
    """
    from . import client as client_mod
    from . import endpoints as endpoints_mod

    db, endpoint, keys = _served(db, endpoint, None)
    mailboxes = tuple(_mailboxes(mailboxes))
    if db is not None:
        _existing_store(db)
    logs.configure(level=logging.INFO if verbose else logging.WARNING, stamped=False)
    if keys is not None and not (key_file or server_key):
        key_file, server_key = keys / "clients" / f"{mailboxes[0]}.key_secret", keys / "server.key"
    try:
        where = endpoints_mod.for_store(db, endpoint)
        curve = None
        if key_file or server_key:
            if not (key_file and server_key):
                _fail("CURVE needs both --key and --server-key", 2)
            public, secret = endpoints_mod.load_secret(key_file)
            curve = (endpoints_mod.load_public(server_key), public, secret)
        elif where.is_tcp:
            _fail("tcp endpoints need CURVE keys (--key and --server-key)", 2)
    except (endpoints_mod.EndpointError, OSError, ValueError) as exc:
        _fail(str(exc), 2)
    start = {m: since for m in mailboxes} if since is not None else None
    listener = client_mod.Client(where, client_id or mailboxes[0], list(mailboxes), since=start, curve=curve,
                                 serving=_serving(db))
    try:
        for delta in listener.deltas():
            if as_json:
                click.echo(json.dumps(delta, ensure_ascii=False))
            else:
                click.echo(f"{printable(delta['mailbox'])} #{delta['mailbox_seq']} {delta['action']} "
                           f"{printable(delta['message_id'] or delta['subject'] or '')} ({delta['reason']})")
            sys.stdout.flush()
            if ack:
                listener.ack(delta["mailbox"], delta["mailbox_seq"])
    except client_mod.ClientError as exc:
        _fail(f"refused by the server: {exc}")
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


@cli.command("apply")
@click.option("--mailbox", help="The mailbox whose deltas are applied (default: the config's, when it names one).")
@click.option("--mailbox-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The mailbox as a folder tree (also configured as its export, so the index reads it back).")
@click.option("--layout", type=click.Choice(["eml", "maildir"]), default="eml", show_default=True,
              help="eml: a folder per mailbox folder (what `index` reads); maildir: Maildir++.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="Follow this store's notification server, as `listen --db` does (default: the config's store "
                   "and [notify] endpoint).")
@ENDPOINT_OPTION
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              help="For tcp: the folder `keys generate` made (clients/ADDRESS.key_secret and server.key; "
                   "default: the config's keys).")
@click.option("--smtp", help="HOST:PORT of the relay that sends Outbox items (send deltas).")
@click.option("--starttls", is_flag=True, help="Upgrade the SMTP connection with STARTTLS.")
@click.option("--ssl", "use_ssl", is_flag=True, help="SMTP over TLS from the start (port 465).")
@click.option("--smtp-user", help="SMTP login.")
@click.option("--smtp-password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The SMTP password, in an owner-only file.")
@click.option("--smtp-ca-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The CA certificate(s) of a private relay, for --starttls or --ssl (PEM).")
@click.option("--once", is_flag=True, help="Apply what is pending, then exit (after 2 s with nothing new).")
@click.option("--status", "show_status", is_flag=True,
              help="List what was not sent to every recipient (partial, failed, still trying), with the relay's "
                   "answers, from the folder's journal; then exit.")
@click.option("--verbose", "-v", is_flag=True, help="Log each delta as it is applied.")
def apply_command(mailbox: str | None, mailbox_dir: Path, layout: str, db: Path | None, endpoint: str | None,
                  keys_dir: Path | None, smtp: str | None, starttls: bool, use_ssl: bool, smtp_user: str | None,
                  smtp_password_file: Path | None, smtp_ca_file: Path | None, once: bool, show_status: bool,
                  verbose: bool) -> None:
    """Apply MAILBOX's deltas to a mailbox folder: the reference plugin client.

    deliver writes the stored message into Inbox with the header
    X-Syncengine-Delivery: EVENT/SEQ (so the index recognises it, C12); purge removes the
    named file if it still holds the delta's Message-ID; send submits the Outbox item over
    SMTP; defer is logged. No file is ever replaced: a name that is taken gets a free one.
    Each delta is acknowledged only once its effect is durable, and a journal in the
    folder (a dot-file) makes a restart re-apply nothing; it keys on the store's id, so a
    rebuilt store's deltas are applied as its own, never skipped.

    Sending is what a mail program does: Bcc and Resent-Bcc go in the envelope, never in
    the message; the relay's answer is kept per recipient. A send is "sent" (and moved to
    Sent Items) only when every recipient was accepted. A temporary refusal (greylisting,
    too many recipients) is sent again to those recipients in a later transaction, with
    the same bytes and backoff, for about half an hour; a permanent one is recorded. Some
    refused: "partial" (moved to Sent Items); all refused: "failed" (it stays in the
    Outbox, as "not sent"). Each is named when apply ends, and `--status` lists them.

    A delivery whose content cannot be had yet or that the disk has no room for, or a
    send the relay cannot take now (it is away, refuses the login, or its certificate is
    not trusted: the error names the host), is never acknowledged: it stays pending and
    is tried again with backoff (2 s, doubling to 5 min) while the deltas after it go on;
    `syncengine status` shows the client's acknowledgement behind the log meanwhile.

    \b
    Examples:
      syncengine apply --mailbox alice@acme.example --mailbox-dir ~/Mail/alice --db alice.db
      syncengine apply --mailbox alice@acme.example --mailbox-dir ~/Maildir --layout maildir \\
          --db alice.db --smtp smtp.acme.example:587 --starttls --smtp-user alice --smtp-password-file ~/.smtp
      syncengine apply --mailbox alice@acme.example --mailbox-dir ~/Mail/alice --status
    """
    import signal
    import threading

    from . import client as client_mod
    from . import endpoints as endpoints_mod
    from .apply import client as apply_mod
    from .apply.mailbox import ApplyError, Layout, Smtp

    logs.configure(level=logging.INFO if verbose else logging.WARNING, stamped=False)
    mailbox = _address(_one_mailbox(mailbox))
    if show_status:
        _apply_status(mailbox_dir, mailbox)
        return
    if db is not None and endpoint is not None:
        _fail("follow a store (--db STORE) or an engine elsewhere (--endpoint URL --keys DIR), not both", 2)
    db, endpoint, keys = _served(db, endpoint, keys_dir)
    keys_dir = keys_dir or keys
    if db is not None:
        _existing_store(db)
    try:
        where = endpoints_mod.for_store(db, endpoint)
        curve = None
        if where.is_tcp:
            if keys_dir is None:
                _fail("a tcp endpoint needs --keys DIR", 2)
            public, secret = endpoints_mod.load_secret(keys_dir / "clients" / f"{mailbox}.key_secret")
            curve = (endpoints_mod.load_public(keys_dir / "server.key"), public, secret)
    except endpoints_mod.EndpointError as exc:
        _fail(str(exc), 2)
    relay = None
    if smtp:
        host, _, port = smtp.rpartition(":")
        if not host or not port.isdigit():
            _fail(f"--smtp: expected HOST:PORT, got {smtp!r}", 2)
        password = None
        if smtp_password_file is not None:
            from . import files
            try:
                password = files.read_secret(smtp_password_file).decode()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None)
                _fail(f"--smtp-password-file: {reason} ({smtp_password_file})" if reason else
                      f"--smtp-password-file: {exc}", 2)
        relay = Smtp(host, int(port), "ssl" if use_ssl else "starttls" if starttls else "none", smtp_user, password,
                     smtp_ca_file)
    listener = client_mod.Client(where, f"{mailbox}/apply", [mailbox], curve=curve, serving=_serving(db))
    try:
        applier = apply_mod.Applier(Layout(mailbox_dir, layout == "maildir"), relay,
                                    lambda d: listener.fetch_content(d["mailbox"], d["mailbox_seq"]),
                                    lambda: listener.store)
    except ApplyError as exc:
        listener.close()
        _fail(str(exc), EXIT_STORE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: the report, then exit
    try:
        report = apply_mod.run(applier, listener, mailbox, stop, idle=2.0 if once else None)
    except client_mod.ClientError as exc:
        _fail(f"refused by the server: {exc}")
    except KeyboardInterrupt:
        report = applier.report
    finally:
        listener.close()
        applier.close()
    for line in report.lines():
        click.echo(printable(line))
    if once and not listener.answered:
        _fail(f"nothing answered on {where.router}: {_serving(db)}", EXIT_STORE)


def _apply_status(mailbox_dir: Path, mailbox: str) -> None:
    """What the folder's journal says was not sent to every recipient."""
    from .apply import client as apply_mod
    from .apply.mailbox import ApplyError

    if not (mailbox_dir / apply_mod.JOURNAL).exists():
        _fail(f"{mailbox_dir}: no apply journal here (nothing was applied to this folder)", EXIT_STORE)
    try:
        journal = apply_mod.Journal(mailbox_dir)
    except ApplyError as exc:
        _fail(str(exc), EXIT_STORE)
    unsent = [s for s in journal.unsent() if s["mailbox"] == mailbox]
    journal.close()
    if not unsent:
        click.echo("every send went to all its recipients")
    for send in unsent:
        click.echo(printable(f"#{send['mailbox_seq']} {send['outcome']}: {send['message_id'] or ''} "
                             f"{send['subject'] or ''} ({send['source']})"))
        for item in send["recipients"]:
            click.echo(printable(f"  {item['recipient']}: {item['state']}, {item['code']} {item['reply'] or ''}"
                                 f" ({item['attempts']} attempt(s))"))


@cli.group()
def keys() -> None:
    """CURVE keys for tcp endpoints."""


@keys.command("generate")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--client", "client_address",
              help="Make a client's key pair bound to this address and add it to the allow-list.")
def keys_generate(folder: Path, client_address: str | None) -> None:
    """Generate the server's key pair in FOLDER, or a client's with --client.

    Give `serve --keys FOLDER`; hand a client its FOLDER/clients/ADDRESS.key_secret
    and the server's FOLDER/server.key. Secret files are written mode 0600.
    """
    from . import endpoints as endpoints_mod

    try:
        public, secret = endpoints_mod.generate(folder, client_address)
    except endpoints_mod.EndpointError as exc:
        _fail(str(exc), EXIT_STORE)
    click.echo(f"public {public}\nsecret {secret}")
