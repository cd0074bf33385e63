"""The async twin's worker threads: idle ones retire and come back on demand, so a process that
used many databases keeps no threads for them, and no call is stranded while one retires."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatstate.state import _aio, open_async_keyed_store


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(_aio.WORKER_PREFIX)]


IDLE_WORKERS_SCRIPT = """
import asyncio, sys, threading, time
from chatstate.state import _aio, open_async_keyed_store

def store_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(_aio.WORKER_PREFIX)]

async def main(tmp):
    _aio.IDLE_EXIT_S = 0.05
    for i in range(5):  # five databases, each with its own writer thread
        store = await open_async_keyed_store("p", "ns", max_entries=10, path=f"{tmp}/{i}.sqlite")
        await store.register("k", i)
        await store.close()
    deadline = time.monotonic() + 30
    while store_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # retirement is the behaviour under test, on its own clock
    print("after idle:", store_threads())
    store = await open_async_keyed_store("p", "ns", max_entries=10, path=f"{tmp}/0.sqlite")
    print("lookup:", await store.lookup("k"))  # threads come back for new work
    await store.register("k", 99)
    print("lookup:", await store.lookup("k"))
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


def test_idle_workers_exit_and_restart_on_demand(tmp_path: Path) -> None:
    """In a fresh interpreter: with other tests in the same (xdist worker) process, a thread
    busy with their work would be counted too."""
    out = subprocess.run(
        [sys.executable, "-c", IDLE_WORKERS_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["after idle: []", "lookup: 0", "lookup: 99"]


async def test_calls_racing_a_retiring_thread_all_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aio, "IDLE_EXIT_S", 0.001)  # threads retire between almost every call
    store = await open_async_keyed_store("p", "ns", max_entries=1_000, path=tmp_path / "s.sqlite")
    for round_ in range(40):
        await asyncio.gather(*(store.register(f"k{round_}-{i}", i) for i in range(5)))
        assert await store.lookup(f"k{round_}-4") == 4
        await asyncio.sleep(0.002)
    assert len(await store.entries()) == 200
    await store.close()
