"""gateway/adapter_state.py, the pattern every adapter uses, over a real SQLite file: read-through
keeps the stored expiry, legacy is memory only, and a failing store degrades, shows it, keeps
the writes, and replays them when the store is back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import FlakyStore

from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.state import StateStoreError, open_async_keyed_store

SPEC = StateSpec("test.things", ttl_ms=60_000, max_entries=3)


class Runtime:
    plugin_id = "adapter"
    log = logging.LoggerAdapter(logging.getLogger("test.adapter"))

    def __init__(self, path: Path, clock: Any = None) -> None:
        self.path, self.clock = path, clock
        self.stores: list[Any] = []

    async def open_keyed_store(self, namespace: str, **kw: Any) -> FlakyStore:
        store = FlakyStore(await open_async_keyed_store("adapter", namespace, path=self.path, clock=self.clock, **kw))
        self.stores.append(store)
        return store


def rows(path: Path) -> dict[str, tuple[str, int, int | None]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {
            k: (v, c, e)
            for k, v, c, e in con.execute(
                "SELECT key, value, created_at, expires_at FROM entries WHERE plugin_id = 'adapter'"
            )
        }


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[AdapterState, Runtime]]:
    runtime = Runtime(tmp_path / "state.sqlite")
    state = AdapterState(SPEC, legacy=False)
    await state.open(runtime)
    yield state, runtime
    await state.close()


async def test_record_is_on_disk_when_it_returns(opened: tuple[AdapterState, Runtime]) -> None:
    state, runtime = opened
    await state.record("a", {"n": 1})
    assert rows(runtime.path)["a"][0] == '{"n":1}'


async def test_read_through_keeps_the_stored_expiry(tmp_path: Path) -> None:
    now = [1_000_000]
    runtime = Runtime(tmp_path / "state.sqlite", clock=lambda: now[0])
    writer = AdapterState(SPEC, legacy=False, clock=lambda: now[0])
    await writer.open(runtime)
    await writer.record("a", 1)
    await writer.close()
    now[0] += 50_000  # a "restart" 50 s later: a fresh process state, the same file
    reader = AdapterState(SPEC, legacy=False, clock=lambda: now[0])
    await reader.open(runtime)
    entry = await reader.get_entry("a")
    assert entry is not None and entry.expires_at == 1_000_000 + 60_000  # not now + TTL
    now[0] += 10_001
    assert await reader.get("a") is None  # the memory copy expires when the stored row does
    await reader.close()


async def test_legacy_mode_is_memory_only(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "state.sqlite")
    state = AdapterState(SPEC, legacy=True)
    await state.open(runtime)
    await state.record("a", 1)
    assert await state.get("a") == 1 and runtime.stores == []
    assert state.health()["mode"] == "legacy"
    for key in "bcd":
        await state.record(key, 1)
    assert await state.get("a") is None  # cap 3: the oldest went


async def test_store_failure_degrades_then_replays_on_recovery(opened: tuple[AdapterState, Runtime]) -> None:
    state, runtime = opened
    flaky = runtime.stores[0]
    await state.record("kept", 1)
    await state.record("doomed", 2)
    flaky.down = True

    await state.record("during", 3)  # does not raise: the bot keeps working from memory
    assert await state.get("during") == 3
    assert await state.take("doomed") == 2
    health = state.health()
    assert (health["mode"], health["last_error"], health["pending_writes"]) == ("degraded", "UNAVAILABLE", 2)
    assert set(rows(runtime.path)) == {"kept", "doomed"}  # nothing reached the file yet

    flaky.down = False
    assert await state.claim("after", 4) is True  # the first call that finds the store back...
    assert set(rows(runtime.path)) == {"kept", "during", "after"}  # ...replays the write and the delete
    assert state.health()["mode"] == "store" and state.health()["pending_writes"] == 0


async def test_claim_and_take_are_atomic_through_the_store(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "state.sqlite")
    one, two = AdapterState(SPEC, legacy=False), AdapterState(SPEC, legacy=False)
    await one.open(runtime)
    await two.open(runtime)
    assert [await one.claim("k", 1), await two.claim("k", 2)] == [True, False]
    assert [await two.take("k"), await one.take("k")] == [1, None]  # one's memory copy is not trusted
    await one.close()
    await two.close()


async def test_input_errors_raise_instead_of_degrading(opened: tuple[AdapterState, Runtime]) -> None:
    state, _ = opened
    with pytest.raises(StateStoreError) as err:
        await state.record("k", {"too": "x" * 70_000})
    assert err.value.code == "LIMIT_EXCEEDED"
    assert state.health()["mode"] == "store"


async def test_pending_writes_are_bounded_by_the_cap(opened: tuple[AdapterState, Runtime]) -> None:
    state, runtime = opened
    runtime.stores[0].down = True
    for i in range(10):
        await state.record(f"k{i}", i)
    assert state.health()["pending_writes"] == SPEC.max_entries


BAD_KEYS = [
    (["acct", "!room", "$event"], "INVALID_INPUT"),  # a list: was a 500 `unhashable type` in both modes
    (("acct", "!room", "$event"), "INVALID_INPUT"),  # a tuple: worked in legacy, failed in store mode
    (42, "INVALID_INPUT"),
    ("   ", "INVALID_INPUT"),
    ("k" * 513, "LIMIT_EXCEEDED"),
]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "store"])
@pytest.mark.parametrize(("key", "code"), BAD_KEYS)
async def test_keys_are_checked_exactly_as_the_store_checks_them(
    tmp_path: Path, legacy: bool, key: Any, code: str
) -> None:
    runtime = Runtime(tmp_path / "state.sqlite")
    st = AdapterState(SPEC, legacy=legacy)
    await st.open(runtime)
    try:
        for call in (
            lambda: st.record(key, {"v": 1}),
            lambda: st.claim(key, {"v": 1}),
            lambda: st.get(key),
            lambda: st.take(key),
            lambda: st.forget(key),
        ):
            with pytest.raises(StateStoreError) as info:
                await call()
            assert info.value.code == code
        assert len(st.memory) == 0 and st.health()["mode"] == ("legacy" if legacy else "store")
        with pytest.raises(StateStoreError) as bad_value:
            await st.record("k", {"not": ("json", "tuple")})
        assert bad_value.value.code == "INVALID_INPUT" and len(st.memory) == 0
        await st.record("  padded  ", {"v": 2})  # trimmed, as the store trims
        assert await st.get("padded") == {"v": 2}
    finally:
        await st.close()


async def test_a_degraded_state_replays_once_the_store_is_back_with_no_traffic(tmp_path: Path) -> None:
    """A plugin's state that degraded and then sees no call (a namespace written only on some
    paths, or a quiet hour) still replays its kept writes once the store answers, and /healthz
    turns green: a write kept only in memory is lost if the process dies, and the health of a
    store that is back must not wait for the next user."""
    from dataclasses import dataclass

    from chatstate.gateway.stateful import StatefulPlugin

    @dataclass(frozen=True)
    class Parts:
        async def close(self) -> None:
            return None

        def health(self) -> dict[str, Any]:
            return {}

    class Quiet(StatefulPlugin[Parts]):
        id = "quiet"

        async def build(self, runtime: Any) -> Parts:
            self.things = await self.open_state(AdapterState(SPEC, legacy=False), runtime)
            return Parts()

    runtime = Runtime(tmp_path / "state.sqlite")
    plugin = Quiet()
    await plugin.start(runtime)
    try:
        runtime.stores[0].down = True
        await plugin.things.record("kept in memory", 1)
        assert plugin.health()["status"] == "degraded"
        runtime.stores[0].down = False  # the store is back; nobody calls the state
        for _ in range(100):
            if plugin.health()["status"] == "ok":
                break
            await asyncio.sleep(0.05)  # polling the plugin's own recovery, with a deadline
        assert plugin.health()["status"] == "ok"
        assert set(rows(runtime.path)) == {"kept in memory"}
    finally:
        await plugin.stop()
