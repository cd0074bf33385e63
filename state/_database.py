"""Whole-database chores the gateway (the core, not a plugin) runs: check, sweep, checkpoint,
probe, as methods of `Database`, and the same as one-call functions for scripts and the CLI.
Plugins never get these: a sweep touches every plugin's expired rows.

Why one object: a long-lived caller (the gateway) opens its database once and hands that one
object to whatever needs it (store broker, sweeper, probe, final checkpoint), instead of each of
them passing (path, url, settings) around and looking the backend up again on every call."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

from . import _files as files
from ._aio import AsyncKeyedStore, open_async_with
from ._backend import Backend, Limits, Mode
from ._entry import new_version, wall_clock_ms
from ._errors import StateStoreError
from ._open import join_store
from ._paths import resolve_path, shown_url
from ._registry import acquire_backend
from ._settings import MAX_VALUE_BYTES, StoreSettings
from ._sqlite_schema import check_existing
from ._store import Clock, KeyedStore

PROBE_PLUGIN = "core:probe"  # a core-owned pair: probe rows never land in a plugin's namespace
PROBE_NAMESPACE = "probe"


class Database:
    """One database (a SQLite file, or a Redis URL) for as long as its owner needs it.

    Creating one does no I/O; the backend is opened on first use (a failed open raises and is
    tried again by the next call) and held until `close`, so sweeps, probes and checkpoints
    reuse it instead of opening the database each time. Stores opened through it share its
    backend; each store still closes on its own, and the backend closes when the Database and
    the last of its stores are closed. Thread-safe; the methods block (call them off the loop,
    or use `open_async_keyed_store`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        settings: StoreSettings | None = None,
    ) -> None:
        self._path = path  # ignored when `url` is given, as the one-call functions always did
        self.url = url
        self.settings = settings or StoreSettings()
        # what probe reports as database_path: a URL's password is never part of it
        self.location = shown_url(url) if url is not None else str(resolve_path(path))
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._closed = False
        self.opens = 0  # how many times the backend was opened by this object (0 or 1 once it works)

    def __repr__(self) -> str:
        return f"<Database {self.location}>"

    @property
    def is_file(self) -> bool:
        """True for SQLite (a file and its directory to check), False for a server URL."""
        return self.url is None

    def backend(self) -> Backend:
        """The open backend, opened now if this is the first use. Raises as `open_keyed_store`."""
        with self._lock:
            if self._closed:
                raise StateStoreError("UNAVAILABLE", "open", "the database is closed", path=self.location)
            if self._backend is None:
                self._backend = acquire_backend(self._path, self.url, self.settings)
                self.opens += 1
            return self._backend

    def open_keyed_store(
        self,
        plugin_id: str,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None = None,
        overflow: str = "evict-oldest",
        max_value_bytes: int = MAX_VALUE_BYTES,
        clock: Clock | None = None,
        core: bool = False,
    ) -> KeyedStore:
        """`state.open_keyed_store` on this database; arguments and errors the same."""
        return join_store(
            self.backend,
            plugin_id,
            namespace,
            max_entries=max_entries,
            default_ttl_ms=default_ttl_ms,
            overflow=overflow,
            max_value_bytes=max_value_bytes,
            clock=clock,
            core=core,
        )

    async def open_async_keyed_store(
        self,
        plugin_id: str,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None = None,
        overflow: str = "evict-oldest",
        max_value_bytes: int = MAX_VALUE_BYTES,
        clock: Clock | None = None,
        core: bool = False,
    ) -> AsyncKeyedStore:
        """`state.open_async_keyed_store` on this database, opened off the loop."""
        return await open_async_with(
            self.open_keyed_store,
            plugin_id,
            namespace,
            {
                "max_entries": max_entries,
                "default_ttl_ms": default_ttl_ms,
                "overflow": overflow,
                "max_value_bytes": max_value_bytes,
                "clock": clock,
                "core": core,
            },
        )

    def sweep_expired(self, *, now_ms: int | None = None) -> int:
        """Delete expired rows of every plugin in batches of <= 1,024; returns how many went.

        Raises StateStoreError WRITE_FAILED / UNAVAILABLE (operation "sweep"), or the open's errors.
        """
        return self.backend().sweep(now_ms=wall_clock_ms() if now_ms is None else now_ms)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (for Redis: a PING)."""
        self.backend().checkpoint()

    def probe(self) -> dict[str, Any]:
        """Check the store end to end and say which step failed; never raises, never shows values.

        Returns {ok, database_path, steps: [{name, ok, code?, message?}]} for the steps state-dir,
        open, schema, write-read-delete (a temporary core row), checkpoint and permissions (a
        post-commit permission failure that writes survived: they succeed, the probe says so).
        On an open Database the "open" step checks the paths again and re-applies file modes, as
        opening a store on it does.
        """
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
            if self.is_file:
                step("state-dir", lambda: _check_dir(Path(self.location).parent))
            backend = step("open", self._reopen)
            step("schema", lambda: _check_schema(backend))
            step("write-read-delete", lambda: _round_trip(backend))
            step("checkpoint", backend.checkpoint)
            if self.is_file:  # file modes: SQLite only
                step("permissions", lambda: _check_fault(backend))
        except StateStoreError:
            pass
        return {"ok": all(s["ok"] for s in steps) and len(steps) >= 4, "database_path": self.location, "steps": steps}

    def _reopen(self) -> Backend:
        with self._lock:
            fresh = self._backend is None
        backend = self.backend()
        if not fresh:
            backend.reopened()  # what opening joins an open backend with (state/_registry.py)
        return backend

    def close(self) -> None:
        """Drop this object's hold on the backend (the last holder checkpoints and closes it);
        later calls raise UNAVAILABLE. Stores opened through it stay usable until closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.release()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        raise StateStoreError(
            "OPEN_FAILED", "open", f"cannot check the state path ({exc.strerror})", path=str(p)
        ) from None
    if st is not None and st.st_size > 0:
        check_existing(p)


