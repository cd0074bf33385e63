"""The per-event machinery without a gateway (issue 13): the ledger, bounded retries honouring
`retry_after_ms`, same-batch redactions, release on stop; requester slots; the new config keys.
Real nio events (from fixtures/matrix), real stores over one SQLite file."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nio import Event
from test_matrix_units import FileRuntime

from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.handlers import ApprovalFlow, EventDispatcher
from chatstate.adapters.matrix.platform import MatrixError, MatrixIO
from chatstate.adapters.matrix.state import HandledEvents, ReactionTargets, RequesterSlots
from chatstate.gateway.approvals import ApprovalService
from chatstate.gateway.clock import now_ms
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sim.matrix import fixture

BOT, ALICE, ROOM = "@chatstate-bot:sim.local", "@alice:sim.local", "!ops:sim.local"
LOG = logging.LoggerAdapter(logging.getLogger("test.matrix.dispatch"))


class RecordingFlow(ApprovalFlow):
    """The real flow's routing (`wants_*`), with handlers that record and fail on demand."""

    def __init__(self, runtime_parts: tuple[Any, ...], failures: list[BaseException | None]) -> None:
        io = MatrixIO("http://127.0.0.1:9", "unused")  # never called: the handlers are replaced
        io.user_id = BOT
        super().__init__(
            io, *runtime_parts, approvers=[ALICE], approval_ttl_ms=60_000, max_pending_per_requester=2, log=LOG
        )
        self.calls: list[tuple[str, float]] = []
        self.failures = failures

    async def _record(self, event: Any) -> None:
        self.calls.append((event.event_id, time.monotonic()))
        failure = self.failures.pop(0) if self.failures else None  # None: this call succeeds
        if failure is not None:
            raise failure

    async def on_message(self, room_id: str, event: Any) -> None:
        await self._record(event)

    async def on_reaction(self, room_id: str, event: Any) -> None:
        await self._record(event)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[FileRuntime]:
    rt = FileRuntime(tmp_path / "state.sqlite")
    yield rt
    await rt.close()


async def parts(runtime: FileRuntime) -> tuple[Any, ...]:
    made = (ReactionTargets(legacy=False), ApprovalService(legacy=False), RequesterSlots(legacy=False))
    for p in made:
        await p.open(runtime)
    return made


async def dispatcher(
    runtime: FileRuntime, failures: list[BaseException | None] | None = None, attempts: int = 3
) -> EventDispatcher:
    ledger = HandledEvents(legacy=False)
    await ledger.open(runtime)
    return EventDispatcher(RecordingFlow(await parts(runtime), failures or []), ledger, max_attempts=attempts, log=LOG)


def reaction(event_id: str = "$r1", sender: str = ALICE) -> Any:
    raw = fixture("m.reaction")
    raw.update(event_id=event_id, sender=sender)
    return Event.parse_event(raw)


def request(event_id: str = "$m1", body: str = "!approve deploy") -> Any:
    raw = fixture("m.room.message")
    raw.update(event_id=event_id)
    raw["content"]["body"] = body
    return Event.parse_event(raw)


def redaction(of: str) -> Any:
    raw = fixture("m.room.redaction")
    raw.update(redacts=of, event_id=f"$redacts{of}")
    raw["content"]["redacts"] = of
    return Event.parse_event(raw)


async def test_each_event_acts_once_across_dispatchers_on_one_file(runtime: FileRuntime) -> None:
    one, two = await dispatcher(runtime), await dispatcher(runtime)
    batch = [
        request("$m1"),
        request("$chat", body="hello"),
        reaction("$r1"),
        reaction("$r2", sender="@mallory:sim.local"),
    ]
    await one.room_events(ROOM, batch)
    await two.room_events(ROOM, batch)  # a replayed batch: another run, device or gateway
    assert [c[0] for c in one.flow.calls] == ["$m1", "$r1"]
    assert two.flow.calls == []
    assert (one.stats.handled, two.stats.replays_skipped) == (2, 2)


async def test_a_reaction_redacted_later_in_the_same_batch_is_not_acted_on(runtime: FileRuntime) -> None:
    d = await dispatcher(runtime)
    await d.room_events(ROOM, [reaction("$r1"), request("$m1"), redaction("$r1"), reaction("$r2")])
    assert [c[0] for c in d.flow.calls] == ["$m1", "$r2"]
    assert d.stats.withdrawn == 1


