"""The continuity engine: gathers inputs from the store, applies `rules`, and writes
decisions and their deltas in one transaction per poll (C1, N1).

Every function takes the engine clock `now` (epoch seconds) from its caller: the
replay passes its virtual clock, the command line and the daemon the wall clock.
By concern: `ingest` (snapshots, directory syncs), `events` (queries about events),
`decide` (the rules' inputs and outputs), `lifecycle` (start, end, poll), `log` (the
delta log), `report` (reports and status), `common` (error, clock, settings).
"""

from .common import EngineError, get_settings, set_settings, store_dir, wall_clock
from .events import Event, check_event_name, due_events, event_mailboxes, open_events, waiting
from .ingest import (DirectorySync, Prepared, SnapshotResult, add_directory, add_directory_if_new, add_snapshot,
                     directory_at, insert_directory, insert_snapshot, prepare_snapshot, read_directory)
from .lifecycle import end_event, end_event_in, poll, poll_in, start_event, start_event_in
from .log import Written, _append, as_json, delta_lines, deltas, deltas_for
from .report import report, status

# Each write comes twice: `start_event(db, ...)` is one transaction of its own;
# `start_event_in(conn, ...)` runs inside the caller's, so a replay step, a poller's
# record of what it fetched or a daemon task commits with it (N1).
__all__ = ["DirectorySync", "EngineError", "Event", "Prepared", "SnapshotResult", "_append",
           "add_directory", "add_directory_if_new", "add_snapshot", "as_json", "check_event_name", "delta_lines",
           "deltas", "deltas_for", "directory_at", "due_events", "end_event", "end_event_in", "event_mailboxes",
           "get_settings", "insert_directory", "insert_snapshot", "open_events", "poll", "poll_in",
           "prepare_snapshot", "read_directory", "report", "set_settings", "start_event", "start_event_in",
           "status", "store_dir", "waiting", "wall_clock", "Written"]
