"""Which config a command reads, as notmuch and mbsync find theirs: `--config FILE`,
else $SYNCENGINE_CONFIG, else the user's config folder (platformdirs: on Linux
$XDG_CONFIG_HOME/syncengine/syncengine.toml). One file serves every command: the
daemon's config names the store, the mailboxes and their exports, and the endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV = "SYNCENGINE_CONFIG"


def default_path() -> Path:
    import platformdirs

    return platformdirs.user_config_path("syncengine") / "syncengine.toml"


@dataclass(frozen=True)
class Located:
    path: Path
    source: str      # "--config", "$SYNCENGINE_CONFIG" or "default"

    @property
    def chosen(self) -> bool:
        """Named by the user: a missing file is then an error, not "no config yet"."""
        return self.source != "default"


def locate(given: Path | None) -> Located:
    if given is not None:
        return Located(Path(given), "--config")
    if os.environ.get(ENV):
        return Located(Path(os.environ[ENV]).expanduser(), f"${ENV}")
    return Located(default_path(), "default")


def place(value: str | Path, config_file: Path) -> str:
    """A path the user typed (relative to where they typed it), as the config at
    `config_file` must say it: relative to the config's folder when it lies under it,
    else absolute, so the daemon finds it whatever folder it runs from."""
    target = Path(os.path.abspath(Path(value).expanduser()))
    base = Path(os.path.abspath(config_file)).parent
    try:
        return str(target.relative_to(base))
    except ValueError:
        return str(target)