async def test_a_failing_event_is_retried_honouring_retry_after_then_given_up_alone(runtime: FileRuntime) -> None:
    limited = MatrixError("room_send failed: M_LIMIT_EXCEEDED", errcode="M_LIMIT_EXCEEDED", retry_after_ms=600)
    forbidden = MatrixError("room_send failed: M_FORBIDDEN", errcode="M_FORBIDDEN")
    d = await dispatcher(runtime, failures=[limited, None, forbidden, forbidden, forbidden], attempts=3)
    await d.room_events(ROOM, [request("$ok"), request("$bad"), request("$after")])
    calls = [c[0] for c in d.flow.calls]
    assert calls == ["$ok", "$ok", "$bad", "$bad", "$bad", "$after"]
    times = [c[1] for c in d.flow.calls]
    assert times[1] - times[0] >= 0.6  # waited retry_after_ms, not the shorter backoff
    assert (d.stats.handled, d.stats.failed) == (2, 1)
    assert d.stats.last_failed is not None and d.stats.last_failed["event_id"] == "$bad"
    assert d.stats.last_failed["attempts"] == 3 and "M_FORBIDDEN" in d.stats.last_failed["error"]
    again = await dispatcher(runtime)
    await again.room_events(ROOM, [request("$bad")])  # a failed event stays claimed: not retried forever
    assert again.flow.calls == []


async def test_a_stop_mid_event_releases_its_claim_for_the_next_start(runtime: FileRuntime) -> None:
    d = await dispatcher(runtime)
    started = asyncio.Event()

    async def slow(room_id: str, event: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    d.flow.on_message = slow
    task = asyncio.create_task(d.room_events(ROOM, [request("$m1")]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await dispatcher(runtime)
    await after.room_events(ROOM, [request("$m1")])
    assert [c[0] for c in after.flow.calls] == ["$m1"]


async def test_requester_slots_cap_free_and_expire(runtime: FileRuntime) -> None:
    slots = RequesterSlots(legacy=False)
    await slots.open(runtime)
    soon, later = now_ms() + 400, now_ms() + 60_000
    assert await slots.take(BOT, ALICE, "a1", cap=2, expires_at=soon) == 0
    assert await slots.take(BOT, ALICE, "a1", cap=2, expires_at=later) == 0  # the same approval: same slot
    assert await slots.take(BOT, ALICE, "a2", cap=2, expires_at=later) == 1
    assert await slots.take(BOT, ALICE, "a3", cap=2, expires_at=later) is None  # over the cap
    assert await slots.take(BOT, "@bob:sim.local", "b1", cap=2, expires_at=later) == 0  # per requester
    await slots.free(BOT, ALICE, 1)
    assert await slots.take(BOT, ALICE, "a3", cap=2, expires_at=later) == 1
    await asyncio.sleep(max(0.0, (soon - now_ms()) / 1000) + 0.05)  # a deadline: a1's approval expires
    fresh = RequesterSlots(legacy=False)  # a new process: only the store remembers
    await fresh.open(runtime)
    assert await fresh.take(BOT, ALICE, "a4", cap=2, expires_at=later) == 0


def test_config_keys_of_issue_13_and_15() -> None:
    base = {"homeserver": "h", "access_token": "t", "approvers": ["@a:s"]}
    cfg = MatrixSettings.from_table(base)
    assert (cfg.sync_timeline_limit, cfg.backfill_max_events, cfg.event_max_attempts) == (50, 1_000, 3)
    assert (cfg.auto_join, cfg.inviters, cfg.max_pending_per_requester) == (True, ("@a:s",), 5)
    env = {
        "CHATSTATE_MATRIX_AUTO_JOIN": "false",
        "CHATSTATE_MATRIX_AUTO_JOIN_INVITERS": "@b:s,@c:s",
        "CHATSTATE_MATRIX_SYNC_TIMELINE_LIMIT": "7",
    }
    from_env = MatrixSettings.from_table(base, env=env)
    assert (from_env.auto_join, from_env.inviters, from_env.sync_timeline_limit) == (False, ("@b:s", "@c:s"), 7)
    for key, value in [
        ("auto_join", "maybe"),
        ("auto_join_inviters", ["bob"]),
        ("backfill_max_events", 0),
        ("event_max_attempts", 0),
        ("max_pending_per_requester", 0),
        ("sync_timeline_limit", 0),
    ]:
        with pytest.raises(ConfigError, match=f"adapters.matrix.{key}"):
            MatrixSettings.from_table({**base, key: value})


async def test_a_claim_left_handling_by_a_dead_run_is_finished_by_the_same_device_only(runtime: FileRuntime) -> None:
    ledger = HandledEvents(legacy=False)
    await ledger.open(runtime)
    assert await ledger.claim(BOT, "$m1", "DEVICE1")  # a run of DEVICE1 claims, then is SIGKILLed
    other = await dispatcher(runtime)
    other.flow.io.device_id = "DEVICE2"  # another login: never takes it over
    await other.room_events(ROOM, [request("$m1")])
    assert other.flow.calls == [] and other.stats.replays_skipped == 1
    same = await dispatcher(runtime)
    same.flow.io.device_id = "DEVICE1"  # the dead run's successor finishes it, once
    await same.room_events(ROOM, [request("$m1")])
    await same.room_events(ROOM, [request("$m1")])
    assert [c[0] for c in same.flow.calls] == ["$m1"]
