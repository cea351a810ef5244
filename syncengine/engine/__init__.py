"""The continuity engine: gathers inputs from the store, applies `rules`, and writes
decisions and their deltas in one transaction per poll (C1, N1).

Every function takes the engine clock `now` (epoch seconds) from its caller: the
replay passes its virtual clock, the command line and the daemon the wall clock.
By concern: `ingest` (snapshots, directory syncs), `events` (queries about events),
`decide` (the rules' inputs and outputs), `lifecycle` (start, end, poll), `log` (the
delta log), `report` (reports and status), `common` (error, clock, settings).
"""

from .common import EngineError, Journal, get_settings, set_settings, store_dir, wall_clock
from .decide import ENTRY_CHUNK
from .events import Event, check_event_name, due_events, event_mailboxes, open_events, waiting, waiting_for_index
from .ingest import SnapshotResult, add_directory, add_directory_if_new, add_snapshot, directory_at
from .lifecycle import end_event, poll, start_event
from .log import _append, as_json, delta_lines, deltas, deltas_for
from .report import report, status

__all__ = ["ENTRY_CHUNK", "EngineError", "Event", "Journal", "SnapshotResult", "_append", "add_directory",
           "add_directory_if_new", "add_snapshot", "as_json", "check_event_name", "delta_lines", "deltas",
           "deltas_for", "directory_at", "due_events", "end_event", "event_mailboxes", "get_settings",
           "open_events", "poll", "report", "set_settings", "start_event", "status", "store_dir",
           "waiting", "waiting_for_index", "wall_clock"]
