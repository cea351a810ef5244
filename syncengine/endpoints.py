"""Where the notification sockets live, and the CURVE keys that guard tcp ones.

Default: `ipc://` sockets in `<store>.d/run/` (mode 0700), or in a short per-user
runtime folder when that path would pass the ipc length limit. A `tcp://` endpoint
requires CURVE. The ROUTER is at the endpoint given; the PUB beside it: for ipc the
same path with `.pub` added, for tcp the next port.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

IPC_LIMIT = getattr(zmq, "IPC_PATH_MAX_LEN", 107) or 107
SERVER_CERT = "server"


class EndpointError(Exception):
    """An endpoint or key setting that cannot work; the text says why."""


@dataclass(frozen=True)
class Endpoints:
    router: str
    pub: str

    @property
    def is_tcp(self) -> bool:
        return self.router.startswith("tcp://")

    def ipc_paths(self) -> list[Path]:
        return [Path(e[len("ipc://"):]) for e in (self.router, self.pub) if e.startswith("ipc://")]


def for_store(db_path: Path, endpoint: str | None = None) -> Endpoints:
    """The endpoints of the store at `db_path` (or those derived from `endpoint`)."""
    if endpoint is None:
        real = os.path.realpath(db_path)  # a client naming the store by a symlink finds the same sockets
        folder = Path(real + ".d") / "run"
        if len(os.fsencode(folder / "router.ipc.pub")) > IPC_LIMIT:
            folder = runtime_folder() / hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
        return Endpoints(f"ipc://{folder / 'router.ipc'}", f"ipc://{folder / 'router.ipc'}.pub")
    if endpoint.startswith("ipc://"):
        if len(os.fsencode(endpoint[len("ipc://"):] + ".pub")) > IPC_LIMIT:
            raise EndpointError(f"{endpoint}: PATH.pub is longer than the ipc limit of {IPC_LIMIT} bytes")
        return Endpoints(endpoint, endpoint + ".pub")
    match = re.fullmatch(r"tcp://(.+):(\d+)", endpoint)
    if match:
        return Endpoints(endpoint, f"tcp://{match.group(1)}:{int(match.group(2)) + 1}")
    raise EndpointError(f"{endpoint}: expected ipc://PATH or tcp://HOST:PORT")


def runtime_folder() -> Path:
    """A short folder only this user can enter: $XDG_RUNTIME_DIR, else /tmp/syncengine-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "syncengine" if base else Path(tempfile.gettempdir()) / f"syncengine-{os.getuid()}"
    return owned_folder(folder)


def owned_folder(folder: Path) -> Path:
    """`folder`, made 0700 if missing; refused unless it is a real folder of this user
    that no one else can enter (N4: in /tmp another user could create it first and
    swap the sockets)."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EndpointError(f"{folder}: cannot create ({exc.strerror or exc})") from None
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise EndpointError(f"{folder}: not a folder (a symlink or file is in the way); refusing to use it")
    if info.st_uid != os.getuid():
        raise EndpointError(f"{folder}: owned by uid {info.st_uid}, not by this user; refusing to put "
                            "sockets there (remove it, or set XDG_RUNTIME_DIR)")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def prepare_ipc(endpoints: Endpoints) -> None:
    for path in endpoints.ipc_paths():
        owned_folder(path.parent)


# --- CURVE keys -------------------------------------------------------------------------------

def generate(folder: Path, client: str | None = None) -> tuple[Path, Path]:
    """The server's key pair in `folder`, or, with `client`, a client's key pair in
    `folder/clients/`, its public certificate bound to that address (the allow-list)."""
    try:
        return _generate(folder, client)
    except OSError as exc:
        raise EndpointError(f"{exc.filename or folder}: cannot write keys ({exc.strerror or exc})") from None


def _generate(folder: Path, client: str | None) -> tuple[Path, Path]:
    if client is None:
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(folder), SERVER_CERT)
    else:
        target = folder / "clients"
        target.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(target), client, metadata={"address": client})
        # pyzmq puts metadata in the secret certificate only; the allow-list is the
        # public ones, so the address goes into that file too.
        key, _ = zmq.auth.load_certificate(public)
        Path(public).write_text("#   syncengine client certificate: the public key and its address\n"
                                f"metadata\n    address = \"{client}\"\ncurve\n"
                                f"    public-key = \"{key.decode()}\"\n", encoding="utf-8")
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def allowed_clients(folder: Path) -> dict[bytes, str]:
    """z85 public key -> the address it is bound to, from `folder/clients/*.key`."""
    if not folder.is_dir():
        raise EndpointError(f"{folder}: no such keys folder (make one with `syncengine keys generate {folder}`)")
    allowed = {}
    for cert in sorted((folder / "clients").glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(cert))
        address = _metadata(cert).get("address")
        if address:
            allowed[public] = address
    return allowed


def _metadata(cert: Path) -> dict[str, str]:
    found, inside = {}, False
    for line in cert.read_text(encoding="utf-8").splitlines():
        if line.strip() == "metadata":
            inside = True
        elif inside and line.startswith("    ") and "=" in line:
            key, value = line.strip().split("=", 1)
            found[key.strip()] = value.strip().strip('"')
        elif line and not line.startswith(" "):
            inside = False
    return found


def load_secret(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise EndpointError(f"{path}: not a readable key file ({exc.strerror if isinstance(exc, OSError) and exc.strerror else 'invalid'})") from None
    if not secret:
        raise EndpointError(f"{path}: not a secret key file (expected a .key_secret)")
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise EndpointError(f"{path}: not a readable key file ({exc})") from None
    return public
