"""The async twin's worker threads: idle ones retire and come back on demand, so a process that
used many databases keeps no threads for them, and no call is stranded while one retires."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from chatstate.state import _aio, open_async_keyed_store


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(_aio.WORKER_PREFIX)]


async def test_idle_workers_exit_and_restart_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aio, "IDLE_EXIT_S", 0.05)
    for i in range(5):  # five databases, each with its own writer thread
        store = await open_async_keyed_store("p", "ns", max_entries=10, path=tmp_path / f"{i}.sqlite")
        await store.register("k", i)
        await store.close()
    deadline = time.monotonic() + 30
    while store_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # retirement is the behaviour under test, on its own clock
    assert store_threads() == []

    store = await open_async_keyed_store("p", "ns", max_entries=10, path=tmp_path / "0.sqlite")
    assert await store.lookup("k") == 0  # threads come back for new work
    await store.register("k", 99)
    assert await store.lookup("k") == 99
    await store.close()


async def test_calls_racing_a_retiring_thread_all_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aio, "IDLE_EXIT_S", 0.001)  # threads retire between almost every call
    store = await open_async_keyed_store("p", "ns", max_entries=1_000, path=tmp_path / "s.sqlite")
    for round_ in range(40):
        await asyncio.gather(*(store.register(f"k{round_}-{i}", i) for i in range(5)))
        assert await store.lookup(f"k{round_}-4") == 4
        await asyncio.sleep(0.002)
    assert len(await store.entries()) == 200
    await store.close()
