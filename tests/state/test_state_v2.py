"""State core v2, on every backend: row versions, compare_and_set, delete_if, update,
lookup_many, count, paged entries, max_value_bytes, and the defects v1 had (each test here
fails on the v1 code)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import state_workers
from state_support import HA_BACKENDS, T0_MS, fresh_target, raw_redis

from chatstate.state import (
    MAX_BATCH_KEYS,
    Database,
    Entry,
    StateStoreError,
    StoreSettings,
    _files,
    open_async_keyed_store,
    open_keyed_store,
    probe,
)


@pytest.fixture(params=HA_BACKENDS)
def target(request: pytest.FixtureRequest, state_home: Path) -> dict[str, Any]:
    """v2 of the contract holds on every backend: SQLite, Redis, Valkey and a three-master cluster."""
    return fresh_target(request, state_home)


# -- versions, compare_and_set, delete_if -------------------------------------------------
def test_every_write_gives_the_row_a_new_version(make_store):
    store = make_store("p", "ns", max_entries=10)
    versions = []
    store.register("k", 1)
    versions.append(store.lookup_entry("k").version)
    store.register("k", 1)  # the same value still makes a new version
    versions.append(store.lookup_entry("k").version)
    assert store.compare_and_set("k", 2, version=versions[-1]) is True
    versions.append(store.lookup_entry("k").version)
    store.update("k", lambda v: v + 1)
    versions.append(store.lookup_entry("k").version)
    assert all(isinstance(v, int) and 0 < v < 2**63 for v in versions)
    assert len(set(versions)) == len(versions)
    assert store.entries()[0].version == versions[-1]
    assert store.lookup("k") == 3


def test_compare_and_set_applies_only_on_the_version_read(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    assert store.compare_and_set("k", 1, version=1) is False  # absent
    assert store.lookup("k") is None
    store.register("k", "a", ttl_ms=100)
    first = store.lookup_entry("k")
    store.register("k", "b", ttl_ms=100)
    assert store.compare_and_set("k", "stale", version=first.version) is False
    current = store.lookup_entry("k")
    clock.advance(10)
    assert store.compare_and_set("k", "c", version=current.version, ttl_ms=500) is True
    assert store.lookup_entry("k") == Entry("k", "c", T0_MS + 10, T0_MS + 510)  # created_at restarts
    assert store.compare_and_set("k", "again", version=current.version) is False  # used up


def test_compare_and_set_is_aba_safe_after_delete_and_recreate(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", "mine")
    mine = store.lookup_entry("k")
    store.delete("k")
    store.register("k", "mine")  # same key, same value: a different row
    assert store.compare_and_set("k", "x", version=mine.version) is False
    assert store.delete_if("k", version=mine.version) is False
    assert store.lookup("k") == "mine"


def test_compare_and_set_never_applies_to_an_expired_row(make_store, clock):
    store = make_store("p", "ns", max_entries=10)
    store.register("k", 1, ttl_ms=5)
    v = store.lookup_entry("k").version
    clock.advance(5)
    assert store.compare_and_set("k", 2, version=v) is False
    assert store.delete_if("k", version=v) is False
    assert store.lookup("k") is None


def test_delete_if_deletes_only_while_still_mine(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("lock", {"owner": "a"})
    mine = store.lookup_entry("lock").version
    store.register("lock", {"owner": "b"})  # someone else took it over
    assert store.delete_if("lock", version=mine) is False
    assert store.lookup("lock") == {"owner": "b"}
    theirs = store.lookup_entry("lock").version
    assert store.delete_if("lock", version=theirs) is True
    assert store.lookup("lock") is None
    assert store.delete_if("lock", version=theirs) is False


def test_compare_and_set_keeps_caps_and_validation(make_store, dump_rows):
    store = make_store("p", "ns", max_entries=1, overflow="reject-new")
    store.register("k", 1)
    v = store.lookup_entry("k").version
    before = dump_rows()
    for bad in ({"version": -1}, {"version": "1"}, {"version": True}):
        with pytest.raises(StateStoreError) as err:
            store.compare_and_set("k", 2, **bad)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "compare_and_set")
    with pytest.raises(StateStoreError) as err:
        store.compare_and_set("k", {1, 2}, version=v)
    assert err.value.code == "INVALID_INPUT"
    assert dump_rows() == before
    assert store.compare_and_set("k", 2, version=v) is True  # replacing in place never overflows


def test_update_claims_then_compare_and_sets(make_store):
    store = make_store("p", "ns", max_entries=10)
    calls: list[Any] = []

    def bump(v: Any) -> int:
        calls.append(v)
        return (v or 0) + 1

    assert store.update("n", bump) == 1
    assert store.update("n", bump) == 2
    assert calls == [None, 1]
    assert store.lookup("n") == 2


def test_update_retries_a_lost_race_then_gives_up_with_conflict(make_store):
    store = make_store("p", "ns", max_entries=10)
    store.register("n", 0)
    attempts: list[Any] = []

    def meddle(v: Any) -> int:  # another writer gets in between every read and write
        attempts.append(v)
        store.register("n", v + 100)
        return v + 1

    with pytest.raises(StateStoreError) as err:
        store.update("n", meddle, max_attempts=3)
    assert (err.value.code, err.value.operation) == ("CONFLICT", "update")
    assert attempts == [0, 100, 200]
    assert store.lookup("n") == 300


@pytest.mark.parametrize("present", [False, True])
def test_update_refuses_a_bad_value_or_ttl_as_update(make_store, present):
    """docs/state.md: `update` raises as `register`, under its own name (only what its lookup raises is `lookup`'s),
    whether its write would be the claim or the compare_and_set."""
    store = make_store("p", "ns", max_entries=10)
    if present:
        store.register("n", 1)
    for call, code in [
        (lambda: store.update("n", lambda v: {1, 2}), "INVALID_INPUT"),
        (lambda: store.update("n", lambda v: "x" * 70_000), "LIMIT_EXCEEDED"),
        (lambda: store.update("n", lambda v: 2, ttl_ms=0), "INVALID_INPUT"),
    ]:
        with pytest.raises(StateStoreError) as err:
            call()
        assert (err.value.code, err.value.operation) == (code, "update")
    assert store.lookup("n") == (1 if present else None)


def test_threads_counting_with_update_lose_no_increment(make_store):
    store = make_store("p", "ns", max_entries=10)
    threads, per_thread = 4, 50
    barrier = threading.Barrier(threads)

    def count() -> None:
        barrier.wait()
        for _ in range(per_thread):
            store.update("n", lambda v: (v or 0) + 1, max_attempts=1_000)

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert store.lookup("n") == threads * per_thread


def test_processes_counting_with_update_lose_no_increment(target):
    """compare-and-set is atomic across processes (SQLite) and gateways (Redis, Lua)."""
    processes, per_process = 4, 40
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=state_workers.count_up, args=(i, target, per_process, barrier, results))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    reports = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert [r["errors"] for r in reports] == [[]] * processes
    stored = sorted(v for r in reports for v in r["seen"])
    assert stored == list(range(1, processes * per_process + 1))  # every value written exactly once
    with open_keyed_store("cas", "counter", max_entries=10, **target) as store:
        assert store.lookup("n") == processes * per_process


# -- bulk and paged reads -------------------------------------------------------------------
def test_lookup_many_returns_live_rows_only(make_store, clock):
    store = make_store("p", "ns", max_entries=100)
    other = make_store("p", "other", max_entries=100)
    store.register("a", 1)
    store.register("b", {"x": [2]}, ttl_ms=5)
    store.register("k\x00z", "nul")
    other.register("c", "not mine")
    assert store.lookup_many(["a", " b ", "c", "missing", "a", "k\x00z"]) == {"a": 1, "b": {"x": [2]}, "k\x00z": "nul"}
    clock.advance(5)
    assert store.lookup_many(("a", "b")) == {"a": 1}
    assert store.lookup_many([]) == {}


def test_lookup_many_is_bounded(make_store):
    store = make_store("p", "ns", max_entries=10)
    assert store.lookup_many([f"k{i}" for i in range(MAX_BATCH_KEYS)]) == {}
    with pytest.raises(StateStoreError) as err:
        store.lookup_many([f"k{i}" for i in range(MAX_BATCH_KEYS + 1)])
    assert (err.value.code, err.value.operation) == ("LIMIT_EXCEEDED", "lookup_many")
    assert "1000" in str(err.value).replace(",", "")
    for bad in ("abc", None, [" "], [1]):
        with pytest.raises(StateStoreError) as err:
            store.lookup_many(bad)
        assert err.value.code == "INVALID_INPUT"


def test_count_is_live_rows_of_this_namespace(make_store, clock):
    store = make_store("p", "ns", max_entries=100)
    other = make_store("p", "other", max_entries=100)
    assert store.count() == 0
    for i in range(5):
        store.register(f"k{i}", i, ttl_ms=10 if i % 2 else None)
    other.register("x", 1)
    assert store.count() == 5
    clock.advance(10)
    assert store.count() == 3
    store.consume("k0")
    assert store.count() == 2


def test_entries_pages_in_order_with_a_stable_cursor(make_store, clock):
    store = make_store("p", "ns", max_entries=1_000)
    for i in range(10):
        store.register(f"k{i:02}", i)
        if i % 3 == 0:
            clock.advance(1)  # some rows share a created_at: the key breaks the tie
    everything = store.entries()
    pages, after = [], None
    while True:
        page = store.entries(limit=3, after=after)
        if not page:
            break
        pages.append(page)
        after = page[-1]
        if len(pages) == 2:  # writes while paging: a new row and a rewritten one go to the end
            clock.advance(1)
            store.register("new", "n")
            store.register("k00", "moved")
            store.delete("k05")
    seen = [e.key for page in pages for e in page]
    assert [len(p) for p in pages] == [3, 3, 3, 3]
    # Every row once, in order; the row rewritten while paging moved to the end and shows up
    # there again (its new created_at), next to the row written meanwhile; the deleted one had
    # already been read.
    assert seen == [e.key for e in everything] + ["k00", "new"]
    assert store.entries(limit=2) == store.entries()[:2]


def test_entries_cursor_after_a_deleted_row_still_works(make_store, clock):
    store = make_store("p", "ns", max_entries=100)
    for i in range(6):
        store.register(f"k{i}", i)
        clock.advance(1)
    first = store.entries(limit=2)
    store.delete(first[-1].key)
    assert [e.key for e in store.entries(limit=10, after=first[-1])] == ["k2", "k3", "k4", "k5"]


def test_entries_page_arguments_are_checked(make_store):
    store = make_store("p", "ns", max_entries=10)
    for kwargs in ({"limit": 0}, {"limit": 10_001}, {"limit": True}, {"after": "k1"}, {"after": 5}):
        with pytest.raises(StateStoreError) as err:
            store.entries(**kwargs)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "entries")


# -- max_value_bytes --------------------------------------------------------------------------
def test_max_value_bytes_is_per_store_up_to_1_mib(make_store):
    small = make_store("p", "small", max_entries=10)
    big = make_store("p", "big", max_entries=10, max_value_bytes=1_048_576)
    value = "é" * 400_000  # 800,002 bytes serialized
    with pytest.raises(StateStoreError) as err:
        small.register("k", value)
    assert err.value.code == "LIMIT_EXCEEDED" and "65536" in str(err.value)
    big.register("k", value)
    assert big.lookup("k") == value
    with pytest.raises(StateStoreError) as err:
        big.register("k2", "x" * 1_048_575)  # 1,048,577 bytes with its quotes
    assert err.value.code == "LIMIT_EXCEEDED" and "1048576" in str(err.value)


def test_max_value_bytes_is_checked_at_open_and_on_reopen(make_store):
    for bad in (0, 1_048_577, 2.5, True):
        with pytest.raises(StateStoreError) as err:
            make_store("p", "ns", max_entries=10, max_value_bytes=bad)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    make_store("p", "ns", max_entries=10, max_value_bytes=100_000)
    with pytest.raises(StateStoreError) as err:
        make_store("p", "ns", max_entries=10, max_value_bytes=200_000)
    assert err.value.code == "INVALID_INPUT" and "max_value_bytes=100000" in str(err.value)


# -- defect 3: the async twin captures the value at call time -------------------------------
async def test_async_write_stores_the_value_as_it_was_at_the_call(target):
    async with await open_async_keyed_store("p", "ns", max_entries=10, **target) as store:
        value: dict[str, Any] = {"n": 1, "items": [1, 2]}
        task = asyncio.create_task(store.register("k", value))
        value["n"] = 2
        value["items"].append(object())  # not JSON: v1 failed on the worker, mid-serialization
        claim = asyncio.create_task(store.register_if_absent("c", value["items"][:2]))
        value["items"].clear()
        await task
        assert await claim is True
        assert await store.lookup("k") == {"n": 1, "items": [1, 2]}
        assert await store.lookup("c") == [1, 2]
        entry = await store.lookup_entry("k")
        fresh = {"n": 3}
        cas = asyncio.create_task(store.compare_and_set("k", fresh, version=entry.version))
        fresh["n"] = 4
        assert await cas is True
        assert await store.lookup("k") == {"n": 3}


async def test_async_write_refuses_bad_input_at_the_call(target):
    async with await open_async_keyed_store("p", "ns", max_entries=10, **target) as store:
        with pytest.raises(StateStoreError) as err:
            store.register("k", {1, 2})  # raised by the call itself, before anything is scheduled
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "register")
        assert await store.update("n", lambda v: (v or 0) + 5) == 5
        assert await store.count() == 1
        assert await store.lookup_many(["n"]) == {"n": 5}
        v = (await store.lookup_entry("n")).version
        assert await store.delete_if("n", version=v) is True


# -- defect 4: consume keeps a row whose JSON is unreadable ---------------------------------
def corrupt(target: dict[str, Any], db_path: Path, plugin: str, namespace: str, key: str) -> None:
    if "url" in target:
        client = raw_redis(target["url"])
        try:
            (row,) = [k for k in client.scan_iter(match=f"*:n:{namespace}:r:{key}")]
            client.hset(row, "v", '{"SECRET-MARKER')
        finally:
            client.close()
        return
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE entries SET value = '{\"SECRET-MARKER' WHERE key = ?", (key,))
    conn.commit()
    conn.close()


def test_consume_of_unreadable_json_keeps_the_row(make_store, target, db_path):
    store = make_store("p", "ns", max_entries=10)
    store.register("bad", {"fine": True})
    corrupt(target, db_path, "p", "ns", "bad")
    for _ in range(2):
        with pytest.raises(StateStoreError) as err:
            store.consume("bad")
        assert (err.value.code, err.value.operation) == ("CORRUPT", "consume")
        assert "SECRET" not in str(err.value)
    assert store.count() == 1  # nothing lost: the operator can still inspect it
    assert store.delete("bad") is True  # and delete it on purpose


# -- defect 5: reopen check, reserved core ids ----------------------------------------------
def test_reopen_with_a_different_overflow_is_refused(make_store):
    make_store("p", "ns", max_entries=10)
    with pytest.raises(StateStoreError) as err:
        make_store("p", "ns", max_entries=10, overflow="reject-new")
    assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
    assert "overflow=evict-oldest" in str(err.value)


def test_core_plugin_ids_are_reserved_for_the_gateway(target):
    for plugin in ("core:approvals", "CORE:x", " core:probe "):
        with pytest.raises(StateStoreError) as err:
            open_keyed_store(plugin, "ns", max_entries=1, **target)
        assert (err.value.code, err.value.operation) == ("INVALID_INPUT", "open")
        assert "reserved" in str(err.value)
    for plugin in ("slack", "core:"):
        with pytest.raises(StateStoreError) as err:
            open_keyed_store(plugin, "ns", max_entries=1, core=True, **target)
        assert err.value.code == "INVALID_INPUT"
    with open_keyed_store("core:approvals", "pending", max_entries=1, core=True, **target) as store:
        store.register("k", 1)
        assert store.lookup("k") == 1


# -- defect 1: a post-commit permission failure never fails a committed write --------------
async def test_post_commit_permission_failure_keeps_the_write(sqlite_target, db_path, monkeypatch, caplog):
    from chatstate.gateway.health import StoreProbe

    store = open_keyed_store("p", "ns", max_entries=10, **sqlite_target)
    try:
        store.register("claimed", 1)
        real_fchmod = os.fchmod

        def refuse(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        os.chmod(db_path, 0o644)  # an outside chmod the next write must undo ...
        monkeypatch.setattr(_files.os, "fchmod", refuse)  # ... but cannot
        caplog.set_level(logging.WARNING, logger="chatstate.state")
        store.register("k", {"v": 1})  # v1: WRITE_FAILED, with the row committed
        assert store.register_if_absent("c", 2) is True  # v1: WRITE_FAILED, the claim orphaned
        assert store.consume("k") == {"v": 1}  # v1: WRITE_FAILED, the value lost to everyone
        assert store.delete("claimed") is True
        assert store.lookup("c") == 2 and store.lookup("k") is None
        failures = [r for r in caplog.records if r.getMessage() == "state_permissions_failed"]
        assert len(failures) == 1  # logged once, not once per write
        result = probe(sqlite_target["path"])
        assert result["ok"] is False
        (failed,) = [s for s in result["steps"] if not s["ok"]]
        assert (failed["name"], failed["code"]) == ("permissions", "WRITE_FAILED")
        with Database(db_path, settings=StoreSettings()) as database:
            health = await StoreProbe(database).result()
        assert health["ok"] is False and [s["name"] for s in health["failed"]] == ["permissions"]

        monkeypatch.setattr(_files.os, "fchmod", real_fchmod)
        store.register("again", 1)  # the next write re-applies the modes and clears the fault
        assert oct(db_path.stat().st_mode & 0o777) == "0o600"
        assert probe(sqlite_target["path"])["ok"] is True
    finally:
        store.close()
