"""Where the SQLite file lives: one resolver for the state dir and the database path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def state_dir(state_dir: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Path:
    """Resolve the state dir: the argument, else $CHATSTATE_HOME (from `env`, default the
    process environment), else ~/.chatstate. The one resolver: the gateway's config uses it too."""
    if state_dir is not None:
        return Path(state_dir).expanduser()
    home = (os.environ if env is None else env).get("CHATSTATE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".chatstate"


def database_path(state_dir_: str | os.PathLike[str] | None = None) -> Path:
    """Where the SQLite file lives: `<state_dir>/plugin-state/state.sqlite`."""
    return state_dir(state_dir_) / "plugin-state" / "state.sqlite"


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """`path` names the database file; an existing directory is taken as a state dir."""
    if path is None:
        return database_path()
    p = Path(path).expanduser()
    if p.is_dir() and not p.is_symlink():  # a symlink is refused by the backend, never followed
        return database_path(p)
    return p
