"""The async twin: same names and signatures, disk work off the loop, close() under load."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
import traceback

import pytest
from state_support import STORE_METHODS, T0_MS

from chatstate.state import (
    AsyncKeyedStore,
    Entry,
    KeyedStore,
    StateStoreError,
    _spec,
    open_async_keyed_store,
    open_keyed_store,
)

BACKEND_CALLS = ("write", "read", "read_many", "take", "remove", "remove_all", "scan", "count", "close")


def public_methods(cls: type) -> dict[str, object]:
    return {name: fn for name, fn in vars(cls).items() if not name.startswith("_") and inspect.isfunction(fn)}


# Writes that capture their value at call time: plain methods returning an
# awaitable, since an `async def` body runs only once the coroutine is first scheduled.
CAPTURING = {"register", "register_if_absent", "compare_and_set"}
STAGING = {
    "stage_register",
    "stage_register_if_absent",
    "stage_compare_and_set",
    "stage_delete",
}  # plain calls on both: no I/O until commit_staged


def test_async_twin_has_the_same_methods_and_signatures():
    sync, aio = public_methods(KeyedStore), public_methods(AsyncKeyedStore)
    assert set(sync) == set(aio)
    assert STORE_METHODS <= set(sync)
    for name in sync:
        got, want = inspect.signature(aio[name]), inspect.signature(sync[name])
        if name in CAPTURING:
            assert got.return_annotation == f"Awaitable[{want.return_annotation}]", name
            got = got.replace(return_annotation=want.return_annotation)
        elif name in STAGING:
            assert not inspect.iscoroutinefunction(aio[name]), name
        else:
            assert inspect.iscoroutinefunction(aio[name]), name
        assert got == want, name
    opened = {open_async_keyed_store: "AsyncKeyedStore", open_keyed_store: "KeyedStore"}
    assert [inspect.signature(fn).replace(return_annotation=returns) for fn, returns in opened.items()] == [
        inspect.signature(open_keyed_store).replace(return_annotation=returns) for returns in opened.values()
    ]
    assert inspect.iscoroutinefunction(open_async_keyed_store)


async def test_async_methods_behave_like_the_sync_ones(target, clock):
    async with await open_async_keyed_store("p", "ns", max_entries=2, clock=clock, **target) as store:
        assert await store.register("a", {"x": 1}, ttl_ms=100) is None
        assert await store.register_if_absent("a", 2) is False
        assert await store.register_if_absent("b", [2]) is True
        assert await store.lookup("a") == {"x": 1}
        assert await store.lookup_entry("a") == Entry("a", {"x": 1}, T0_MS, T0_MS + 100)
        assert [e.key for e in await store.entries()] == ["a", "b"]
        clock.advance(1)
        await store.register("c", 3)  # evicts "a", the oldest
        assert await store.lookup("a") is None
        assert await store.consume("b") == [2]
        assert await store.delete("c") is True
        assert await store.delete("c") is False
        await store.register("d", 4)
        assert await store.clear() == 1
        with pytest.raises(StateStoreError) as err:
            await store.register(" ", 1)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "register")
    with pytest.raises(StateStoreError) as err:
        await store.lookup("a")
    assert err.value.code == "UNAVAILABLE"


async def test_a_write_checks_its_key_and_serializes_its_value_once_on_the_way_to_the_backend(
    sqlite_target, monkeypatch
):
    """Sync and async alike: the async twin's checks at the call are the only ones."""
    counted = {"key": 0, "value": 0}

    def count(name: str, real):
        def counting(*args, **kwargs):
            counted[name] += 1
            return real(*args, **kwargs)

        return counting

    monkeypatch.setattr(_spec, "_sized", count("key", _spec._sized))
    monkeypatch.setattr(_spec, "_encode", count("value", _spec._encode))
    async with await open_async_keyed_store("p", "ns", max_entries=10, **sqlite_target) as store:
        for write in (store.register, store.register_if_absent, store.sync.register, store.sync.register_if_absent):
            counted.update(key=0, value=0)
            result = write(" k ", {"n": 1})
            if inspect.isawaitable(result):
                await result
            assert counted == {"key": 1, "value": 1}, write


