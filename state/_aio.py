"""The async twin: the same methods, awaitable, each run on the store's worker threads.

Why threads and not an async driver: SQLite has no async API, and the sync core already holds
every rule; running it off the loop (Starlette's `run_in_threadpool` idea) means the rules are
written once and the event loop never waits on disk I/O or on SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from . import _validate as check
from ._errors import StateStoreError
from ._open import open_keyed_store
from ._settings import MAX_VALUE_BYTES, UPDATE_ATTEMPTS, StoreSettings
from ._store import Clock, Entry, KeyedStore, StagedWrite, _staged_list, commit_staged

T = TypeVar("T")
WORKER_THREADS = 4  # reads (and Redis writes) overlap on these
WORKER_PREFIX = "chatstate-state"
DELIVER_BATCH = 16  # at most this many finished calls wait for one wake-up of their loop
IDLE_EXIT_S = 10.0  # a worker thread with nothing to do for this long exits (restarted on demand)

_Call = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], Any
]  # loop, future, fn, args, kwargs, and the backend whose `run_batch` may group it, or None
_Done = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any, "BaseException | None"]


class _Workers:
    """`threads` worker threads fed by one queue; each result goes straight to its caller's future.

    Not `loop.run_in_executor`: that wraps every call in a concurrent Future (a Condition and
    its lock), chains it to an asyncio Future and wakes the loop once per call, which cost more
    than the SQLite write it carried (issue 4). Here a worker that finds more calls queued runs
    them before it wakes the loop (up to DELIVER_BATCH), and hands over all their results in one
    `call_soon_threadsafe`. A `batching` worker (a database's writer) runs the writes that
    queued up while it was busy in one transaction (`run_batch`: group commit), and answers
    none of them before that COMMIT. Daemon threads: an unacknowledged write cut by interpreter
    exit is rolled back by SQLite, and no caller can be waiting for it any more.
    """

    def __init__(self, threads: int, prefix: str, *, batching: bool = False) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()  # calls; lists of them if batching
        self._lock = threading.Lock()
        self._max_threads = threads
        self._prefix = prefix
        self._batching = batching
        self._threads = 0
        self._pending: dict[asyncio.AbstractEventLoop, list[_Call]] = {}  # batching: this loop turn's

    def submit(self, call: _Call) -> None:
        if not self._batching:
            self._calls.put(call)
            self._ensure_thread()
            return
        # A writer gets the calls of one event-loop turn together, at the end of that turn:
        # one wake-up of its thread instead of one per call (each wake-up on a busy machine
        # could preempt the loop and then fight it for the GIL), and bigger group commits.
        loop = call[0]
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append(call)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._calls.put(self._pending.pop(loop))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        """Start a thread if fewer than the maximum run; called after every put, so a thread
        that is retiring (see `_next`) either sees the new call or is replaced."""
        with self._lock:
            if self._threads >= self._max_threads:
                return
            self._threads += 1
            name = f"{self._prefix}_{self._threads - 1}"
        target = self._work_batches if self._batching else self._work
        threading.Thread(target=target, name=name, daemon=True).start()

    def _next(self) -> Any:
        """The next queued item, or None once the queue stayed empty for IDLE_EXIT_S: idle
        threads retire, so a process that used many databases (a test suite) keeps none."""
        while True:
            try:
                return self._calls.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():  # puts happen before _ensure_thread takes this lock
                        self._threads -= 1
                        return None

    def _work(self) -> None:
        calls = self._calls
        while (first := self._next()) is not None:
            done = [_run(first)]
            while len(done) < DELIVER_BATCH:
                try:
                    done.append(_run(calls.get_nowait()))
                except queue.Empty:
                    break
            _post_all(done)
            del done, first  # hold no caller's objects while idle

    def _work_batches(self) -> None:
        calls = self._calls
        while (batch := self._next()) is not None:
            while len(batch) < DELIVER_BATCH:
                try:
                    batch.extend(calls.get_nowait())
                except queue.Empty:
                    break
            backend = batch[0][5]
            outcomes = None
            if len(batch) > 1 and backend is not None and all(c[5] is backend for c in batch):
                try:
                    outcomes = backend.run_batch([lambda c=c: c[2](*c[3], **c[4]) for c in batch])
                except Exception:  # e.g. the store closed: run alone, each call says so itself
                    outcomes = None
            if outcomes is None:
                _post_all([_run(c) for c in batch])
            else:
                _post_all([(c[0], c[1], result, exc) for c, (result, exc) in zip(batch, outcomes)])
            del batch, backend, outcomes


def _run(call: _Call) -> _Done:
    loop, future, fn, args, kwargs, _ = call
    try:
        return (loop, future, fn(*args, **kwargs), None)
    except BaseException as exc:  # delivered to the awaiting coroutine, not lost here
        return (loop, future, None, exc)


def _post_all(done: list[_Done]) -> None:
    loop = done[0][0]
    if all(d[0] is loop for d in done):
        _post(loop, done)
    else:
        for d in done:
            _post(d[0], [d])


def _post(loop: asyncio.AbstractEventLoop, done: list[Any]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, done)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


def _deliver(done: list[tuple[Any, asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for _, future, result, exc in done:
        if future.done():  # the awaiting task was cancelled; the call still ran
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


_pool = _Workers(WORKER_THREADS, WORKER_PREFIX)
# One writer thread per SQLite database: SQLite takes one writer at a time anyway, and more
# threads only queued on its lock, each waking and fighting the event loop for the GIL
# (issue 4 measured ~35% more CPU per write with four).
_writers: dict[str, _Workers] = {}
_writers_lock = threading.Lock()


def _writer_for(store: KeyedStore) -> _Workers:
    backend = store.backend
    if not backend.one_writer:
        return _pool
    with _writers_lock:
        lane = _writers.get(backend.location)
        if lane is None:
            lane = _writers[backend.location] = _Workers(1, f"{WORKER_PREFIX}-writer", batching=True)
        return lane


def forget_workers() -> None:
    """In a forked child (state/_registry.py's fork rule): the parent's threads do not exist here."""
    global _pool, _writers_lock
    _pool = _Workers(WORKER_THREADS, WORKER_PREFIX)
    _writers.clear()
    _writers_lock = threading.Lock()


def _submit(
    workers: _Workers, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], backend: Any = None
) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    workers.submit((loop, future, fn, args, kwargs, backend))
    return future


async def run_off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call on the store's worker threads and await it."""
    return await _submit(_pool, fn, args, kwargs)


class AsyncKeyedStore:
    """Awaitable twin of `KeyedStore`; same method names, parameters and errors.

    The writes (register, register_if_absent, compare_and_set) are plain methods that return
    an awaitable: they validate and serialize the value on the calling thread, at call time,
    and hand only the JSON text to the worker, so `create_task(store.register(k, v))` stores
    `v` as it was at that call, whatever the caller does to it next (issue 17, defect 3).
    An invalid key or value raises at the call itself.
    """

    def __init__(self, store: KeyedStore) -> None:
        self.sync = store
        self.plugin_id = store.plugin_id
        self.namespace = store.namespace
        self.max_entries = store.max_entries
        self.default_ttl_ms = store.default_ttl_ms
        self.overflow = store.overflow
        self.max_value_bytes = store.max_value_bytes
        self._writer = _writer_for(store)
        # Writes to one SQLite database that queue up together share one transaction.
        self._batch_key = store.backend if store.backend.one_writer else None

    @property
    def location(self) -> str:
        return self.sync.location

    def __repr__(self) -> str:
        return f"<AsyncKeyedStore {self.plugin_id}/{self.namespace} at {self.location}>"

    def _write(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Coroutine[Any, Any, T]:
        return _await(self._writer, fn, args, self._batch_key)

    def register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> Awaitable[None]:
        """See `KeyedStore.register`; the value is captured (serialized) at this call."""
        return self._write(self.sync._write_register, self.sync._prepare("register", key, value, ttl_ms))

    def register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> Awaitable[bool]:
        """See `KeyedStore.register_if_absent`; the value is captured at this call."""
        return self._write(self.sync._write_claim, self.sync._prepare("register_if_absent", key, value, ttl_ms))

    def compare_and_set(self, key: str, value: Any, *, version: int, ttl_ms: int | None = None) -> Awaitable[bool]:
        """See `KeyedStore.compare_and_set`; the value is captured at this call."""
        expect = check.version(version, "compare_and_set")
        prepared = self.sync._prepare("compare_and_set", key, value, ttl_ms)
        return self._write(self.sync._write_match, (*prepared, expect))

    async def update(
        self, key: str, fn: Callable[[Any], Any], *, ttl_ms: int | None = None, max_attempts: int = UPDATE_ATTEMPTS
    ) -> Any:
        """See `KeyedStore.update`; `fn` runs on the caller (the event loop), never on a worker."""
        attempts = check.attempts(max_attempts, "update")
        for _ in range(attempts):
            entry = await self.lookup_entry(key)
            new = fn(None if entry is None else entry.value)
            prepared = self.sync._prepare("update", key, new, ttl_ms)
            if entry is None:
                applied = await self._write(self.sync._write_claim, prepared)
            else:
                applied = await self._write(self.sync._write_match, (*prepared, entry.version))
            if applied:
                return new
        raise StateStoreError(
            "CONFLICT", "update", f"the row kept changing: gave up after {attempts} attempts", path=self.location
        )

    def stage_register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> StagedWrite:
        """See `KeyedStore.stage_register`: a plain call (no I/O); commit with `commit_staged_async`."""
        return self.sync.stage_register(key, value, ttl_ms=ttl_ms)

    def stage_delete(self, key: str) -> StagedWrite:
        """See `KeyedStore.stage_delete`: a plain call (no I/O)."""
        return self.sync.stage_delete(key)

    async def lookup(self, key: str) -> Any | None:
        """See `KeyedStore.lookup`."""
        return await run_off_loop(self.sync.lookup, key)

    async def lookup_entry(self, key: str) -> Entry | None:
        """See `KeyedStore.lookup_entry`."""
        return await run_off_loop(self.sync.lookup_entry, key)

    async def lookup_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """See `KeyedStore.lookup_many`; `keys` is copied at this call."""
        return await run_off_loop(self.sync.lookup_many, check.keys(keys, "lookup_many"))

    async def consume(self, key: str) -> Any | None:
        """See `KeyedStore.consume`."""
        return await _submit(self._writer, self.sync.consume, (key,), {}, self._batch_key)

    async def delete(self, key: str) -> bool:
        """See `KeyedStore.delete`."""
        return await _submit(self._writer, self.sync.delete, (key,), {}, self._batch_key)

    async def delete_if(self, key: str, *, version: int) -> bool:
        """See `KeyedStore.delete_if`."""
        return await _submit(self._writer, self.sync.delete_if, (key,), {"version": version}, self._batch_key)

    async def clear(self) -> int:
        """See `KeyedStore.clear`."""
        return await _submit(self._writer, self.sync.clear, (), {}, self._batch_key)

    async def count(self) -> int:
        """See `KeyedStore.count`."""
        return await run_off_loop(self.sync.count)

    async def entries(self, *, limit: int | None = None, after: Entry | None = None) -> list[Entry]:
        """See `KeyedStore.entries`."""
        return await run_off_loop(self.sync.entries, limit=limit, after=after)

    async def close(self) -> None:
        """See `KeyedStore.close`."""
        return await run_off_loop(self.sync.close)

    async def __aenter__(self) -> AsyncKeyedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def commit_staged_async(writes: Iterable[StagedWrite]) -> None:
    """`commit_staged` off the loop: on the database's writer thread (SQLite; it may share a
    group commit with other writes, and is rerun alone if anything in that group fails), on the
    worker threads for Redis. The list is taken at this call. Raises as `commit_staged`."""
    staged = _staged_list(writes)
    if not staged:
        return
    store = staged[0].store
    await _submit(_writer_for(store), commit_staged, (staged,), {}, store.backend if store.backend.one_writer else None)


async def _await(workers: _Workers, fn: Callable[..., T], args: tuple[Any, ...], backend: Any) -> T:
    return await _submit(workers, fn, args, {}, backend)


async def open_async_keyed_store(
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
) -> AsyncKeyedStore:
    """Open an `AsyncKeyedStore` off the loop; arguments and errors as `open_keyed_store`."""
    return await open_async_with(
        open_keyed_store,
        plugin_id,
        namespace,
        {
            "max_entries": max_entries,
            "default_ttl_ms": default_ttl_ms,
            "overflow": overflow,
            "max_value_bytes": max_value_bytes,
            "path": path,
            "url": url,
            "settings": settings,
            "clock": clock,
            "core": core,
        },
    )


async def open_async_with(
    opener: Callable[..., KeyedStore], plugin_id: str, namespace: str, kwargs: dict[str, Any]
) -> AsyncKeyedStore:
    """Run a sync `opener` (open_keyed_store, Database.open_keyed_store) off the loop and wrap
    its store; used by both async opens."""
    opening = _submit(_pool, opener, (plugin_id, namespace), kwargs)
    try:
        store = await asyncio.shield(opening)
    except asyncio.CancelledError:
        # Cancelled while the open ran (SIGTERM during startup): the store it returns has no
        # owner, so close it, or it would hold the pair's settings and the database open.
        opening.add_done_callback(_close_abandoned)
        raise
    return AsyncKeyedStore(store)


def _close_abandoned(opening: asyncio.Future[KeyedStore]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _submit(_pool, opening.result().close, (), {})
