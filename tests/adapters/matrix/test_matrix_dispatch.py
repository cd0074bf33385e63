"""The per-event machinery without a gateway: each event through the gate once, bounded retries
honouring `retry_after_ms`, same-batch redactions, takeovers (same device at once, another after
the lease, the check first), the requester quota; the config keys. Real nio events (from
fixtures/matrix), real stores over one SQLite file."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from nio import Event
from runtime_support import FileRuntime

from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.handlers import ApprovalFlow
from chatstate.adapters.matrix.platform import MatrixError, MatrixIO
from chatstate.adapters.matrix.state import HANDLED, REACTIONS, json_key
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sdk import AdapterState, ApprovalService, InboundGate, StateSpec, UserQuota, Writes
from chatstate.gateway.sim.matrix import fixture

BOT, ALICE, ROOM = "@chatstate-bot:sim.local", "@alice:sim.local", "!ops:sim.local"
LOG = logging.LoggerAdapter(logging.getLogger("test.matrix.dispatch"))


class RecordingFlow(ApprovalFlow):
    """The real flow's routing and gate, with work that records and fails on demand."""

    def __init__(self, gate: InboundGate, failures: list[BaseException | None], attempts: int) -> None:
        io = MatrixIO("http://127.0.0.1:9", "unused")  # never called: the work is replaced
        io.user_id = BOT
        table = {"homeserver": "http://h", "access_token": "t", "approvers": [ALICE], "event_max_attempts": attempts}
        quota = UserQuota(AdapterState(StateSpec("q", None, 10), legacy=True), per_user=2, ttl_ms=60_000)
        targets = AdapterState(REACTIONS, legacy=True)
        super().__init__(
            io,
            MatrixSettings.from_table(table),
            gate=gate,
            targets=targets,
            approvals=ApprovalService(legacy=True),
            quota=quota,
            log=LOG,
        )
        self.calls: list[tuple[str, float]] = []
        self.checked: list[str] = []
        self.failures = failures

    async def _record(self, room_id: str, event: Any, writes: Writes) -> str:
        self.calls.append((event.event_id, time.monotonic()))
        failure = self.failures.pop(0) if self.failures else None  # None: this call succeeds
        if failure is not None:
            raise failure
        return "recorded"

    async def _check(self, room_id: str, event: Any, writes: Writes) -> bool:
        self.checked.append(event.event_id)
        return False

    _request = _reaction = _record
    _request_answered = _reaction_answered = _check


async def flow(
    runtime: FileRuntime,
    failures: list[BaseException | None] | None = None,
    *,
    attempts: int = 3,
    device: str = "DEVICE1",
    lease_ms: int = 30_000,
) -> RecordingFlow:
    claims = AdapterState(HANDLED, legacy=False)
    await claims.open(runtime)
    gate = InboundGate(claims, lease_ms=lease_ms, log=LOG, owner=f"{BOT}/{device}")
    return RecordingFlow(gate, failures or [], attempts)


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


async def test_each_event_acts_once_across_flows_on_one_file(runtime: FileRuntime) -> None:
    one, two = await flow(runtime), await flow(runtime, device="DEVICE2")
    batch = [
        request("$m1"),
        request("$chat", body="hello"),
        reaction("$r1"),
        reaction("$r2", sender="@mallory:sim.local"),
    ]
    await one.room_events(ROOM, batch)
    await two.room_events(ROOM, batch)  # a replayed batch: another run, device or gateway
    assert [c[0] for c in one.calls] == ["$m1", "$r1"]
    assert two.calls == []
    assert (one.stats.events_handled, two.stats.replays_skipped) == (2, 2)


async def test_a_reaction_redacted_later_in_the_same_batch_is_not_acted_on(runtime: FileRuntime) -> None:
    f = await flow(runtime)
    await f.room_events(ROOM, [reaction("$r1"), request("$m1"), redaction("$r1"), reaction("$r2")])
    assert [c[0] for c in f.calls] == ["$m1", "$r2"]
    assert f.stats.reactions_withdrawn == 1


