"""The async twin: the sync store's public methods, awaitable, each run on a worker thread.

Threads, not an async driver: SQLite has no async API and the sync store holds every rule, so running it off the loop
(Starlette's `run_in_threadpool` idea) writes the rules once and the loop never waits on disk I/O or the write lock.
Reads (and Redis calls) run on a small pool; a SQLite database's writes run on its writer thread, which group-commits
what queued up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._spec import Batch, Json, Key, check_key, check_keys, check_ttl, check_version, serialize_value
from ._store import KeyedStore, StagedWrite, commit_staged, staged_list

T = TypeVar("T")
P = ParamSpec("P")
WORKER_THREADS = 4  # reads (and Redis writes) overlap on these
WORKER_PREFIX = "chatstate-state"
DELIVER_BATCH = 16  # at most this many finished calls wait for one wake-up of their loop
IDLE_EXIT_S = 10.0  # a worker thread with nothing to do for this long exits (restarted on demand)

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
_Done = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


class Workers:
    """Up to `threads` threads on one queue, each result set on its caller's future.

    Not `run_in_executor`: its concurrent Future and one loop wake-up per call cost more than the SQLite write. A worker
    runs what queued up (up to DELIVER_BATCH) and wakes the loop once; a writer (`batch`: the backend's `run_batch`)
    takes one loop turn's calls and commits them together (group commit). Idle threads exit after IDLE_EXIT_S; a forked
    child starts afresh."""

    def __init__(self, threads: int, prefix: str, batch: Batch | None = None) -> None:
        self._max_threads, self._prefix, self._batch = threads, prefix, batch
        self._start()

    def _start(self) -> None:
        self._pid, self._lock, self._threads = os.getpid(), threading.Lock(), 0
        self._calls: queue.SimpleQueue[list[_Call]] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Call]] = {}  # a writer's, this loop turn

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run `fn` on these threads; the future is answered on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        call = (loop, future, functools.partial(fn, *args, **kwargs))
        if self._pid != os.getpid():  # the parent's threads do not exist in a forked child
            self._start()
        if self._batch is None:
            self._put([call])
        elif loop in self._pending:
            self._pending[loop].append(call)
        else:  # one wake-up of the writer per loop turn, not per call (each could fight the loop for the GIL)
            self._pending[loop] = [call]
            loop.call_soon(lambda: self._put(self._pending.pop(loop)))
        return future

    def _put(self, calls: list[_Call]) -> None:
        """Queue `calls`, then start a thread if fewer than the maximum run: a retiring thread
        (`_next`) either sees the new calls or is replaced."""
        self._calls.put(calls)
        with self._lock:
            if self._threads >= self._max_threads:
                return
            self._threads += 1
            name = f"{self._prefix}_{self._threads - 1}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _next(self) -> list[_Call] | None:
        """The next queued item, or None once the queue stayed empty for IDLE_EXIT_S."""
        while True:
            try:
                return self._calls.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():  # puts happen before _put takes this lock
                        self._threads -= 1
                        return None

    def _work(self) -> None:
        # Daemon threads: a write cut by interpreter exit is rolled back, and nobody awaits it.
        while (batch := self._next()) is not None:
            while len(batch) < DELIVER_BATCH:
                try:
                    batch += self._calls.get_nowait()
                except queue.Empty:
                    break
            outcomes = None
            if self._batch is not None and len(batch) > 1:
                with contextlib.suppress(Exception):  # e.g. the database closed: each call, run alone, says so
                    outcomes = self._batch([c[2] for c in batch])
            _post_all(batch, outcomes or [outcome(c[2]) for c in batch])
            del batch, outcomes  # hold no caller's objects while idle


def outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """`call()`'s (result, None), or (None, what it raised): handed to that call's caller, never swallowed."""
    try:
        return call(), None
    except BaseException as exc:
        return None, exc


def _post_all(calls: list[_Call], outcomes: Sequence[tuple[Any, BaseException | None]]) -> None:
    """Wake each caller's loop once for all of its results."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
    for (loop, future, _), (result, exc) in zip(calls, outcomes):
        by_loop.setdefault(loop, []).append((future, result, exc))
    for loop, done in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, done)


def _deliver(done: list[_Done]) -> None:
    for future, result, exc in done:
        if future.done():  # the awaiting task was cancelled; the call still ran
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


POOL = Workers(WORKER_THREADS, WORKER_PREFIX)


async def _wait(future: asyncio.Future[T]) -> T:
    return await future


