"""What the Matrix adapter keeps, and the two functions that touch it.

| namespace | key | value | TTL / cap |
|---|---|---|---|
| `matrix.approval-reactions` | JSON `[account_id, room_id, event_id]` | `{version: 1, target}` | approval's remaining lifetime / 1,000 |
| `matrix.sync` | account_id (the bot's user id) | `{version: 1, next_batch}` | none / 16 |
| `matrix.handled-events` | JSON `[account_id, event_id]` | `{version: 1, claimed_at, device, state: handling/done/failed, failed?}` | 24 h / 40,000 |
| `matrix.requester-slots` | JSON `[account_id, requester, slot]` | `{version: 1, approval_id}` | approval's lifetime / 5,000 |

A reaction target says which approval a prompt event stands for and which decisions its
reactions may take. `register_target` writes it (awaited) before the prompt counts as posted;
`resolve_target` takes it atomically, so a prompt resolves once however often its reactions
are delivered. The sync token is saved after each `/sync` batch has been handled, so after a
restart the bot resumes right after the last event it finished: reactions sent while it was
down are handled once, older events never again. The legacy twin is the same classes with
`legacy=True` (common.AdapterState over common.MemoryMap): all of it is gone after a restart.

The handled-events ledger is what makes handling exactly-once whatever the homeserver does: an
event with effects is claimed (`register_if_absent`) before its first effect, so a replayed
batch (a cached /sync answer, a crash before the token was saved, a new device, a second
gateway on the same Redis) finds the claim and does nothing. Requester slots cap how many
approvals one requester can hold open (issue 15's fairness quota): a slot is claimed atomically
per approval and freed when it resolves, or by its TTL when the approval expires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.gateway.approvals import Decision
from chatstate.gateway.clock import Clock, now_ms

if TYPE_CHECKING:
    from chatstate.gateway.plugin import PluginRuntime

REACTIONS = StateSpec("matrix.approval-reactions", ttl_ms=None, max_entries=1_000)  # TTL per row
SYNC = StateSpec("matrix.sync", ttl_ms=None, max_entries=16)  # one row per bot account
# Sized so the plugin's namespaces add up under the store's per-plugin ceiling (50,000 live rows,
# docs/state.md rule 10): 1,000 + 16 + 40,000 + 5,000. Over the ceiling the store evicts from
# the namespace being written, so a busy ledger can never shrink the reaction targets.
HANDLED = StateSpec("matrix.handled-events", ttl_ms=24 * 3600 * 1000, max_entries=40_000)  # >= 24 h (issue 13)
SLOTS = StateSpec("matrix.requester-slots", ttl_ms=None, max_entries=5_000)  # TTL per row; 5 x 1,000 requesters
VALUE_VERSION = 1


def target_key(account_id: str, room_id: str, event_id: str) -> str:
    """The store key of a prompt: JSON `[account_id, room_id, event_id]`, no spaces."""
    return json.dumps([account_id, room_id, event_id], separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ReactionTarget:
    """The approval a prompt event stands for, and the decisions its reactions may take."""

    approval_id: str
    decisions: tuple[Decision, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VALUE_VERSION,
            "target": {"approval_id": self.approval_id, "decisions": list(self.decisions)},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ReactionTarget:
        """Rebuild a stored target. Raises ValueError for a row of another version."""
        if value.get("version") != VALUE_VERSION:
            raise ValueError(f"reaction target version {value.get('version')!r} is not {VALUE_VERSION}")
        target = value["target"]
        return cls(target["approval_id"], tuple(target["decisions"]))


class Outcome(Enum):
    """What `resolve_target` did."""

    RESOLVED = "resolved"  # the target was taken; the caller resolves the approval
    REFUSED = "refused"  # the target does not allow this decision; it stays
    MISSING = "missing"  # no live target: already resolved, expired, or not a prompt


@dataclass(frozen=True)
class Resolution:
    outcome: Outcome
    target: ReactionTarget | None = None


class ReactionTargets:
    """`matrix.approval-reactions`: prompt event -> approval."""

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self._clock = clock
        self.state = AdapterState(REACTIONS, legacy=legacy, clock=clock)

    async def open(self, runtime: PluginRuntime) -> None:
        await self.state.open(runtime)

    async def register_target(
        self, account_id: str, room_id: str, event_id: str, target: ReactionTarget, *, expires_at: int
    ) -> bool:
        """Remember that reactions to `event_id` decide `target`, until `expires_at` (ms epoch).

        Returns once durable (unless legacy); False, writing nothing, if the approval has
        already expired. Raises StateStoreError INVALID_INPUT/LIMIT_EXCEEDED for ids too long.
        """
        remaining = expires_at - self._clock()
        if remaining <= 0:
            return False
        await self.state.record(target_key(account_id, room_id, event_id), target.to_json(), ttl_ms=remaining)
        return True

    async def peek(self, account_id: str, room_id: str, event_id: str) -> ReactionTarget | None:
        """The live target of `event_id`, left in place."""
        value = await self.state.get(target_key(account_id, room_id, event_id))
        return None if value is None else ReactionTarget.from_json(value)

    async def resolve_target(self, account_id: str, room_id: str, event_id: str, decision: Decision) -> Resolution:
        """Take the target of `event_id` for `decision`, atomically (one caller wins).

        A target that does not allow `decision` is left in place (REFUSED).
        """
        target = await self.peek(account_id, room_id, event_id)
        if target is None:
            return Resolution(Outcome.MISSING)
        if decision not in target.decisions:
            return Resolution(Outcome.REFUSED, target)
        taken = await self.state.take(target_key(account_id, room_id, event_id))
        if taken is None:
            return Resolution(Outcome.MISSING)
        return Resolution(Outcome.RESOLVED, ReactionTarget.from_json(taken))


class SyncTokens:
    """`matrix.sync`: where each bot account's /sync stream resumes."""

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self.state = AdapterState(SYNC, legacy=legacy, clock=clock)

    async def open(self, runtime: PluginRuntime) -> None:
        await self.state.open(runtime)

    async def load(self, account_id: str) -> str | None:
        value = await self.state.get(account_id)
        return None if value is None else str(value["next_batch"])

    async def save(self, account_id: str, next_batch: str) -> None:
        """Persist `next_batch` (awaited): call only after every event before it was handled."""
        await self.state.record(account_id, {"version": VALUE_VERSION, "next_batch": next_batch})