async def test_a_failing_event_is_retried_honouring_retry_after_then_given_up_alone(runtime: FileRuntime) -> None:
    limited = MatrixError("room_send failed: M_LIMIT_EXCEEDED", errcode="M_LIMIT_EXCEEDED", retry_after_ms=600)
    forbidden = MatrixError("room_send failed: M_FORBIDDEN", errcode="M_FORBIDDEN")
    f = await flow(runtime, failures=[limited, None, forbidden, forbidden, forbidden], attempts=3)
    await f.room_events(ROOM, [request("$ok"), request("$bad"), request("$after")])
    calls = [c[0] for c in f.calls]
    assert calls == ["$ok", "$ok", "$bad", "$bad", "$bad", "$after"]
    times = [c[1] for c in f.calls]
    assert times[1] - times[0] >= 0.6  # waited retry_after_ms, not the shorter backoff
    assert (f.stats.events_handled, f.stats.events_failed) == (2, 1)
    assert f.stats.last_failed_event is not None and f.stats.last_failed_event["event_id"] == "$bad"
    assert f.stats.last_failed_event["attempts"] == 3 and "M_FORBIDDEN" in f.stats.last_failed_event["error"]
    again = await flow(runtime)
    await again.room_events(ROOM, [request("$bad")])  # a given-up event is done: not retried forever
    assert again.calls == []


async def test_a_lease_left_by_a_dead_run_is_taken_over_with_the_check_by_its_device_at_once(
    runtime: FileRuntime,
) -> None:
    dead = await flow(runtime, lease_ms=1_500)
    assert await dead.gate.claims.claim(
        json_key(BOT, "$m1"), {"received_at": 0, "lease_until": 2**62, "owner": f"{BOT}/DEVICE1"}
    )  # a run of DEVICE1 claimed $m1, then was SIGKILLed
    other = await flow(runtime, device="DEVICE2", lease_ms=1_500)
    waiting = asyncio.create_task(other.room_events(ROOM, [request("$m1")]))
    await asyncio.sleep(1.0)
    assert other.calls == [] and not waiting.done()  # another device waits for the lease...
    same = await flow(runtime, device="DEVICE1")
    await same.room_events(ROOM, [request("$m1")])  # ...the dead run's successor takes over at once
    assert same.checked == ["$m1"] and [c[0] for c in same.calls] == ["$m1"]
    await asyncio.wait_for(waiting, 5)  # ...and then finds it done
    assert other.calls == [] and other.stats.replays_skipped == 1


async def test_the_requester_quota_counts_gives_back_and_is_per_requester(runtime: FileRuntime) -> None:
    state = AdapterState(StateSpec("matrix.requester-quota", 60_000, 100), legacy=False)
    await state.open(runtime)
    quota = UserQuota(state, per_user=2, ttl_ms=60_000)
    writes = Writes()
    assert await quota.admit("alice", writes) is None
    assert await quota.admit("alice", writes) is None
    assert await quota.admit("alice", writes) is not None  # over the cap
    assert await quota.admit("bob", writes) is None  # per requester
    await writes.commit()
    given = Writes()
    await quota.release("alice", given)  # one of hers was answered
    await given.commit()
    fresh = UserQuota(state, per_user=2, ttl_ms=60_000)
    state.memory.drop("alice")  # read from the store, as a new process would
    assert await fresh.admit("alice", Writes()) is None


def test_config_keys() -> None:
    base = {"homeserver": "http://h", "access_token": "t", "approvers": ["@a:s"]}
    cfg = MatrixSettings.from_table(base)
    assert (cfg.sync_timeline_limit, cfg.backfill_max_events, cfg.event_max_attempts) == (50, 1_000, 3)
    assert (cfg.auto_join, cfg.inviters, cfg.max_pending_per_requester, cfg.event_lease_ms) == (
        True,
        ("@a:s",),
        5,
        30_000,
    )
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
        ("event_lease_ms", 0),
        ("max_pending_per_requester", 0),
        ("sync_timeline_limit", 0),
    ]:
        with pytest.raises(ConfigError, match=f"adapters.matrix.{key}"):
            MatrixSettings.from_table({**base, key: value})
