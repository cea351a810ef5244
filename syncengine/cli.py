"""The `syncengine` command line. Each command's --help is its manual."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import index as indexing
from . import store

EXIT_OK = 0
EXIT_STORE = 1
EXIT_SOME_FAILED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="syncengine")
def cli() -> None:
    """syncengine: keep a mailbox whole through an Exchange outage.

    It indexes a user's mailbox exports, decides what Mimecast continuity must
    deliver, purge, send or defer, and tells plugin clients about each decision.
    Every command works on one SQLite store (--db), a plain file you can browse
    with `sqlite-utils` or datasette.
    """


def open_store(db: Path):
    try:
        return store.connect(db)
    except store.StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_STORE)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The store to index into (created if missing).")
@click.option("--mailbox", required=True, help="The address of the mailbox these exports belong to.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line per source file, then a {\"summary\": ...} line.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes parsing MSG/EML files (default: one per core).")
def index(paths: tuple[Path, ...], db: Path, mailbox: str, as_json: bool, workers: int | None) -> None:
    """Index mailbox exports into the store, incrementally.

    PATHS are PST/OST files, single .msg/.eml files, or folder trees of .msg/.eml
    files whose folder names are the mailbox folders (Inbox, Sent Items, ...).

    Running it again re-reads only files whose size or modification time changed;
    a changed PST is walked again and the index follows it, and a file that has
    disappeared from a folder tree drops its messages.

    A file that cannot be read gets a one-line error naming it and the reason; the
    run goes on with the other files.

    \b
    Exit codes:
      0  every file was indexed completely
      1  the store could not be opened or migrated
      2  wrong usage
      3  some files failed or were read only in part; the rest were indexed

    \b
    Examples:
      syncengine index ~/exports/alice.pst --db alice.db --mailbox alice@acme.example
      syncengine index ~/exports/alice-msg/ --db alice.db --mailbox alice@acme.example --json
    """
    database = open_store(db)
    progress = _Progress(enabled=not as_json and sys.stderr.isatty())

    def on_file(report: indexing.FileReport) -> None:
        if as_json:
            click.echo(json.dumps(report.as_json(), ensure_ascii=False))
        elif report.status != "ok":
            for error in report.errors:
                where = "" if error.where == report.path else f" ({error.where})"
                click.echo(f"{report.status}: {report.path}{where}: {error.reason}", err=True)

    with progress:
        if progress.enabled:
            tasks, _, _ = indexing.discover(paths)
            progress.start(indexing.count_messages(tasks))
        summary = indexing.run(database, paths, mailbox, progress=progress.advance,
                               on_file=on_file, workers=workers)
    if as_json:
        click.echo(json.dumps(summary.as_json()))
    else:
        click.echo(f"Indexed {summary.files} files for {mailbox}: {summary.ok} ok, "
                   f"{summary.partial} partial, {summary.error} failed, {summary.unchanged} unchanged, "
                   f"{summary.removed} removed; {summary.messages} messages in {summary.seconds:.2f}s.")
    sys.exit(EXIT_SOME_FAILED if summary.partial or summary.error else EXIT_OK)


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

    def start(self, total: int) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task("indexing", total=total)

    def advance(self, count: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, count)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
