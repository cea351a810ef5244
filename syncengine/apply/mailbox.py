"""A mailbox as a folder tree: the `.eml` tree that `syncengine index` reads (a folder per
mailbox folder), or Maildir++ (`cur/new/tmp`, subfolders `.Sent Items`, ...); and the SMTP
submission of Outbox items, as a mail program submits them.

Every write is durable before it is acknowledged (files.py); no write or move ever
replaces a file that is there (a free name is chosen, as exporters number files per
folder); a purge removes only the file named, only if it is still the message the
delta names.
"""

from __future__ import annotations

import re
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


class Pending(Exception):
    """A delta that cannot be applied yet but need not hold up those after it (a delivery
    whose content cannot be fetched now, a send the relay cannot take now): not
    recorded, not acked, tried again later. `soon`: a retry in seconds is likely to work
    (greylisting, too many recipients), so a one-shot run waits for it."""

    def __init__(self, why: str, soon: bool = False):
        super().__init__(why)
        self.soon = soon


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


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass
class Layout:
    root: Path
    maildir: bool

    def folder(self, name: str) -> Path:
        """A mailbox folder: in Maildir++ the inbox is the root and others are `.Name`."""
        if not self.maildir:
            return self.root / name
        return self.root if name.lower() == "inbox" else self.root / f".{name.replace('/', '.')}"

    def deliver(self, raw: bytes, event: str, seq: int, mailbox: str, store: str) -> Path:
        """The delivery's file, named by its delta and its store so a restart finds it and
        never writes it twice, and another store's delivery of the same number is not
        taken for it; returns its path."""
        data = with_delivery_header(raw, event, seq)
        name = f"syncengine-{_safe(event)}-{seq}-{_safe(store[:8])}"
        if not self.maildir:
            target = files.private_dir(self.folder("Inbox")) / f"{name}.eml"
            files.write_new(target, data)
            return target
        inbox = self.folder("Inbox")
        for sub in ("tmp", "new", "cur"):
            files.private_dir(inbox / sub)
        name = f"{name}.{normalise.fingerprint(mailbox)[:8]}"
        target = inbox / "new" / name
        if any((inbox / "cur").glob(name + ":*")):
            return target  # delivered before, and seen since
        files.write_new(target, data)  # durable first, then in place without replacing anything
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
        """As Outlook does after sending: the Outbox item becomes a Sent Items item, under a
        free name (Sent Items often holds a file of the same name: exporters number files
        per folder). Linked in place first, so it is never in neither folder."""
        sent = self.folder("Sent Items")
        if self.maildir:
            for sub in ("tmp", "new", "cur"):
                files.private_dir(sent / sub)
            folder = sent / "cur"
        else:
            folder = files.private_dir(sent)
        target = files.link_free(path, folder / path.name)
        path.unlink()
        files.fsync_dir(path.parent)
        return target


# --- submission ---------------------------------------------------------------------------------

_BLIND = re.compile(rb"^(resent-)?bcc[ \t]*:", re.IGNORECASE)


def submission(raw: bytes) -> tuple[str | None, list[str], bytes]:
    """Sender, every recipient, and the bytes to submit, as RFC 5321/5322 and mail
    programs do it: blind copies are in the envelope but not in the data (Bcc and
    Resent-Bcc fields are removed, and nothing else changes, so a resend is the same
    bytes). A resent message (Resent-Date) goes to its Resent- recipients."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    prefix = "Resent-" if headers.get("Resent-Date") is not None else ""
    sender = normalise.address(headers.get(f"{prefix}Sender") or headers.get(f"{prefix}From"))
    recipients = []
    for _, address in getaddresses(headers.get_all(f"{prefix}To", []) + headers.get_all(f"{prefix}Cc", [])
                                   + headers.get_all(f"{prefix}Bcc", [])):
        address = normalise.address(address)
        if address and address not in recipients:
            recipients.append(address)
    return sender, recipients, strip_blind_copies(raw)


def strip_blind_copies(raw: bytes) -> bytes:
    """`raw` without its Bcc and Resent-Bcc fields (with their folded lines); the rest of
    the header and the body byte for byte."""
    lines = raw.splitlines(keepends=True)
    out, dropping = [], False
    for number, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):  # the end of the header
            return b"".join(out + lines[number:])
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = bool(_BLIND.match(line))
        if not dropping:
            out.append(line)
    return b"".join(out)


@dataclass(frozen=True)
class Refusal:
    """A relay's answer refusing a recipient (or the whole message, for each recipient)."""
    code: int
    reply: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class SmtpUnavailable(Exception):
    """The relay could not be reached, talked to, or trusted: the send is tried again later."""


@dataclass
class Smtp:
    host: str
    port: int
    security: str = "none"         # none | starttls | ssl
    user: str | None = None
    password: str | None = None    # read from an owner-only file, never printed
    ca_file: Path | None = None    # the relay's CA, for a private relay

    def send(self, data: bytes, sender: str, recipients: list[str]) -> dict[str, Refusal]:
        """Submit `data` to `recipients` in one transaction; the recipients refused, with
        the relay's answer (empty: every one accepted). SmtpUnavailable when the relay
        cannot be reached, refuses the login, or its certificate is not trusted."""
        where = f"{self.host}:{self.port}"
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            cls = smtplib.SMTP_SSL if self.security == "ssl" else smtplib.SMTP
            kwargs = {"context": context} if self.security == "ssl" else {}
            with cls(self.host, self.port, timeout=60, **kwargs) as server:
                if self.security == "starttls":
                    server.starttls(context=context)
                if self.user:
                    server.login(self.user, self.password or "")
                try:
                    refused = server.sendmail(sender, recipients, data)
                except smtplib.SMTPRecipientsRefused as exc:
                    refused = exc.recipients
                except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:  # the whole message
                    return dict.fromkeys(recipients, Refusal(exc.smtp_code, _text(exc.smtp_error)))
        except ssl.SSLCertVerificationError as exc:
            raise SmtpUnavailable(f"TLS to {where}: the relay's certificate is not trusted ({exc.verify_message}); "
                                  "give its CA with --smtp-ca-file") from None
        except ssl.SSLError as exc:
            raise SmtpUnavailable(f"TLS to {where}: {exc.reason or exc}") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise SmtpUnavailable(f"{where} refused the login ({exc.smtp_code} {_text(exc.smtp_error)})") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise SmtpUnavailable(f"{where}: {exc}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None
        return {recipient: Refusal(code, _text(reply)) for recipient, (code, reply) in refused.items()}


def _text(reply) -> str:
    return (reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply))[:300]
