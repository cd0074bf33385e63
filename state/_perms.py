"""Keep the state directory 0700 and the database files 0600 after every write, cheaply.

The contract re-applies permissions on every write path, so an outside `chmod 644` never
sticks past the next write. Four chmod calls per write cost ~6 us of a ~35 us write (measured
by benchmarks/store_bench.py on the reference machine). On Linux an inotify watch on the
directory says whether any attribute there changed since the last check: a zero-timeout poll
(~0.3 us) when nothing did, and a stat + chmod of whatever is wrong when something did. Events
are queued by the kernel inside the outside chmod call itself, so a write that starts after
that call returns always sees them. Our own chmods queue events too; the next check then finds
every mode right and chmods nothing, so the watch goes quiet again.

Without inotify (not Linux, the per-user instance limit reached) or once the watch is gone
(directory moved or deleted), every check chmods every target, as the contract spells it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import stat
import struct
import sys
import threading
from pathlib import Path

IN_ATTRIB = 0x0000_0004  # chmod/chown of the directory or a file in it
IN_MOVED_TO = 0x0000_0080  # a file renamed into place: a new inode at one of our paths
IN_CREATE = 0x0000_0100  # -wal / -shm appearing
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_Q_OVERFLOW = 0x0000_4000  # events were dropped: check everything
IN_IGNORED = 0x0000_8000  # the watch is gone
WATCH_MASK = IN_ATTRIB | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
WATCH_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (+ name)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


class PermissionGuard:
    """Make `targets` (path, mode) right; `ensure()` is called after every write."""

    def __init__(self, directory: Path, targets: tuple[tuple[Path, int], ...]) -> None:
        self._directory = directory
        self._targets = targets
        self._lock = threading.Lock()
        self._inotify = -1
        self._poll: select.poll | None = None
        self._watch()
        self._dirty = True  # whatever happened before the watch existed: check once

    def _watch(self) -> None:
        if _LIBC is None:
            return
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return  # e.g. EMFILE at fs.inotify.max_user_instances: fall back to always-chmod
        if _LIBC.inotify_add_watch(fd, os.fsencode(self._directory), WATCH_MASK) < 0:
            os.close(fd)
            return
        self._inotify = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def ensure(self) -> None:
        """Leave every target at its mode. Raises OSError if a chmod fails."""
        with self._lock:
            if self._poll is None:
                self._apply(always=True)
            elif self._dirty or self._poll.poll(0):
                self._drain()
                self._dirty = True  # until _apply succeeds: a failed chmod is retried next time
                self._apply(always=self._poll is None)
                self._dirty = False
            # else: nothing changed since the last check, which left every mode right

    def _drain(self) -> None:
        try:
            data = os.read(self._inotify, 65_536)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            _, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size + length
            if mask & WATCH_LOST:
                self._unwatch()
                return

    def _apply(self, *, always: bool) -> None:
        for path, mode in self._targets:
            try:
                if always or stat.S_IMODE(os.stat(path).st_mode) != mode:
                    os.chmod(path, mode)
            except FileNotFoundError:
                pass  # -wal/-shm not created yet; their creation is an event too

    def _unwatch(self) -> None:
        if self._inotify >= 0:
            os.close(self._inotify)
        self._inotify, self._poll = -1, None

    def close(self) -> None:
        with self._lock:
            self._unwatch()