class HandledEvents:
    """`matrix.handled-events`: the ledger of events whose effects have started.

    A claim is `handling` (with the bot's device id) until the handler returns, then `done`, or
    `failed` when it was given up. A `handling` claim of *this* device found at claim time was
    left by a run of this device that died mid-event (one device syncs in one process at a time),
    so that run's successor finishes it; another device's claim is never taken over.
    """

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self._clock = clock
        self.state = AdapterState(HANDLED, legacy=legacy, clock=clock)

    async def open(self, runtime: PluginRuntime) -> None:
        await self.state.open(runtime)

    def _value(self, device_id: str, state: str, **extra: Any) -> dict[str, Any]:
        return {"version": VALUE_VERSION, "claimed_at": self._clock(), "device": device_id, "state": state, **extra}

    async def claim(self, account_id: str, event_id: str, device_id: str) -> bool:
        """Claim `event_id` for handling. False when it is done, failed, or being handled by
        another device; True when won, or when this device's dead run left it unfinished."""
        key = _json_key(account_id, event_id)
        if await self.state.claim(key, self._value(device_id, "handling")):
            return True
        held = await self.state.get(key)
        return held is not None and held.get("state") == "handling" and held.get("device") == device_id

    async def done(self, account_id: str, event_id: str, device_id: str) -> None:
        await self.state.record(_json_key(account_id, event_id), self._value(device_id, "done"))

    async def mark_failed(self, account_id: str, event_id: str, device_id: str, reason: str) -> None:
        """Keep the claim, noting why the event was given up (shown by `state` listings)."""
        await self.state.record(_json_key(account_id, event_id), self._value(device_id, "failed", failed=reason[:200]))

    async def release(self, account_id: str, event_id: str) -> None:
        """Drop a claim whose handling was interrupted by a stop, so the next start redoes it."""
        await self.state.forget(_json_key(account_id, event_id))


class RequesterSlots:
    """`matrix.requester-slots`: at most `cap` open approvals per requester."""

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self._clock = clock
        self.state = AdapterState(SLOTS, legacy=legacy, clock=clock)

    async def open(self, runtime: PluginRuntime) -> None:
        await self.state.open(runtime)

    async def take(self, account_id: str, requester: str, approval_id: str, *, cap: int, expires_at: int) -> int | None:
        """A slot for `approval_id` (a free one, or the one it already holds on a retry), or
        None when all `cap` are held by other live approvals. Each slot is an atomic claim, so
        the usual case is one store write."""
        remaining = expires_at - self._clock()
        if remaining <= 0:
            return None
        value = {"version": VALUE_VERSION, "approval_id": approval_id}
        for i in range(cap):
            key = _json_key(account_id, requester, str(i))
            if await self.state.claim(key, value, ttl_ms=remaining):
                return i
            held = await self.state.get(key)
            if held is not None and held.get("approval_id") == approval_id:
                return i
        return None

    async def free(self, account_id: str, requester: str, slot: int) -> None:
        await self.state.forget(_json_key(account_id, requester, str(slot)))


def _json_key(*parts: str) -> str:
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)
