"""Pending approvals, owned by the core so they outlive any one adapter process.

An adapter asks for an approval ("may the agent run `deploy prod`?"), shows it to people in
its own way (a Matrix prompt with reactions, a Slack button...), and later resolves it with a
decision. The reference system kept pending approvals in a process dict, so a restart turned
every open prompt into a dead one; here each one is a row in the core-owned keyed store
`core:approvals` / `pending`, with a TTL equal to the approval's lifetime. Its creation and its
resolution are staged into the done transaction of the inbound event that caused them, so the
gate's claim on that event (`gate.InboundGate`) is what makes each happen once.

`legacy=True` keeps the rows in memory only (the "before"), for the side-by-side demos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.gateway.clock import Clock, now_ms

if TYPE_CHECKING:
    from chatstate.gateway.gate import Writes

Decision = Literal["allow-once", "allow-always", "deny"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)

CORE_ID = "core:approvals"
PENDING = StateSpec("pending", ttl_ms=None, max_entries=10_000, core_id=CORE_ID)  # TTL per row
VALUE_VERSION = 1


@dataclass(frozen=True)
class Approval:
    """One approval as stored: what is asked, by whom, which decisions it allows, until when."""

    id: str
    action: str
    requested_by: str
    decisions: tuple[Decision, ...]
    created_at: int  # ms since epoch
    expires_at: int  # ms since epoch
    context: Mapping[str, Any] = field(default_factory=dict)  # adapter's own (JSON) details

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VALUE_VERSION,
            "id": self.id,
            "action": self.action,
            "requested_by": self.requested_by,
            "decisions": list(self.decisions),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Approval:
        """Rebuild a stored approval. Raises ValueError for a row of an unknown version."""
        if value.get("version") != VALUE_VERSION:
            raise ValueError(f"approval row version {value.get('version')!r} is not {VALUE_VERSION}")
        return cls(
            id=value["id"],
            action=value["action"],
            requested_by=value["requested_by"],
            decisions=tuple(value["decisions"]),
            created_at=value["created_at"],
            expires_at=value["expires_at"],
            context=value.get("context", {}),
        )


class ApprovalService:
    """Read pending approvals, and stage their creation and resolution into an inbound item's
    done transaction (`gate.Writes`): an approval exists exactly when the event that opened it
    is done, and is gone exactly when the event that resolved it is."""

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self._clock = clock
        self.state = AdapterState(PENDING, legacy=legacy, clock=clock)  # opened by the plugin

    def open(self, writes: Writes, approval: Approval) -> bool:
        """Stage `approval` as pending until its `expires_at`; False (nothing staged) once that
        has passed: there is nothing left to ask. Raises StateStoreError INVALID_INPUT /
        LIMIT_EXCEEDED for an id or context the store refuses."""
        remaining = approval.expires_at - self._clock()
        if remaining <= 0:
            return False
        writes.put(self.state, approval.id, approval.to_json(), ttl_ms=remaining)
        return True

    async def get(self, approval_id: str) -> Approval | None:
        """Return the live approval, or None once it is resolved or expired."""
        value = await self.state.get(approval_id)
        return None if value is None else Approval.from_json(value)

    def resolve(self, writes: Writes, approval_id: str) -> None:
        """Stage the end of `approval_id` (answered): it is no longer pending."""
        writes.delete(self.state, approval_id)
