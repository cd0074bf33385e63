"""One gateway per state dir: an exclusive lock, and a pid file saying who holds it and where.

Two files under the state dir:
- `gateway.lock` — `flock`ed exclusively for the life of the process and never deleted, so the
  kernel releases it however the process dies (SIGKILL included) and a stale pid file can never
  make a second gateway think the first still runs.
- `gateway.pid` — JSON {pid, started_at, state_dir, host, port, url, ready}, replaced atomically
  so a reader never sees half of it; removed on a clean exit.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from chatstate.gateway.exits import IN_USE, GatewayExit

LOCK_NAME = "gateway.lock"
PID_NAME = "gateway.pid"
DIR_MODE = 0o700  # the state dir holds adapter state; DESIGN.md §2
FILE_MODE = 0o600


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state dir (0700) if missing; an existing one keeps its mode."""
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


class PidFile:
    """The held lock plus the pid file; `acquire` it, `update` it, `release` it on exit."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd = fd
        self.info: dict[str, Any] = {}

    @classmethod
    def acquire(cls, state_dir: Path) -> PidFile:
        """Take the state dir's gateway lock and write the pid file.

        Raises GatewayExit(IN_USE) when another live gateway holds it.
        """
        ensure_state_dir(state_dir)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = read_info(state_dir) or {}
            pid = other.get("pid", "unknown")
            raise GatewayExit(IN_USE, f"a gateway is already running on {state_dir} (pid {pid})") from None
        self = cls(state_dir, fd)
        self.update(pid=os.getpid(), started_at=time.time(), state_dir=str(state_dir), ready=False)
        return self

    def update(self, **info: Any) -> None:
        """Merge `info` into the pid file (write to a temp file, then rename over it)."""
        self.info.update(info)
        path = self.state_dir / PID_NAME
        tmp = path.with_name(f".{PID_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.info, fh)
        os.replace(tmp, path)

    def release(self) -> None:
        """Remove the pid file and drop the lock (the lock file stays; see module doc)."""
        try:
            (self.state_dir / PID_NAME).unlink(missing_ok=True)
        finally:
            os.close(self._fd)

    def __enter__(self) -> PidFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_info(state_dir: Path) -> dict[str, Any] | None:
    """The pid file's contents, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((state_dir / PID_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_running(state_dir: Path) -> bool:
    """True while some process holds the state dir's gateway lock.

    Takes a shared lock for an instant to find out; a gateway starting in that same instant
    would see "already running", which is why nothing calls this in a loop against a starter.
    """
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


def running_info(state_dir: Path) -> dict[str, Any] | None:
    """The pid file of the running gateway, or None when none runs (a stale file is ignored)."""
    if not is_running(state_dir):
        return None
    return read_info(state_dir) or {"pid": None}
