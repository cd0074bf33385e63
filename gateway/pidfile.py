"""One gateway per state dir: an exclusive lock, and a pid file saying who holds it and where.

Two files under the state dir:
- `gateway.lock` — `flock`ed exclusively for the life of the process and never deleted, so the
  kernel releases it however the process dies (SIGKILL included) and a stale pid file can never
  make a second gateway think the first still runs.
- `gateway.pid` — JSON {pid, started_at, state_dir, host, port, url, ready, launch}, replaced
  atomically so a reader never sees half of it; removed on a clean exit.
And `last-launch.json`, the `launch` of the last gateway started here, kept after it exits so
`restart` with nothing running starts that again (gateway/launch.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from chatstate.gateway.exits import IN_USE, STORE_UNUSABLE, GatewayExit

LOCK_NAME = "gateway.lock"
PID_NAME = "gateway.pid"
LAST_LAUNCH_NAME = "last-launch.json"
DIR_MODE = 0o700  # the state dir holds adapter state (docs/state.md)
FILE_MODE = 0o600


def check_database_file(path: Path | None) -> None:
    """The SQLite file at `path` (None: a Redis URL), read-only, as a start judges it before it
    touches anything: not SQLite, corrupt or a newer schema is STORE_UNUSABLE (exit 3) saying what
    to do; missing or empty is fine."""
    from chatstate import state  # the state package: only for commands that start or check a start
    from chatstate.state._files import to_go_on

    try:
        if path is not None:
            state.check_database(path)
    except state.StateStoreError as exc:
        raise GatewayExit(STORE_UNUSABLE, f"state store unusable: {exc}{to_go_on(path, exc)}") from None


def check_state_dir(state_dir: Path, *, create: bool = True, write: bool = True) -> None:
    """Make sure the gateway may use `state_dir`, creating it 0700 if it is missing (unless
    `create` is false: `status` and `state` only look; `write` false: `stop` of a running one).

    Refused (GatewayExit STORE_UNUSABLE, exit 3, one message naming the path and what to do):
    a path that is a file, a symlink (never followed: docs/state.md), a directory owned by
    another user, or one this user cannot write to; also a directory that cannot be created
    (when only looking: one under a folder this user cannot write to).
    """
    try:
        st = os.lstat(state_dir)
    except FileNotFoundError:
        if create:
            _make_dirs(state_dir)
        elif write:  # only looking (`--check-only`, `restart`'s validation, `status`): could it be made?
            above = next(p for p in state_dir.parents if os.path.lexists(p))
            if not os.access(above, os.W_OK | os.X_OK):
                why = f"cannot be created ({above} is not writable by you); create it yourself or pass another --state-dir"
                raise _unusable(state_dir, why) from None
        return
    except OSError as exc:
        raise _unusable(state_dir, f"cannot be examined ({exc.strerror}); choose another --state-dir") from None
    if stat.S_ISLNK(st.st_mode):
        raise _unusable(
            state_dir,
            f"is a symlink (to {os.readlink(state_dir)}), which the gateway never follows; "
            "pass the real directory as --state-dir",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _unusable(state_dir, "is not a directory; move that file away or pass another --state-dir")
    if st.st_uid != os.getuid():
        raise _unusable(
            state_dir,
            f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()}); use a directory you own, or chown it",
        )
    if write and not os.access(state_dir, os.W_OK | os.X_OK):
        raise _unusable(
            state_dir,
            f"is not writable by you (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 700 {state_dir}` or pass another --state-dir",
        )


def _make_dirs(path: Path) -> None:
    missing = []
    for p in [path, *path.parents]:
        if os.path.lexists(p):
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile (another gateway starting): checked below
        except OSError as exc:
            raise _unusable(
                path, f"cannot be created ({exc.strerror} at {p}); create it yourself or pass another --state-dir"
            ) from None
        os.chmod(p, DIR_MODE)  # mkdir's mode is masked by the umask; 0700 whatever it is
    if missing:
        check_state_dir(path)


def _unusable(path: Path, why: str) -> GatewayExit:
    return GatewayExit(STORE_UNUSABLE, f"state dir {path} {why}")


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
        check_state_dir(state_dir)
        fd = _open_private(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise already_running(state_dir, (read_info(state_dir) or {}).get("pid", "unknown")) from None
        self = cls(state_dir, fd)
        self.update(pid=os.getpid(), started_at=time.time(), state_dir=str(state_dir), ready=False)
        return self

    def update(self, **info: Any) -> None:
        """Merge `info` into the pid file (write to a temp file, then rename over it); a
        `launch` is also kept as the state dir's last launch."""
        self.info.update(info)
        _write_json(self.state_dir / PID_NAME, self.info)
        if "launch" in info:
            _write_json(self.state_dir / LAST_LAUNCH_NAME, info["launch"])

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


def already_running(state_dir: Path, pid: object) -> GatewayExit:
    """The refusal of a second gateway on `state_dir` (exit 4), naming the running one's pid and
    the commands that stop or restart it."""
    return GatewayExit(
        IN_USE,
        f"a gateway is already running on {state_dir} (pid {pid}); stop it with "
        f"`chatstate stop --state-dir {state_dir}` or restart it with `chatstate restart --state-dir {state_dir}`, "
        "or give this one another --state-dir",
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def last_launch(state_dir: Path) -> dict[str, Any] | None:
    """The `launch` of the last gateway started on `state_dir`, or None (never, or unreadable)."""
    try:
        record = json.loads((state_dir / LAST_LAUNCH_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _open_private(path: Path, flags: int) -> int:
    """Open (creating) a gateway file 0600: never through a symlink, and re-moded if it existed
    looser (the state dir's files can hold tokens)."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise _unusable(
            path.parent, f"has an unusable {path.name} ({exc.strerror}); remove that file if no gateway runs there"
        ) from None
    os.fchmod(fd, FILE_MODE)
    return fd


def read_info(state_dir: Path) -> dict[str, Any] | None:
    """The pid file's contents, or None when there is none (or it is unreadable)."""
    try:
        info = json.loads((state_dir / PID_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


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


UNSTOPPED = "ended without stopping (killed or crashed?); its stored state is kept and nothing needs cleaning up"


def ended_unstopped(state_dir: Path) -> int | None:
    """The pid of the last gateway on `state_dir` when it ended without stopping (SIGKILL, a
    crash: only a clean exit removes the pid file), else None. Only meaningful while none runs;
    the lock, not this file, says whether one does, so nothing needs cleaning up after it."""
    pid = (read_info(state_dir) or {}).get("pid")
    return pid if isinstance(pid, int) else None


def not_running(state_dir: Path) -> str:
    """What `stop` says when no gateway runs on `state_dir`, naming one that was killed."""
    last = ended_unstopped(state_dir)
    return f"not running; the last gateway (pid {last}) {UNSTOPPED}" if last else "not running"


def running_info(state_dir: Path) -> dict[str, Any] | None:
    """The pid file of the running gateway, or None when none runs (a stale file is ignored).
    A pid file deleted or clobbered under a running gateway still gives its pid (`lock_holder`)."""
    if not is_running(state_dir):
        return None
    return read_info(state_dir) or {"pid": lock_holder(state_dir)}


def lock_holder(state_dir: Path) -> int | None:
    """The pid holding the state dir's lock, from the kernel's table (/proc/locks, Linux), or None."""
    try:
        st = os.stat(state_dir / LOCK_NAME)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    lock = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"  # how the table names a file
    held = [int(f[4]) for f in map(str.split, table.splitlines()) if f[1:2] == ["FLOCK"] and f[5:6] == [lock]]
    return held[0] if held else None
