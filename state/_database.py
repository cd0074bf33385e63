"""Whole-database chores the gateway (the core, not a plugin) runs: check, sweep, checkpoint,
probe. Plugins never get these: a sweep touches every plugin's expired rows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _files as files
from ._backend import Backend, Limits, Mode
from ._errors import StateStoreError
from ._settings import StoreSettings
from ._sqlite_schema import check_existing
from ._paths import resolve_path
from ._registry import acquire_backend
from ._entry import new_version, wall_clock_ms

PROBE_PLUGIN = "core:probe"  # a core-owned pair: probe rows never land in a plugin's namespace
PROBE_NAMESPACE = "probe"


@contextmanager
def _database(path: str | os.PathLike[str] | None, url: str | None, settings: StoreSettings | None) -> Iterator[Backend]:
    backend = acquire_backend(path, url, settings or StoreSettings())
    try:
        yield backend
    finally:
        backend.release()


def check_database(path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a state file that is not SQLite, is damaged, or has a newer schema, read-only.

    A missing or empty file is fine (it will be created). Raises StateStoreError OPEN_FAILED,
    CORRUPT or SCHEMA_UNSUPPORTED with the path; the file is never written.
    """
    p = resolve_path(path)
    try:
        for d in files.guarded_dirs(p):
            files.check_dir(d)
        if p.is_dir() and not p.is_symlink():
            raise StateStoreError("OPEN_FAILED", "open", "the state path is a directory", path=str(p))
        st = files.check_file(p)
    except OSError as exc:
        raise StateStoreError("OPEN_FAILED", "open", f"cannot check the state path ({exc.strerror})",
                              path=str(p)) from None
    if st is not None and st.st_size > 0:
        check_existing(p)


def sweep_expired(
    path: str | os.PathLike[str] | None = None, *, url: str | None = None,
    settings: StoreSettings | None = None, now_ms: int | None = None,
) -> int:
    """Delete expired rows of every plugin in batches of <= 1,024; returns how many went.

    Raises StateStoreError WRITE_FAILED / UNAVAILABLE (operation "sweep").
    """
    with _database(path, url, settings) as backend:
        return backend.sweep(now_ms=wall_clock_ms() if now_ms is None else now_ms)


def checkpoint(path: str | os.PathLike[str] | None = None, *, url: str | None = None,
               settings: StoreSettings | None = None) -> None:
    """Fold the WAL back into the database file (a no-op for Redis)."""
    with _database(path, url, settings) as backend:
        backend.checkpoint()


def probe(path: str | os.PathLike[str] | None = None, *, url: str | None = None,
          settings: StoreSettings | None = None) -> dict[str, Any]:
    """Check the store end to end and say which step failed; never raises, never shows values.

    Returns {ok, database_path, steps: [{name, ok, code?, message?}]} for the steps state-dir,
    open, schema, write-read-delete (a temporary core row), checkpoint and permissions (a
    post-commit permission failure that writes survived: they succeed, the probe says so).
    """
    location = url or str(resolve_path(path))
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Any) -> Any:
        try:
            result = fn()
        except StateStoreError as exc:
            steps.append({"name": name, "ok": False, "code": str(exc.code), "message": str(exc)})
            raise
        except OSError as exc:
            steps.append({"name": name, "ok": False, "code": "OPEN_FAILED", "message": exc.strerror or str(exc)})
            raise StateStoreError("OPEN_FAILED", "probe", str(exc.strerror)) from None
        steps.append({"name": name, "ok": True})
        return result

    try:
        if url is None:
            step("state-dir", lambda: _check_dir(Path(location).parent))
        backend = step("open", lambda: acquire_backend(path, url, settings or StoreSettings()))
        try:
            step("schema", lambda: _check_schema(backend))
            step("write-read-delete", lambda: _round_trip(backend))
            step("checkpoint", backend.checkpoint)
            if url is None:  # file modes: SQLite only
                step("permissions", lambda: _check_fault(backend))
        finally:
            backend.release()
    except StateStoreError:
        pass
    return {"ok": all(s["ok"] for s in steps) and len(steps) >= 4, "database_path": location, "steps": steps}


def _check_fault(backend: Backend) -> None:
    fault = backend.fault()
    if fault is not None:
        raise StateStoreError("WRITE_FAILED", "probe", fault, path=backend.location)


def _check_dir(directory: Path) -> None:
    if not files.check_dir(directory, "probe"):
        files.make_dirs(directory, "probe")
    for d in files.guarded_dirs(directory / "state.sqlite"):
        files.check_dir(d, "probe")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateStoreError("OPEN_FAILED", "probe", "the state directory is not writable", path=str(directory))


def _check_schema(backend: Backend) -> None:
    version = backend.schema_version()
    if version < 1:
        raise StateStoreError("SCHEMA_UNSUPPORTED", "probe", f"schema version {version} was not initialised",
                              path=backend.location)


def _round_trip(backend: Backend) -> None:
    key, now = f"probe-{uuid.uuid4().hex}", wall_clock_ms()
    backend.write(PROBE_PLUGIN, PROBE_NAMESPACE, key, '{"probe":true}', now_ms=now, expires_at=now + 60_000,
                  limits=Limits(1_000, "evict-oldest"), mode=Mode.UPSERT, version=new_version())
    row = backend.read(PROBE_PLUGIN, PROBE_NAMESPACE, key, now_ms=now)
    if row is None or row.value != '{"probe":true}':
        raise StateStoreError("READ_FAILED", "probe", "a row just written could not be read back",
                              path=backend.location)
    if not backend.remove(PROBE_PLUGIN, PROBE_NAMESPACE, key, now_ms=now):
        raise StateStoreError("WRITE_FAILED", "probe", "a row just written could not be deleted",
                              path=backend.location)
