"""Files the engine writes, and files it reads because an input named them.

Durable (N1): a file that a committed row names is written under a temporary name,
fsynced, renamed into place, and its folder fsynced, all before that commit, as
mbsync does for its state. After a power loss a delta never names a missing file.

Confined (N4): a path named inside an input (a snapshot's `content`, a scenario's
folder or file) is resolved here, once, and must stay inside the folder it is
relative to and name a regular file; anything else is refused with the reason.

Private (N4): everything the store writes is for its owner only, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

NAME_MAX = 255     # bytes in one path component, as on every file system we meet
PATH_MAX = 4096


os_fsync = os.fsync  # the one fsync of this module (tools/bench/durability_bench.py swaps it for its baseline)


class OutsideError(ValueError):
    """A path named by an input that leads outside its folder or to no regular file."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation inside `folder` durable. Windows cannot open folders; its
    MoveFileEx with write-through is what os.replace already does there."""
    if os.name == "nt":
        return
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os_fsync(handle)
    finally:
        os.close(handle)


def private_dir(folder: Path) -> Path:
    """`folder` (and missing parents) with mode 0700; a newly made one is durable."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for made in reversed(missing):
        os.mkdir(made, 0o700)
        fsync_dir(made.parent)
    if folder.stat().st_uid == os.getuid():
        os.chmod(folder, 0o700)
    return folder


class TooLarge(OSError):
    """More bytes than a write allows; nothing was written."""


def write_all(handle: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data` to the descriptor: os.write may take less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view):]


def write_durable(target: Path, data: bytes | Iterable[bytes], mode: int = 0o600, limit: int | None = None) -> int:
    """Write `data` (bytes, or chunks as they come) to `target` so that after any crash it
    is either absent or whole; returns its size. The temporary file beside it has a name
    of its own (O_EXCL), so two processes writing one target never share a half-written
    file. With `limit`, more bytes than that raise TooLarge and leave nothing behind."""
    target = Path(target)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:200]}.", suffix=".part")
    written = 0
    try:
        try:
            if hasattr(os, "fchmod"):  # the umask must not widen it, whatever it is
                os.fchmod(handle, mode)
            for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                written += len(chunk)
                if limit is not None and written > limit:
                    raise TooLarge(f"{target.name}: larger than {limit:,} bytes")
                write_all(handle, chunk)
            os_fsync(handle)
        finally:
            os.close(handle)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    fsync_dir(target.parent)
    return written


def write_new(target: Path, data: bytes, mode: int = 0o600) -> bool:
    """Write `data` durably as `target` unless a file of that name is there: never replaces
    one, even against another writer (written whole under a temporary name, then linked
    into place, which fails when the name is taken). False when it was there."""
    target = Path(target)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:200]}.", suffix=".part")
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(handle, mode)
            write_all(handle, data)
            os_fsync(handle)
        finally:
            os.close(handle)
        try:
            os.link(partial, target)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    fsync_dir(target.parent)
    return True


def link_free(source: Path, target: Path) -> Path:
    """`source` linked into place at `target`, or at the first free `name-1.ext`,
    `name-2.ext`, ... beside it: never over a file that is there. Returns where."""
    target = Path(target)
    stem, suffix = target.stem, target.suffix
    for number in range(10_000):
        candidate = target if number == 0 else target.with_name(f"{stem}-{number}{suffix}")
        try:
            os.link(source, candidate)
        except FileExistsError:
            continue
        fsync_dir(candidate.parent)
        return candidate
    raise FileExistsError(f"{target}: no free name beside it")


def _relative(name: str, what: str) -> Path:
    """`name` as a relative path with no `..`, or OutsideError."""
    if not isinstance(name, str) or not name:
        raise OutsideError(f"{what}: empty")
    if "\0" in name:
        raise OutsideError(f"{what}: contains a NUL character")
    if len(name.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise OutsideError(f"{what}: longer than {PATH_MAX} bytes")
    relative = Path(name)
    if relative.is_absolute() or relative.drive or name.startswith(("/", "\\")):
        raise OutsideError(f"{what}: {shown(name)} is absolute; it must be relative to its folder")
    if ".." in name.replace("\\", "/").split("/"):
        raise OutsideError(f"{what}: {shown(name)} climbs out with '..'")
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in relative.parts):
        raise OutsideError(f"{what}: a name in {shown(name)} is longer than {NAME_MAX} bytes")
    return relative


def _within(base: Path, resolved: Path) -> bool:
    return resolved == base or base in resolved.parents


def confined(root: Path, name: str, what: str = "path", folder_ok: bool = False) -> Path:
    """The regular file (or with `folder_ok`, the folder) `name` names inside `root`, or
    OutsideError saying why not. Symlinks are followed only while they stay inside `root`."""
    relative = _relative(name, what)
    base = Path(root).resolve()
    try:
        resolved = (base / relative).resolve(strict=True)
    except FileNotFoundError:
        raise OutsideError(f"{what}: no such file {shown(name)}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise OutsideError(f"{what}: {shown(name)} cannot be resolved ({exc})") from None
    if not _within(base, resolved):
        raise OutsideError(f"{what}: {shown(name)} leads outside {root} (through a symlink)")
    try:
        info = resolved.stat()
    except OSError as exc:
        raise OutsideError(f"{what}: {shown(name)}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(info.st_mode) or (folder_ok and stat.S_ISDIR(info.st_mode))):
        raise OutsideError(f"{what}: {shown(name)} is not a regular file")
    return resolved


def inside(root: Path, name: str, what: str = "path") -> Path:
    """Where `name` would be inside `root`, for a file an input asks us to create or
    remove: relative, no `..`, and no folder on the way a symlink that leads out."""
    relative = _relative(name, what)
    base = Path(root).resolve()
    target = base / relative
    existing = target.parent
    while not existing.exists() and existing != base:
        existing = existing.parent
    if not _within(base, existing.resolve()):
        raise OutsideError(f"{what}: {shown(name)} leads outside {root} (through a symlink)")
    return target


def open_regular(path: Path):
    """A regular file opened for reading (a binary file object), without following a final
    symlink and without blocking on a FIFO or device; OSError (with a reason) otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    handle = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(f"not a regular file: {path}")
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, opened as open_regular does; OSError beyond `limit`."""
    with open_regular(path) as stream:
        if limit is not None and os.fstat(stream.fileno()).st_size > limit:
            raise OSError(f"larger than {limit} bytes: {path}")
        return stream.read()


def untrusted(path: Path) -> str | None:
    """Why a folder or file that feeds the engine (a drop folder, a directory file) cannot
    be trusted, or None: anyone else who can write there could forge mail (N4). A path
    that does not exist yet is not refused (the engine makes it, owner-only)."""
    if not hasattr(os, "getuid"):
        return None  # Windows: the profile folder's ACLs do this
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    if info.st_uid != os.getuid():
        return f"owned by another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); chmod go-w it"
    return None


def read_secret(path: Path) -> bytes:
    """A secret (a password, an API key) from a regular file only its owner can read,
    stripped; OSError saying why not. The reason never quotes what the file holds."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise PermissionError(f"{path} can be read by others (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it")
    return read_regular(path).strip()


def printable(text: str) -> str:
    """Text from mail or a peer made safe for a terminal or a log line: control
    characters (and the escapes they start) are shown escaped, never sent raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown(text: str, limit: int = 120) -> str:
    """Text from an input made safe to print: control characters escaped, long text cut."""
    safe = text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    return repr(safe[:limit] + ("..." if len(safe) > limit else ""))
