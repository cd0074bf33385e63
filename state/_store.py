"""The sync store: validation, JSON and clocks, written once on top of any backend."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _validate as check
from ._backend import Backend, Limits, Row
from ._errors import StateStoreError
from ._settings import StoreSettings
from ._sqlite import SQLiteBackend

Clock = Callable[[], int]  # ms since epoch
_raw_decode = json.JSONDecoder().raw_decode


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Entry:
    """One live row as `entries()` and `lookup_entry()` return it."""

    key: str
    value: Any
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never


def state_dir(state_dir: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Path:
    """Resolve the state dir: the argument, else $CHATSTATE_HOME (from `env`, default the
    process environment), else ~/.chatstate. The one resolver: the gateway uses it too."""
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
    if p.is_dir():
        return database_path(p)
    return p


# -- operation counts of this process, for /healthz and the traffic benchmark ----------------
# Each thread counts in a dict of its own, so counting costs no lock per call (a lock and a
# Counter took ~0.25 us, 4% of a lookup): only the owning thread writes a table, and dict()
# copies one in a single step under the GIL.
_ops_lock = threading.Lock()
_ops_tables: list[dict[str, int]] = []
_ops_local = threading.local()


def op_counts() -> dict[str, int]:
    """How many store operations this process has started, by operation name."""
    with _ops_lock:
        tables = list(_ops_tables)
    total: Counter[str] = Counter()
    for table in tables:
        total.update(dict(table))
    return dict(total)


def _count_op(op: str) -> None:
    try:
        table: dict[str, int] = _ops_local.table
    except AttributeError:
        table = _ops_local.table = {}
        with _ops_lock:
            _ops_tables.append(table)
    table[op] = table.get(op, 0) + 1


# -- the process-wide tables: one backend per database, one settings pair per namespace -----
_lock = threading.Lock()
_backends: dict[tuple[int, str], Backend] = {}
_opened: dict[tuple[int, str, str, str], tuple[int, int | None, int]] = {}


def _acquire_backend(path: str | os.PathLike[str] | None, url: str | None, settings: StoreSettings) -> Backend:
    if url is not None:
        from ._url import backend_for_url

        ident = f"url:{url}"
        factory: Callable[[], Backend] = lambda: backend_for_url(url, settings)  # noqa: E731
    else:
        # abspath, not Path.absolute(): it also folds "x/../" so one file has one backend and
        # one reopen check, however the caller spelled the path.
        resolved = Path(os.path.abspath(resolve_path(path)))
        ident = str(resolved)
        factory = lambda: SQLiteBackend(resolved, settings)  # noqa: E731
    with _lock:
        backend = _backends.get((os.getpid(), ident))
        if backend is not None and not getattr(backend, "_closed", False):
            if getattr(backend, "settings", settings) != settings:
                raise StateStoreError(
                    "INVALID_INPUT", "open",
                    "this database is already open in this process with different settings",
                    path=backend.location,
                )
            backend.acquire()  # type: ignore[attr-defined]
            # The last user's release() takes no global lock, so it may have closed the backend
            # between the check above and acquire(): then start afresh instead of joining it.
            if not getattr(backend, "_closed", False):
                fix_permissions = getattr(backend, "fix_permissions", None)
                try:
                    if fix_permissions is not None:
                        fix_permissions("open")  # modes are re-applied on every open, not the first only
                except BaseException:
                    backend.release()
                    raise
                return backend
        backend = factory()
        _backends[(os.getpid(), ident)] = backend
        backend.acquire()  # type: ignore[attr-defined]
        return backend


class KeyedStore:
    """A keyed store bound to one (plugin_id, namespace); every call sees only that pair."""

    def __init__(
        self,
        backend: Backend,
        plugin_id: str,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None,
        overflow: str,
        clock: Clock,
    ) -> None:
        self._backend = backend
        self.plugin_id = plugin_id
        self.namespace = namespace
        self.max_entries = max_entries
        self.default_ttl_ms = default_ttl_ms
        self.overflow = overflow
        self._limits = Limits(max_entries, overflow)
        self._clock = clock
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def location(self) -> str:
        """The database path (or backend URL without credentials), for messages and probes."""
        return self._backend.location

    def __repr__(self) -> str:
        return f"<KeyedStore {self.plugin_id}/{self.namespace} at {self.location}>"

    def _now(self, op: str) -> int:
        """Every operation starts here exactly once: refuse a closed store, count, read the clock."""
        if self._closed:
            raise StateStoreError("UNAVAILABLE", op, "the store is closed", path=self.location)
        _count_op(op)
        return self._clock()

    def _expiry(self, now: int, ttl_ms: int | None, op: str) -> int | None:
        ttl = check.ttl_ms(ttl_ms, op)
        ttl = self.default_ttl_ms if ttl is None else ttl
        return None if ttl is None else now + ttl

    def _decode(self, row: Row, op: str) -> Any:
        text = row.value
        try:
            # Stored JSON is compact, so raw_decode skips json.loads' two whitespace regex
            # matches (a fifth of a lookup); anything else takes the strict path below.
            value, end = _raw_decode(text)
            if end == len(text):
                return value
        except ValueError:
            pass
        try:
            return json.loads(text)
        except ValueError:
            raise StateStoreError(
                "CORRUPT", op, f"stored JSON for a key of {len(row.key.encode())} bytes is unreadable",
                path=self.location,
            ) from None

    def _write(self, key: str, value: object, ttl_ms: int | None, *, if_absent: bool) -> bool:
        op = "register_if_absent" if if_absent else "register"
        key = check.key(key, op)
        text = check.serialize_value(value, op)
        now = self._now(op)
        return self._backend.write(
            self.plugin_id, self.namespace, key, text,
            now_ms=now, expires_at=self._expiry(now, ttl_ms, op), limits=self._limits, if_absent=if_absent,
        )

    # -- the contract ---------------------------------------------------------------------
    def register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> None:
        """Store `value` under `key` (upsert); created_at restarts, so the row becomes newest.

        TTL is `ttl_ms`, else the store's default_ttl_ms, else never. After the write, live rows
        over max_entries are evicted oldest first (never this key), or with overflow="reject-new"
        the write is refused. Raises StateStoreError: INVALID_INPUT (key/value/ttl shape),
        LIMIT_EXCEEDED (size, depth, full namespace with reject-new, per-plugin ceiling),
        WRITE_FAILED, CORRUPT, UNAVAILABLE.
        """
        self._write(key, value, ttl_ms, if_absent=False)

    def register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> bool:
        """Claim `key` atomically: True if written, False if a live row already holds it.

        An expired row counts as absent. Two processes claiming one key: exactly one gets True.
        Raises as `register`.
        """
        return self._write(key, value, ttl_ms, if_absent=True)

    def lookup(self, key: str) -> Any | None:
        """Return the live value under `key`, or None. Raises INVALID_INPUT, READ_FAILED, CORRUPT."""
        row = self._read(key)
        return None if row is None else self._decode(row, "lookup")

    def lookup_entry(self, key: str) -> Entry | None:
        """Return the live row under `key` with its created_at/expires_at, or None.

        Adapters use it to keep the stored expiry in their memory cache. Raises as `lookup`.
        """
        row = self._read(key)
        return None if row is None else Entry(row.key, self._decode(row, "lookup"), row.created_at, row.expires_at)

    def _read(self, key: str) -> Row | None:
        key = check.key(key, "lookup")
        return self._backend.read(self.plugin_id, self.namespace, key, now_ms=self._now("lookup"))

    def consume(self, key: str) -> Any | None:
        """Read and delete the live row under `key` in one atomic step; None if there was none.

        Of two callers racing on one key, exactly one gets the value. Raises INVALID_INPUT,
        WRITE_FAILED, CORRUPT (the row is gone, its JSON unreadable), UNAVAILABLE.
        """
        key = check.key(key, "consume")
        row = self._backend.take(self.plugin_id, self.namespace, key, now_ms=self._now("consume"))
        return None if row is None else self._decode(row, "consume")

    def delete(self, key: str) -> bool:
        """Delete the row under `key`; True if a live row was removed. Raises INVALID_INPUT, WRITE_FAILED."""
        key = check.key(key, "delete")
        return self._backend.remove(self.plugin_id, self.namespace, key, now_ms=self._now("delete"))

    def clear(self) -> int:
        """Delete every row of this namespace; returns how many were live. Raises WRITE_FAILED."""
        return self._backend.remove_all(self.plugin_id, self.namespace, now_ms=self._now("clear"))

    def entries(self) -> list[Entry]:
        """Return live rows ordered by (created_at, key). Raises READ_FAILED, CORRUPT."""
        rows = self._backend.scan(self.plugin_id, self.namespace, now_ms=self._now("entries"))
        return [Entry(r.key, self._decode(r, "entries"), r.created_at, r.expires_at) for r in rows]

    def close(self) -> None:
        """Release the store; the last store on a database checkpoints the WAL and closes it.

        Safe while other threads still call this or other stores: they finish first, later calls
        raise UNAVAILABLE. Closing twice is a no-op.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        ident = (os.getpid(), self._backend.location, self.plugin_id, self.namespace)
        with _lock:
            held = _opened.get(ident)
            if held is not None:
                if held[2] <= 1:
                    del _opened[ident]
                else:
                    _opened[ident] = (held[0], held[1], held[2] - 1)
        self._backend.release()

    def __enter__(self) -> KeyedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_keyed_store(
    plugin_id: str,
    namespace: str,
    *,
    max_entries: int,
    default_ttl_ms: int | None = None,
    overflow: str = "evict-oldest",
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    settings: StoreSettings | None = None,
    clock: Clock | None = None,
) -> KeyedStore:
    """Open a store bound to (plugin_id, namespace) on SQLite (default) or `url` (redis://).

    `path` is the database file (an existing directory is taken as a state dir); default
    `<state_dir>/plugin-state/state.sqlite`. Reopening a pair in this process with a different
    max_entries or default_ttl_ms is INVALID_INPUT. Raises StateStoreError: INVALID_INPUT,
    LIMIT_EXCEEDED (namespace/plugin id size), OPEN_FAILED, CORRUPT, SCHEMA_UNSUPPORTED,
    UNAVAILABLE.
    """
    plugin_id = check.plugin_id(plugin_id)
    namespace = check.namespace(namespace)
    max_entries = check.max_entries(max_entries)
    default_ttl_ms = check.ttl_ms(default_ttl_ms, "open", "default_ttl_ms")
    overflow = check.overflow(overflow)
    if path is not None and url is not None:
        raise StateStoreError("INVALID_INPUT", "open", "give either path or url, not both")
    backend = _acquire_backend(path, url, settings or StoreSettings())
    ident = (os.getpid(), backend.location, plugin_id, namespace)
    with _lock:
        held = _opened.get(ident)
        if held is not None and held[:2] != (max_entries, default_ttl_ms):
            conflict = held
        else:
            conflict = None
            _opened[ident] = (max_entries, default_ttl_ms, (held[2] if held else 0) + 1)
    if conflict is not None:
        backend.release()
        raise StateStoreError(
            "INVALID_INPUT", "open",
            f"{plugin_id}/{namespace} is already open with max_entries={conflict[0]}, "
            f"default_ttl_ms={conflict[1]}; reopen it with the same settings",
            path=backend.location,
        )
    return KeyedStore(
        backend, plugin_id, namespace, max_entries=max_entries, default_ttl_ms=default_ttl_ms,
        overflow=overflow, clock=clock or wall_clock_ms,
    )