async def test_disk_work_runs_off_the_event_loop_thread(target, monkeypatch):
    loop_thread = threading.get_ident()
    seen: dict[str, set[int]] = {}

    def spy(owner: type, name: str) -> None:
        real = getattr(owner, name)

        def recorded(*args, **kwargs):
            seen.setdefault(f"{owner.__name__}.{name}", set()).add(threading.get_ident())
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)

    for name in public_methods(KeyedStore):
        spy(KeyedStore, name)
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda *a, **k: (seen.setdefault("connect", set()).add(threading.get_ident()), real_connect(*a, **k))[1],
    )

    store = await open_async_keyed_store("p", "ns", max_entries=10, **target)
    for name in BACKEND_CALLS:
        spy(type(store.sync._backend), name)
    await store.register("k", 1)
    await store.register_if_absent("c", 1)
    await store.lookup("k")
    entry = await store.lookup_entry("k")
    await store.compare_and_set("k", 2, version=entry.version)
    await store.update("u", lambda v: (v or 0) + 1)
    await store.lookup_many(["k", "c"])
    await store.count()
    await store.entries(limit=1)
    await store.consume("k")
    await store.delete_if("u", version=1)
    await store.delete("c")
    await store.clear()
    await store.close()
    on_the_caller = STAGING  # no I/O: checked and serialized on the caller
    expected = {f"KeyedStore.{n}" for n in public_methods(KeyedStore) if n not in on_the_caller}
    expected |= {f"{type(store.sync._backend).__name__}.{n}" for n in BACKEND_CALLS}
    assert expected <= set(seen)
    assert all(loop_thread not in threads for threads in seen.values()), seen


def test_close_while_other_threads_write_is_safe(target):
    a = open_keyed_store("p", "a", max_entries=100_000, **target)
    b = open_keyed_store("p", "b", max_entries=100_000, **target)
    acked: dict[str, list[str]] = {"a": [], "b": []}
    failures: list[BaseException] = []
    progressed = {name: [threading.Event() for _ in range(2)] for name in ("a", "b")}
    later = {name: [threading.Event() for _ in range(2)] for name in ("a", "b")}
    closed = {"a": threading.Event(), "b": threading.Event()}

    def writer(name: str, store: KeyedStore, n: int) -> None:
        i = 0
        while True:
            key = f"{n}-{i}"
            try:
                store.register(key, i)
            except StateStoreError as exc:
                if exc.code != "UNAVAILABLE" or not closed[name].is_set():
                    failures.append(exc)
                return
            except BaseException as exc:  # anything else is a bug
                failures.append(exc)
                traceback.print_exc()
                return
            acked[name].append(key)
            i += 1
            if i == 20:
                progressed[name][n].set()
            if closed["a"].is_set() and i % 20 == 0:
                later[name][n].set()

    threads = [
        threading.Thread(target=writer, args=(name, store, n)) for name, store in (("a", a), ("b", b)) for n in range(2)
    ]
    for t in threads:
        t.start()
    for event in progressed["a"] + progressed["b"]:
        assert event.wait(60)
    closed["a"].set()
    a.close()  # "b" still holds the database: its writers must not notice
    for event in later["b"]:
        assert event.wait(60)
    closed["b"].set()
    b.close()  # the last user: in-flight writes finish, later ones get UNAVAILABLE
    for t in threads:
        t.join(60)
    assert not failures
    with (
        open_keyed_store("p", "a", max_entries=100_000, **target) as a2,
        open_keyed_store("p", "b", max_entries=100_000, **target) as b2,
    ):
        assert {e.key for e in a2.entries()} == set(acked["a"])
        assert {e.key for e in b2.entries()} == set(acked["b"])


async def test_async_close_while_tasks_write(target):
    store = await open_async_keyed_store("p", "ns", max_entries=100_000, **target)
    keeper = await open_async_keyed_store("p", "keeper", max_entries=10, **target)

    async def write(i: int) -> str | None:
        try:
            await store.register(f"k{i}", i)
        except StateStoreError as exc:
            assert exc.code == "UNAVAILABLE"
            return None
        return f"k{i}"

    tasks = [asyncio.create_task(write(i)) for i in range(200)]
    await tasks[10]
    await store.close()
    acked = {k for k in await asyncio.gather(*tasks) if k is not None}
    assert len(acked) >= 11
    await keeper.register("still", "open")
    await keeper.close()
    async with await open_async_keyed_store("p", "ns", max_entries=100_000, **target) as again:
        assert {e.key for e in await again.entries()} == acked


async def test_cancelling_an_open_does_not_leak_the_store(target, monkeypatch):
    """A task cancelled while its open runs on a worker (SIGTERM during startup) must not leave
    an unreachable store holding the pair's settings and the database open."""
    import chatstate.state._database as aio  # the async open runs the sync one off the loop

    real_open, real_close = aio.open_keyed_store, KeyedStore.close
    started, proceed, closed = threading.Event(), threading.Event(), threading.Event()

    def slow_open(*args, **kwargs):
        started.set()
        assert proceed.wait(30)
        return real_open(*args, **kwargs)

    def noted_close(self):
        real_close(self)
        closed.set()

    monkeypatch.setattr(aio, "open_keyed_store", slow_open)
    monkeypatch.setattr(KeyedStore, "close", noted_close)
    opening = asyncio.create_task(open_async_keyed_store("p", "ns", max_entries=5, **target))
    assert await asyncio.to_thread(started.wait, 30)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    proceed.set()
    assert await asyncio.to_thread(closed.wait, 30)  # the orphaned store was closed
    again = open_keyed_store("p", "ns", max_entries=9, **target)  # new settings: the pair is free
    again.close()
