"""Opening a `KeyedStore`: by path or URL (`open_keyed_store`), or on the backend a `Database`
holds (`join_store`); both check the arguments first and the pair's settings last."""

from __future__ import annotations

import os
from collections.abc import Callable

from . import _pairs as pairs
from . import _validate as check
from ._backend import Backend
from ._entry import Clock, wall_clock_ms
from ._errors import StateStoreError
from ._registry import acquire_backend
from ._settings import MAX_VALUE_BYTES, StoreSettings
from ._store import KeyedStore

__all__ = ["join_store", "open_keyed_store"]


def open_keyed_store(
    plugin_id: str,
    namespace: str,
    *,
    max_entries: int,
    default_ttl_ms: int | None = None,
    overflow: str = "evict-oldest",
    max_value_bytes: int = MAX_VALUE_BYTES,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    settings: StoreSettings | None = None,
    clock: Clock | None = None,
    core: bool = False,
) -> KeyedStore:
    """Open a store bound to (plugin_id, namespace) on SQLite (default) or `url` (redis://).

    `path` is the database file (an existing directory is taken as a state dir); default
    `<state_dir>/plugin-state/state.sqlite`. `max_value_bytes` (default 65,536, at most
    1,048,576) bounds one serialized value. Plugin ids starting `core:` are the gateway's and
    need `core=True`. Reopening a pair in this process with a different max_entries,
    default_ttl_ms, overflow or max_value_bytes is INVALID_INPUT. Raises StateStoreError:
    INVALID_INPUT, LIMIT_EXCEEDED (namespace/plugin id size), OPEN_FAILED, CORRUPT,
    SCHEMA_UNSUPPORTED, UNAVAILABLE.
    """
    if path is not None and url is not None:
        raise StateStoreError("INVALID_INPUT", "open", "give either path or url, not both")
    wanted = _checked(plugin_id, namespace, max_entries, default_ttl_ms, overflow, max_value_bytes, core)
    return _bind(acquire_backend(path, url, settings or StoreSettings()), wanted, clock)


def join_store(
    backend: Callable[[], Backend],
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
    """`open_keyed_store` on the backend a `Database` holds (`backend()` returns it, opening it
    on first use): the store takes its own user of it, as a store opened by path does."""
    wanted = _checked(plugin_id, namespace, max_entries, default_ttl_ms, overflow, max_value_bytes, core)
    shared = backend()
    shared.acquire()
    try:
        if shared.closed:
            raise StateStoreError("UNAVAILABLE", "open", "the database is closed", path=shared.location)
        shared.reopened()  # modes are re-applied on every open, as state/_registry.py does
    except BaseException:
        shared.release()
        raise
    return _bind(shared, wanted, clock)


_Wanted = tuple[str, str, int, "int | None", str, int]


def _checked(
    plugin_id: str,
    namespace: str,
    max_entries: int,
    default_ttl_ms: int | None,
    overflow: str,
    max_value_bytes: int,
    core: bool,
) -> _Wanted:
    return (
        check.plugin_id(plugin_id, core=core),
        check.namespace(namespace),
        check.max_entries(max_entries),
        check.ttl_ms(default_ttl_ms, "open", "default_ttl_ms"),
        check.overflow(overflow),
        check.max_value_bytes(max_value_bytes),
    )


def _bind(backend: Backend, checked: _Wanted, clock: Clock | None) -> KeyedStore:
    """Record the pair's settings (one set per pair per database) and make the store; on a
    conflict, give back the backend user the caller took and raise INVALID_INPUT."""
    plugin_id, namespace, max_entries, default_ttl_ms, overflow, max_value_bytes = checked
    conflict = pairs.hold(
        backend.location, plugin_id, namespace, (max_entries, default_ttl_ms, overflow, max_value_bytes)
    )
    if conflict is not None:
        backend.release()
        raise StateStoreError(
            "INVALID_INPUT",
            "open",
            f"{plugin_id}/{namespace} is already open with max_entries={conflict[0]}, "
            f"default_ttl_ms={conflict[1]}, overflow={conflict[2]}, max_value_bytes={conflict[3]}; "
            "reopen it with the same settings",
            path=backend.location,
        )
    return KeyedStore(
        backend,
        plugin_id,
        namespace,
        max_entries=max_entries,
        default_ttl_ms=default_ttl_ms,
        overflow=overflow,
        clock=clock or wall_clock_ms,
        max_value_bytes=max_value_bytes,
    )
