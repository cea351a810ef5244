"""Mimecast snapshots: pages validated and normalised into entry rows (formats.md).

A page that is not valid JSON, not valid against the schema, has a non-empty `fail[]`
or a `meta.status` other than 200 is rejected whole; the other pages still apply.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import files, formats, headers, normalise

_PAGE = re.compile(r"^snapshot(-\d+)?\.json$")
MAX_PAGE_BYTES = 256 << 20  # a page of 500 entries is well under 1 MiB


@dataclass(slots=True)
class EntryRow:
    page: int
    position: int
    entry_id: str
    address: str
    kind: str
    message_id: str | None
    header_ts: int | None
    received_ts: int
    sender: str | None
    recipients: str
    subject: str
    subject_norm: str
    status: str | None
    expired: bool
    message_class: str | None  # None: taken from the content when it is stored (formats.md)
    resent_key: str | None
    content: str | None     # path of the source file, copied into the store by the engine
    fingerprint: str


@dataclass
class Loaded:
    """What reading a snapshot found: pages, rejected pages, warnings, entries (counted;
    the rows themselves go page by page to whoever consumes them)."""
    pages: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    entries: int = 0


def page_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise formats.FormatError(f"{path}: no such snapshot folder or file")
    pages = sorted(p for p in path.iterdir() if _PAGE.match(p.name))
    if not pages:
        raise formats.FormatError(f"{path}: no snapshot.json or snapshot-NNNN.json pages")
    return pages


def rows(path: Path, result: Loaded) -> Iterator[tuple[int, str, Iterator[EntryRow]]]:
    """Each page that passes its page-level checks, one at a time (memory holds one page,
    however many the snapshot has): its number, its file, and its entry rows, made as
    they are consumed. An entry that is not valid raises FormatError while they are: the
    consumer rejects that page whole. Rejected pages go into `result` as they come."""
    folder = path if path.is_dir() else path.parent
    for number, page_path in enumerate(page_files(path), start=1):
        result.pages += 1
        try:
            page_path = files.confined(folder, page_path.name, str(page_path))
        except files.OutsideError as exc:  # N4: a page that is a symlink out, a FIFO, ...
            result.rejected.append((str(page_path), str(exc)))
            continue
        try:
            page, address = _page(page_path)
        except formats.FormatError as exc:
            result.rejected.append((str(page_path), str(exc)))
            continue
        # each page's entries carry its own address and kind (an alias stands for its primary)
        where, kind = str(page_path), page.meta.snapshot.kind
        yield number, where, (_entry(formats.decode_entry(raw, where, position), position, number, address, kind,
                                     folder, where, result.warnings)
                              for position, raw in enumerate(page.data))
        del page  # before the next page is read


def _page(path: Path) -> tuple[formats.PageToRead, str]:
    """A page decoded (its entries still raw) and its page-level checks passed, and its address."""
    where = str(path)
    try:
        data = files.read_regular(path, MAX_PAGE_BYTES)
    except OSError as exc:
        raise formats.FormatError(f"{where}: cannot read ({exc.strerror or exc})") from None
    page = formats.decode(data, formats.PageToRead, where)
    if page.meta.status != 200:
        raise formats.FormatError(f"{where}: $.meta.status: page status {page.meta.status}, expected 200")
    if page.fail:
        raise formats.FormatError(f"{where}: $.fail: the API reported {len(page.fail)} failure(s): "
                                  f"{str(page.fail[0])[:200]}")
    address = normalise.address(page.meta.snapshot.address)
    if not address:
        raise formats.FormatError(f"{where}: $.meta.snapshot.address: not an address: "
                                  f"{files.shown(page.meta.snapshot.address)}")
    return page, address


def _entry(entry: formats.Entry, position: int, page: int, address: str, kind: str, folder: Path,
           where: str, warnings: list[tuple[str, str]]) -> EntryRow:
    base = f"$.data[{position}]"
    received = formats.check_time(entry.received, where, f"{base}.received")
    header_ts = formats.check_time(entry.headerDate, where, f"{base}.headerDate")
    resent = None
    if entry.headers:  # most entries list none
        wanted = {h.name.lower(): h.values[0] for h in entry.headers if h.values}
        resent = normalise.resent_key(wanted.get("resent-message-id"), wanted.get("resent-date"))
    content = None
    if entry.content:
        try:  # N4: only a regular file inside the snapshot folder is ever read
            content = str(files.confined(folder, entry.content, f"{base}.content"))
        except files.OutsideError as exc:  # C6: still delivered, with content null
            warnings.append((where, f"{exc}; delivered without content"))
    mid = normalise.message_id(entry.mimeMessageId)
    if mid:
        fingerprint = normalise.fingerprint(normalise.identity(mid, header_ts, resent))
    else:  # C5: without a Message-ID an entry is its Mimecast id, whatever address lists it
        fingerprint = normalise.fingerprint(f"entry:{entry.id}")
    recipients = normalise.recipients_key(
        [a for a in (normalise.address(x.emailAddress) for x in entry.to + entry.cc) if a])
    return EntryRow(page, position, entry.id, address, kind, mid, header_ts, received,
                    normalise.address(entry.from_.emailAddress), recipients, entry.subject,
                    normalise.subject(entry.subject), entry.status, entry.expired, entry.messageClass,
                    resent, content, fingerprint)


def content_class(data: bytes | None) -> tuple[str, str | None]:
    """formats.md: without `messageClass`, the class comes from a text/calendar body part;
    (IPM.Note, why) for content that cannot be read for it (headers.class_of_mime)."""
    return ("IPM.Note", None) if data is None else headers.class_of_mime(data)


def store_content(data: bytes, content_dir: Path) -> str:
    """Keep an entry's raw message in the store (N1: durable before the commit that names
    it; N4: owner only), so a client can fetch it after the snapshot folder is gone.
    Named by the digest of the bytes, read once by the caller, which are the bytes written.
    A failed write (a full disk) raises OSError: the caller's snapshot is not applied."""
    target = content_dir / (hashlib.sha256(data).hexdigest()[:32] + ".eml")
    try:
        present = target.stat().st_size == len(data)
    except OSError:
        present = False
    if not present:  # content-addressed: another process storing the same bytes is success
        files.write_durable(target, data)
    return str(target)
