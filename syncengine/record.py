"""What a reader produces: one `Record` per message location, plus errors.

Readers only parse; they know nothing of SQLite. The index turns records into
message identities and locations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import normalise


@dataclass(slots=True)
class Record:
    locator: str            # PST node id, or the file's path relative to the tree root
    folder: str             # mailbox folder path, `/` separators
    role: str               # folder role (continuity.md "Words")
    message_id: str | None  # normalised (C4)
    mid_source: str | None  # "mapi" (0x1035), "headers" (0x007D) or "mime"
    submit_ts: int | None   # epoch seconds: 0x0039, else the Date header
    subject: str            # as written; normalised when matched
    sender: str | None      # normalised address
    recipients: str         # sorted normalised To+Cc addresses, tab separated
    resent_key: str | None  # C7
    message_class: str | None
    delivery_tag: str | None  # X-Syncengine-Delivery (C12)

    def row(self) -> tuple:
        """The fields in their order, which is the column order of the staging insert in
        index.py; `Record(*row)` gives the record back."""
        return (self.locator, self.folder, self.role, self.message_id, self.mid_source, self.submit_ts,
                self.subject, self.sender, self.recipients, self.resent_key, self.message_class, self.delivery_tag)

    @property
    def identity(self) -> str | None:
        """None for a message without Message-ID: such messages are never merged (C5)."""
        if not self.message_id:
            return None
        return normalise.identity(self.message_id, self.submit_ts, self.resent_key)


@dataclass(slots=True)
class ReadError:
    where: str   # the item or part that failed, e.g. "Contacts#9" or the file itself
    reason: str


@dataclass
class SourceResult:
    """Everything one source file yielded. `skipped` counts items outside mailbox folders."""

    records: list[Record] = field(default_factory=list)
    errors: list[ReadError] = field(default_factory=list)
    skipped: int = 0
    fatal: bool = False  # the file as a whole could not be read
    reader: str | None = None  # for a store: which reader read it, and why that one

    @property
    def status(self) -> str:
        if self.fatal:
            return "error"
        return "partial" if self.errors else "ok"