def _awaitable(
    method: Callable[Concatenate[KeyedStore, P], T], *, writes: bool = False
) -> Callable[Concatenate[AsyncKeyedStore, P], Coroutine[Any, Any, T]]:
    """The sync store's method of `method`'s name, run once awaited: on the writer (`writes`) or the read pool."""

    @functools.wraps(method)
    async def run(self: AsyncKeyedStore, *args: P.args, **kwargs: P.kwargs) -> T:
        return await (self._writer if writes else POOL).submit(getattr(self.sync, method.__name__), *args, **kwargs)

    return run


def _plain(method: Callable[Concatenate[KeyedStore, P], T]) -> Callable[Concatenate[AsyncKeyedStore, P], T]:
    """The sync store's method of `method`'s name, called as it is (no I/O)."""
    return functools.wraps(method)(lambda self, *args, **kwargs: getattr(self.sync, method.__name__)(*args, **kwargs))


class AsyncKeyedStore(contextlib.AbstractAsyncContextManager["AsyncKeyedStore"]):
    """Awaitable twin of `KeyedStore`: each method runs the sync one of the same name on a worker; stage_* are plain
    calls (no I/O), and register & co. check and serialize at the call, so a task stores `v` as it was then."""

    def __init__(self, store: KeyedStore) -> None:
        self.sync = store
        self.plugin_id, self.namespace = store.plugin_id, store.namespace
        self.max_entries, self.default_ttl_ms = store.max_entries, store.default_ttl_ms
        self.overflow, self.max_value_bytes = store.overflow, store.max_value_bytes
        self.location = store.location
        self._writer = store.database.writer  # this database's writer thread, or the pool (Redis)

    def __repr__(self) -> str:
        return f"<AsyncKeyedStore {self.plugin_id}/{self.namespace} at {self.location}>"

    def _write(self, op: str, key: str, value: Any, ttl_ms: int | None, **version: int) -> Awaitable[Any]:
        """Check and serialize at the call, then run the sync write of `op` on the writer (which takes both as is)."""
        check_ttl(ttl_ms, op)
        key, text = Key(check_key(key, op)), Json(serialize_value(value, op, self.max_value_bytes))
        return _wait(self._writer.submit(getattr(self.sync, op), key, text, ttl_ms=ttl_ms, **version))

    def register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> Awaitable[None]:
        return self._write("register", key, value, ttl_ms)

    def register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> Awaitable[bool]:
        return self._write("register_if_absent", key, value, ttl_ms)

    def compare_and_set(self, key: str, value: Any, *, version: int, ttl_ms: int | None = None) -> Awaitable[bool]:
        return self._write("compare_and_set", key, value, ttl_ms, version=check_version(version, "compare_and_set"))

    # The sync method of the same name (its signature and docstring), run once awaited: reads on the
    # pool, writes on the writer (`update`'s `fn` too: keep it pure and quick); stage_* are plain calls.
    update = _awaitable(KeyedStore.update, writes=True)
    stage_register = _plain(KeyedStore.stage_register)
    stage_register_if_absent = _plain(KeyedStore.stage_register_if_absent)
    stage_compare_and_set = _plain(KeyedStore.stage_compare_and_set)
    stage_delete = _plain(KeyedStore.stage_delete)
    lookup = _awaitable(KeyedStore.lookup)
    lookup_entry = _awaitable(KeyedStore.lookup_entry)

    async def lookup_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return await POOL.submit(self.sync.lookup_many, check_keys(keys, "lookup_many"))  # copied at the call

    consume = _awaitable(KeyedStore.consume, writes=True)
    delete = _awaitable(KeyedStore.delete, writes=True)
    delete_if = _awaitable(KeyedStore.delete_if, writes=True)
    clear = _awaitable(KeyedStore.clear, writes=True)
    count = _awaitable(KeyedStore.count)
    entries = _awaitable(KeyedStore.entries)
    close = _awaitable(KeyedStore.close)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def commit_staged_async(writes: Iterable[StagedWrite]) -> bool:
    """`commit_staged` off the loop, on the database's writer or the pool (Redis); the list is taken at this call."""
    staged = staged_list(writes)
    return await staged[0].store.database.writer.submit(commit_staged, staged) if staged else True


async def open_async(opener: Callable[[], KeyedStore]) -> AsyncKeyedStore:
    """Run a sync `opener` off the loop and wrap its store (both async opens use this)."""
    opening = POOL.submit(opener)
    try:
        store = await asyncio.shield(opening)
    except asyncio.CancelledError:
        # Cancelled while opening (SIGTERM at startup): close the ownerless store it returns.
        opening.add_done_callback(_close_abandoned)
        raise
    return AsyncKeyedStore(store)


def _close_abandoned(opening: asyncio.Future[KeyedStore]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        POOL.submit(opening.result().close)  # a done callback runs on the loop
