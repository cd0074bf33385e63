"""What the Matrix adapter keeps, and the two functions that touch it.

| namespace | key | value | TTL / cap |
|---|---|---|---|
| `matrix.approval-reactions` | JSON `[account_id, room_id, event_id]` | `{version: 1, target}` | approval's remaining lifetime / 1,000 |
| `matrix.sync` | account_id (the bot's user id) | `{version: 1, next_batch}` | none / 16 |

A reaction target says which approval a prompt event stands for and which decisions its
reactions may take. `register_target` writes it (awaited) before the prompt counts as posted;
`resolve_target` takes it atomically, so a prompt resolves once however often its reactions
are delivered. The sync token is saved after each `/sync` batch has been handled, so after a
restart the bot resumes right after the last event it finished: reactions sent while it was
down are handled once, older events never again. The legacy twin is the same classes with
`legacy=True` (common.AdapterState over common.MemoryMap): all of it is gone after a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from chatstate.adapters.common import AdapterState, Clock, StateSpec, now_ms
from chatstate.gateway.approvals import Decision

if TYPE_CHECKING:
    from chatstate.gateway.plugin import PluginRuntime

REACTIONS = StateSpec("matrix.approval-reactions", ttl_ms=None, max_entries=1_000)  # TTL per row
SYNC = StateSpec("matrix.sync", ttl_ms=None, max_entries=16)  # one row per bot account
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
        return {"version": VALUE_VERSION, "target": {"approval_id": self.approval_id, "decisions": list(self.decisions)}}

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