def sweep_expired(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    settings: StoreSettings | None = None,
    now_ms: int | None = None,
) -> int:
    """`Database.sweep_expired` on a Database opened for this one call (scripts, the CLI)."""
    with Database(path, url=url, settings=settings) as database:
        return database.sweep_expired(now_ms=now_ms)


def checkpoint(
    path: str | os.PathLike[str] | None = None, *, url: str | None = None, settings: StoreSettings | None = None
) -> None:
    """`Database.checkpoint` on a Database opened for this one call (scripts, the CLI)."""
    with Database(path, url=url, settings=settings) as database:
        database.checkpoint()


def probe(
    path: str | os.PathLike[str] | None = None, *, url: str | None = None, settings: StoreSettings | None = None
) -> dict[str, Any]:
    """`Database.probe` on a Database opened for this one call (scripts, the CLI)."""
    with Database(path, url=url, settings=settings) as database:
        return database.probe()


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
        raise StateStoreError(
            "SCHEMA_UNSUPPORTED", "probe", f"schema version {version} was not initialised", path=backend.location
        )


def _round_trip(backend: Backend) -> None:
    key, now = f"probe-{uuid.uuid4().hex}", wall_clock_ms()
    backend.write(
        PROBE_PLUGIN,
        PROBE_NAMESPACE,
        key,
        '{"probe":true}',
        now_ms=now,
        expires_at=now + 60_000,
        limits=Limits(1_000, "evict-oldest"),
        mode=Mode.UPSERT,
        version=new_version(),
    )
    row = backend.read(PROBE_PLUGIN, PROBE_NAMESPACE, key, now_ms=now)
    if row is None or row.value != '{"probe":true}':
        raise StateStoreError(
            "READ_FAILED", "probe", "a row just written could not be read back", path=backend.location
        )
    if not backend.remove(PROBE_PLUGIN, PROBE_NAMESPACE, key, now_ms=now):
        raise StateStoreError("WRITE_FAILED", "probe", "a row just written could not be deleted", path=backend.location)
