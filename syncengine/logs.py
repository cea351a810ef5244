"""Log lines, as text or JSON, on stderr: for the daemon and every long-running command.

Every message goes through one escape (files.printable): Mimecast ids, subjects, server
error text and file names come from mail and peers, and an escape sequence in a log
line would change the terminal that shows it. httpx's own request lines are kept out:
they carry URLs, and a pre-signed download URL is a credential.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .files import printable


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the time, level, logger and message, and the fields the
    call gave as `extra` (event, mailbox, path, counts, next_poll, ...), so a machine
    reads what happened without parsing the sentence."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def configure(log_format: str = "text", level: int = logging.INFO, stamped: bool = True) -> None:
    """One handler on stderr for the whole process: `stamped` text lines carry the time
    and the logger (the daemon); plain ones are `LEVEL: message` (a command)."""
    handler = logging.StreamHandler(sys.stderr)
    pattern = "%(asctime)s %(levelname)s %(name)s: %(message)s" if stamped else "%(levelname)s: %(message)s"
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(pattern))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("watchdog", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
