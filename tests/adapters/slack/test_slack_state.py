"""What the adapter keeps, over a real SQLite file and a controlled clock: participation that
survives a restart without its window growing (the gate's claims are tests/gateway/test_gw_gate.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runtime_support import FileRuntime

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.state import ThreadParticipation, ThreadRef, thread_spec
from chatstate.gateway.sdk import AdapterState, Writes

TTL_MS = 10_000
SETTINGS = SlackSettings(signing_secret="s", bot_token="t", thread_ttl_ms=TTL_MS)
THREAD = ThreadRef("T1", "default", "C1", "1700000000.000100")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def runtimes(tmp_path: Path, clock: Clock) -> AsyncIterator[list[FileRuntime]]:
    made: list[FileRuntime] = []
    yield made
    for rt in made:
        await rt.close()


async def participation(rt: FileRuntime, clock: Clock) -> ThreadParticipation:
    st = AdapterState(thread_spec(SETTINGS), legacy=rt.legacy, clock=clock)
    await st.open(rt)
    return ThreadParticipation(st, clock=clock)


async def record(threads: ThreadParticipation, thread: ThreadRef) -> None:
    writes = Writes()
    threads.record_participation(writes, thread, agent_id="main")
    await writes.commit()


def new_runtime(runtimes: list[FileRuntime], tmp_path: Path, clock: Clock, *, legacy: bool = False) -> FileRuntime:
    rt = FileRuntime("slack", tmp_path / "state.sqlite", legacy=legacy, clock=clock)
    runtimes.append(rt)
    return rt


async def test_participation_survives_restart_and_keeps_its_window(
    runtimes: list[FileRuntime], tmp_path: Path, clock: Clock
) -> None:
    before = await participation(new_runtime(runtimes, tmp_path, clock), clock)
    await record(before, THREAD)
    replied_at = clock.now

    clock.now += TTL_MS - 10  # "restart" late in the window: a fresh process, empty memory
    after = await participation(new_runtime(runtimes, tmp_path, clock), clock)
    assert await after.replied_in(THREAD) == {"agent_id": "main", "replied_at": replied_at}
    assert after.state.memory.get(THREAD.key).expires_at == replied_at + TTL_MS  # stored expiry kept

    clock.now += 20  # past replied_at + TTL: the cached hit must not have restarted the window
    assert await after.replied_in(THREAD) is None


async def test_legacy_twin_forgets_on_restart(runtimes: list[FileRuntime], tmp_path: Path, clock: Clock) -> None:
    before = await participation(new_runtime(runtimes, tmp_path, clock, legacy=True), clock)
    await record(before, THREAD)
    assert await before.replied_in(THREAD) is not None
    after = await participation(new_runtime(runtimes, tmp_path, clock, legacy=True), clock)
    assert await after.replied_in(THREAD) is None


async def test_thread_key_is_the_documented_shape() -> None:
    assert THREAD.key == "T1:default:C1:1700000000.000100"
