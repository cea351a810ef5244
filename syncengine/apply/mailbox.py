"""A mailbox as a folder tree: the `.eml` tree that `syncengine index` reads (a folder per
mailbox folder), or Maildir++ (`cur/new/tmp`, subfolders `.Sent Items`, ...).

Every write is durable before it is acknowledged (files.py); a restart never renames or
touches a message file it already wrote; a purge removes only the file named, only if it
is still the message the delta names.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path

from .. import files, normalise

DELIVERY_HEADER = b"X-Syncengine-Delivery"


class ApplyError(Exception):
    """A delta that cannot be applied; the text says why (recorded, reported, acked)."""


class Retry(Exception):
    """A delta that cannot be applied yet (the relay is down): not recorded, not acked."""


class Pending(Exception):
    """A delta that cannot be applied yet but need not hold up those after it (a delivery
    whose content cannot be fetched now): not recorded, not acked, tried again later."""


def with_delivery_header(raw: bytes, event: str, seq: int) -> bytes:
    """The stored content with one header line added at the top (C12): the original
    headers stay in order and the body is byte-equal."""
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    return DELIVERY_HEADER + b": " + f"{event}/{seq}".encode() + newline + raw


def message_id(path: Path) -> str | None:
    """The Message-ID of a regular file; None for anything else (a FIFO, a symlink)."""
    try:
        data = files.read_regular(path)
    except OSError:
        return None
    return normalise.message_id(BytesHeaderParser(policy=policy.compat32).parsebytes(data).get("Message-ID"))


@dataclass
class Layout:
    root: Path
    maildir: bool

    def folder(self, name: str) -> Path:
        """A mailbox folder: in Maildir++ the inbox is the root and others are `.Name`."""
        if not self.maildir:
            return self.root / name
        return self.root if name.lower() == "inbox" else self.root / f".{name.replace('/', '.')}"

    def deliver(self, raw: bytes, event: str, seq: int, mailbox: str) -> Path:
        """The delivery's file, named by its delta so a restart finds it and never writes it
        twice; returns its path."""
        data = with_delivery_header(raw, event, seq)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{event}-{seq}")
        if not self.maildir:
            target = files.private_dir(self.folder("Inbox")) / f"syncengine-{safe}.eml"
            if not target.exists():
                files.write_durable(target, data)
            return target
        inbox = self.folder("Inbox")
        for sub in ("tmp", "new", "cur"):
            files.private_dir(inbox / sub)
        name = f"syncengine-{safe}.{normalise.fingerprint(mailbox)[:8]}"
        target = inbox / "new" / name
        if target.exists() or any((inbox / "cur").glob(name + ":*")):
            return target
        staged = inbox / "tmp" / name
        files.write_durable(staged, data)
        os.replace(staged, target)  # Maildir: tmp/ then new/, so a reader never sees half of it
        files.fsync_dir(target.parent)
        return target

    def local(self, locator: str) -> Path:
        """A purge or send names a file by its path relative to the export's root (N4)."""
        try:
            return files.inside(self.root, locator, "source")
        except files.OutsideError as exc:
            raise ApplyError(str(exc)) from None

    def purge(self, locator: str, wanted_id: str | None) -> str:
        """Remove the named file if it still holds the message the delta names."""
        path = self.local(locator)
        if not path.exists():
            return "already-gone"
        found = message_id(path)
        if wanted_id is None or found != normalise.message_id(wanted_id):
            return "mismatch"
        path.unlink()
        files.fsync_dir(path.parent)
        return "purged"

    def move_to_sent(self, path: Path) -> Path:
        """As Outlook does after sending: the Outbox item becomes a Sent Items item."""
        sent = self.folder("Sent Items")
        if self.maildir:
            for sub in ("tmp", "new", "cur"):
                files.private_dir(sent / sub)
            target = sent / "cur" / path.name
        else:
            target = files.private_dir(sent) / path.name
        os.replace(path, target)
        files.fsync_dir(target.parent)
        files.fsync_dir(path.parent)
        return target


@dataclass
class Smtp:
    host: str
    port: int
    security: str = "none"         # none | starttls | ssl
    user: str | None = None
    password: str | None = None    # read from an owner-only file, never printed

    def send(self, raw: bytes) -> None:
        """Submit the bytes as they are (same Message-ID and Date on a resend)."""
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        sender = normalise.address(headers.get("From"))
        recipients = [a for _, a in getaddresses(headers.get_all("To", []) + headers.get_all("Cc", [])
                                                  + headers.get_all("Bcc", [])) if a]
        if not sender or not recipients:
            raise ApplyError("the message has no From or no recipients")
        context = ssl.create_default_context()
        cls = smtplib.SMTP_SSL if self.security == "ssl" else smtplib.SMTP
        kwargs = {"context": context} if self.security == "ssl" else {}
        with cls(self.host, self.port, timeout=60, **kwargs) as server:
            if self.security == "starttls":
                server.starttls(context=context)
            if self.user:
                server.login(self.user, self.password or "")
            server.sendmail(sender, recipients, raw)
