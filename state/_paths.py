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


SECRET_QUERY_KEYS = frozenset({"password", "sentinel_password"})  # query options never shown


def shown_url(url: str) -> str:
    """`url` as it may be printed anywhere (probe, /healthz, logs, errors): the password, in the
    user part or the query, replaced by `***`; the user, hosts, database and options kept, so
    an operator still sees which server and which user. `redis://u:pw@h:6379/0` shows as
    `redis://u:***@h:6379/0`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"  # not a URL at all: nothing in it is safe to echo
    netloc, slash, tail = rest.partition("/")
    path, qmark, query = tail.partition("?")
    if not slash and "?" in netloc:
        netloc, _, query = netloc.partition("?")
        qmark = "?"
    creds, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = creds.partition(":")
        # a lone `x@` is shown as `***@` too: people put a password there by mistake
        netloc = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    pairs = [p.partition("=") for p in query.split("&")] if query else []
    query = "&".join(f"{k}={'***' if k.lower() in SECRET_QUERY_KEYS else v}" if eq else k for k, eq, v in pairs)
    return f"{scheme}{sep}{netloc}{slash}{path.partition('#')[0]}{qmark}{query.partition('#')[0]}"
