"""The async twin: the same methods, awaitable, each run on the store's worker threads.

Why threads and not an async driver: SQLite has no async API, and the sync core already holds
every rule; running it off the loop (Starlette's `run_in_threadpool` idea) means the rules are
written once and the event loop never waits on disk I/O or on SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ._settings import StoreSettings
from ._store import Clock, Entry, KeyedStore, open_keyed_store

T = TypeVar("T")
WORKER_THREADS = 4  # SQLite allows one writer at a time; a few threads let reads overlap it
WORKER_PREFIX = "chatstate-state"

_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():  # a forked child needs its own threads
            _pool = (os.getpid(), ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix=WORKER_PREFIX))
        return _pool[1]


async def run_off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call on the store's worker threads and await it."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args, **kwargs))


class AsyncKeyedStore:
    """Awaitable twin of `KeyedStore`; same method names, signatures and errors."""

    def __init__(self, store: KeyedStore) -> None:
        self.sync = store
        self.plugin_id = store.plugin_id
        self.namespace = store.namespace
        self.max_entries = store.max_entries
        self.default_ttl_ms = store.default_ttl_ms
        self.overflow = store.overflow

    @property
    def location(self) -> str:
        return self.sync.location

    def __repr__(self) -> str:
        return f"<AsyncKeyedStore {self.plugin_id}/{self.namespace} at {self.location}>"

    async def register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> None:
        """See `KeyedStore.register`."""
        return await run_off_loop(self.sync.register, key, value, ttl_ms=ttl_ms)

    async def register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> bool:
        """See `KeyedStore.register_if_absent`."""
        return await run_off_loop(self.sync.register_if_absent, key, value, ttl_ms=ttl_ms)

    async def lookup(self, key: str) -> Any | None:
        """See `KeyedStore.lookup`."""
        return await run_off_loop(self.sync.lookup, key)

    async def lookup_entry(self, key: str) -> Entry | None:
        """See `KeyedStore.lookup_entry`."""
        return await run_off_loop(self.sync.lookup_entry, key)

    async def consume(self, key: str) -> Any | None:
        """See `KeyedStore.consume`."""
        return await run_off_loop(self.sync.consume, key)

    async def delete(self, key: str) -> bool:
        """See `KeyedStore.delete`."""
        return await run_off_loop(self.sync.delete, key)

    async def clear(self) -> int:
        """See `KeyedStore.clear`."""
        return await run_off_loop(self.sync.clear)

    async def entries(self) -> list[Entry]:
        """See `KeyedStore.entries`."""
        return await run_off_loop(self.sync.entries)

    async def close(self) -> None:
        """See `KeyedStore.close`."""
        return await run_off_loop(self.sync.close)

    async def __aenter__(self) -> AsyncKeyedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_async_keyed_store(
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
) -> AsyncKeyedStore:
    """Open an `AsyncKeyedStore` off the loop; arguments and errors as `open_keyed_store`."""
    store = await run_off_loop(
        open_keyed_store, plugin_id, namespace, max_entries=max_entries,
        default_ttl_ms=default_ttl_ms, overflow=overflow, path=path, url=url,
        settings=settings, clock=clock,
    )
    return AsyncKeyedStore(store)
