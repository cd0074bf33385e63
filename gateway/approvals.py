"""Pending approvals, owned by the core so they outlive any one adapter process.

An adapter asks for an approval ("may the agent run `deploy prod`?"), shows it to people in
its own way (a Matrix prompt with reactions, a Slack button...), and later resolves it with a
decision. The reference system kept pending approvals in a process dict, so a restart turned
every open prompt into a dead one; here each one is a row in the core-owned keyed store
`core:approvals` / `pending`, written (awaited) before the adapter shows the prompt, with a TTL
equal to the approval's lifetime. Resolving is an atomic `consume`: of any number of reactions,
clicks or retried deliveries, exactly one resolves an approval.

`legacy=True` keeps the rows in memory only (the "before"), for the side-by-side demos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.gateway.clock import Clock, now_ms

if TYPE_CHECKING:
    from chatstate.gateway.plugin import PluginRuntime

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
    """Create, read and resolve pending approvals in the core store (or memory when legacy)."""

    def __init__(self, *, legacy: bool, clock: Clock = now_ms) -> None:
        self._clock = clock
        self.state = AdapterState(PENDING, legacy=legacy, clock=clock)

    async def open(self, runtime: PluginRuntime) -> None:
        """Open `core:approvals`/`pending` through the runtime. Raises what it raises."""
        await self.state.open(runtime)

    async def close(self) -> None:
        await self.state.close()

    def health(self) -> dict[str, Any]:
        return self.state.health()

    async def request(
        self,
        approval_id: str,
        action: str,
        *,
        requested_by: str,
        decisions: Iterable[Decision] = DECISIONS,
        ttl_ms: int,
        requested_at: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Approval:
        """Create the pending approval `approval_id`, or return the live one already there.

        It expires `ttl_ms` after `requested_at` (ms since epoch: when the person asked, e.g. the
        chat message's timestamp; never later than now; default now). Idempotent so a replayed
        request (the same chat message delivered again after a crash) never opens a second
        approval or restarts the first one's clock, even once the first has expired: given the
        same `requested_at` it gets the same deadline, and an approval past its deadline is
        returned as it is, not stored (`expires_at <= now`: nothing left to ask). Returns once
        the row is durable. Raises ValueError for no/unknown decisions or ttl_ms < 1, and
        StateStoreError INVALID_INPUT/LIMIT_EXCEEDED for an id or context the store refuses.
        """
        chosen = tuple(d for d in DECISIONS if d in set(decisions))
        if not chosen or set(decisions) - set(DECISIONS):
            raise ValueError(f"decisions must be a non-empty subset of {DECISIONS}")
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be >= 1")
        now = self._clock()
        created = now if requested_at is None else min(requested_at, now)
        approval = Approval(approval_id, action, requested_by, chosen, created, created + ttl_ms, dict(context or {}))
        if approval.expires_at <= now:
            return approval
        if await self.state.claim(approval_id, approval.to_json(), ttl_ms=approval.expires_at - now):
            return approval
        existing = await self.get(approval_id)
        return existing if existing is not None else approval

    async def get(self, approval_id: str) -> Approval | None:
        """Return the live approval, or None once it is resolved or expired."""
        value = await self.state.get(approval_id)
        return None if value is None else Approval.from_json(value)

    async def resolve(self, approval_id: str, decision: Decision) -> Approval | None:
        """Take the approval for `decision`; None if it is already resolved, expired or unknown.

        Atomic across processes: of racing resolvers exactly one gets the approval back.
        Raises ValueError for a decision this approval does not allow (it stays pending).
        """
        pending = await self.get(approval_id)
        if pending is None:
            return None
        if decision not in pending.decisions:
            raise ValueError(f"approval {approval_id!r} does not allow {decision!r}")
        value = await self.state.take(approval_id)
        return None if value is None else Approval.from_json(value)
