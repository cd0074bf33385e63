"""The process-wide table of open backends: one per database (file or URL) per process, shared
by every store on it, so one file has one set of connections and one reopen check."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ._backend import Backend
from ._errors import StateStoreError
from ._paths import resolve_path
from ._settings import StoreSettings
from ._sqlite import SQLiteBackend

# One backend per database per process (keyed by pid too: a forked child opens its own).
_lock = threading.Lock()
_backends: dict[tuple[int, str], Backend] = {}


def acquire_backend(path: str | os.PathLike[str] | None, url: str | None, settings: StoreSettings) -> Backend:
    if url is not None:
        ident = f"url:{url}"
        factory: Callable[[], Backend] = lambda: _redis_backend(url, settings)  # noqa: E731
    else:
        # abspath, not Path.absolute(): it also folds "x/../" so one file has one backend and
        # one reopen check, however the caller spelled the path.
        resolved = Path(os.path.abspath(resolve_path(path)))
        ident = str(resolved)
        factory = lambda: SQLiteBackend(resolved, settings)  # noqa: E731
    with _lock:
        backend = _backends.get((os.getpid(), ident))
        if backend is not None and not backend.closed:
            if backend.settings != settings:
                raise StateStoreError(
                    "INVALID_INPUT",
                    "open",
                    "this database is already open in this process with different settings",
                    path=backend.location,
                )
            backend.acquire()
            # The last user's release() takes no global lock, so it may have closed the backend
            # between the check above and acquire(): then start afresh instead of joining it.
            if not backend.closed:
                try:
                    backend.reopened()  # modes are re-applied on every open, not the first only
                except BaseException:
                    backend.release()
                    raise
                return backend
        backend = factory()
        _backends[(os.getpid(), ident)] = backend
        backend.acquire()
        return backend


def _redis_backend(url: str, settings: StoreSettings) -> Backend:
    """A URL selects the Redis backend (`redis://`, `rediss://`, `unix://`); nothing else."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisBackend  # imported lazily: SQLite users never load redis-py

        return RedisBackend(url, settings)
    raise StateStoreError("INVALID_INPUT", "open", f"unsupported state URL scheme {scheme!r}; use redis://")


def _start_afresh_in_child() -> None:
    """The one fork rule: a forked child starts with no open database. Every store it inherited
    is closed in it (its calls raise UNAVAILABLE) without touching the parent's connections,
    locks, watches or threads, and the child opens its own (this table is keyed by pid)."""
    for backend in list(_backends.values()):
        backend.abandon()
    _backends.clear()
    aio = sys.modules.get(f"{__package__}._aio")
    if aio is not None:
        aio.forget_workers()


os.register_at_fork(after_in_child=_start_afresh_in_child)
