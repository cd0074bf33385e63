"""What the bot does with each event: post approval prompts, resolve them by reaction.

Request: a room member writes `!approve <action>` (all three decisions) or `!approve-once
<action>` (no "allow always"). The requester must hold a free slot (at most
`max_pending_per_requester` open approvals each, issue 15): over it, the bot answers "too many
pending approvals" and opens nothing, so one person's flood can never evict another's prompt.
Otherwise the bot opens the pending approval (core store), posts the prompt, registers the
reaction target (awaited: only now is the prompt "posted"), then seeds one reaction per allowed
decision.

Resolve: a listed approver reacts to the prompt with ✅ ♾️ or ❌. The bot re-fetches the
reaction first: one the homeserver has redacted since the batch was produced (a stale or cached
batch) has no effect. Then it posts the outcome and takes the target and the approval (atomic
consumes) and frees the requester's slot. Anything else — another sender, the bot's own seed
reactions, another emoji, a reaction to a non-prompt event — is ignored and leaves the target in
place. A decision reaction to a prompt that is no longer answerable (its approval expired, or its
target was evicted) gets "this approval has expired", never silence; a prompt already resolved
stays silent. Each event reaches these callbacks at most once (the dispatcher's ledger).

## The dispatcher (`EventDispatcher`; dispatch.py before issue 18)

One event at a time: claim it in our ledger, run its handler, retry a bounded number of times,
and give up on it alone — never on the batch, the room or the sync position (issue 13).

Why a ledger and not the homeserver: Synapse serves a cached answer to an identical /sync for
about two minutes and dedupes txn ids per device only, so a replayed batch after a restart, a
new login or a second gateway on one Redis would otherwise act twice. An event with effects (an
approval request, an approver's decision reaction) is claimed in `matrix.handled-events` before
its first effect; whoever holds the claim acts, everyone else skips it. A claim still
`handling` when its process died (SIGKILL mid-event, e.g. while waiting out a 429) is finished
by the next start of the same device (its sends reuse their txn ids); a SIGTERM releases the
claim so the next start redoes it. Another device never takes a claim over: for it, at most once.

A failing handler is retried `max_attempts` times with backoff (the homeserver's
`retry_after_ms` when it gave one), then recorded as failed (log event `matrix_event_failed`,
counter in /healthz) and skipped, so an `M_FORBIDDEN` room cannot stop the bot answering in
the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from nio import ReactionEvent, RoomMessageText

from chatstate.adapters.matrix import platform
from chatstate.adapters.matrix.platform import MatrixError, MatrixIO
from chatstate.adapters.matrix.state import HandledEvents, Outcome, ReactionTarget, ReactionTargets, RequesterSlots
from chatstate.gateway import reply
from chatstate.gateway.approvals import Approval, ApprovalService
from chatstate.gateway.clock import Clock, now_ms

SLOT_FIELD = "requester_slot"  # in the approval's context: which slot to free on resolution
RETRY_DELAYS_S = (0.25, 1.0, 2.0)  # between attempts of one event; the last one repeats
MAX_RETRY_AFTER_S = 30.0  # a homeserver asking for longer is capped: the loop must move on


class ApprovalFlow:
    """Event handlers for one bot account (called by `dispatch.EventDispatcher`)."""

    def __init__(
        self,
        io: MatrixIO,
        targets: ReactionTargets,
        approvals: ApprovalService,
        slots: RequesterSlots,
        *,
        approvers: Collection[str],
        approval_ttl_ms: int,
        max_pending_per_requester: int,
        log: logging.LoggerAdapter[logging.Logger],
        clock: Clock = now_ms,
    ) -> None:
        self.io = io
        self.targets = targets
        self.approvals = approvals
        self.slots = slots
        self.approvers = frozenset(approvers)
        self.approval_ttl_ms = approval_ttl_ms
        self.max_pending = max_pending_per_requester
        self.log = log
        self._clock = clock

    @property
    def account_id(self) -> str:
        return self.io.user_id

    def wants_message(self, event: object) -> bool:
        """True for an approval request: the only messages with effects."""
        return (
            isinstance(event, RoomMessageText)
            and event.sender != self.account_id
            and (platform.parse_command(event.body) is not None or reply.hooked("matrix"))
        )

    def wants_reaction(self, event: object) -> bool:
        """True for a decision reaction by a listed approver: the only reactions with effects."""
        return (
            isinstance(event, ReactionEvent)
            and event.sender != self.account_id
            and event.sender in self.approvers
            and platform.decision_for(event.key) is not None
        )

    # -- requests -------------------------------------------------------------------------
    async def on_message(self, room_id: str, event: RoomMessageText) -> None:
        """Open an approval for `!approve ...` and post its prompt, or refuse over the quota."""
        command = platform.parse_command(event.body)
        if event.sender == self.account_id:
            return
        if command is None:  # any other text goes to the user's reply hook, if any (gateway/reply.py)
            await reply.respond(
                reply.Message(event.body, event.sender, room_id, "matrix"),
                default=None,
                send=lambda text: self.io.send(
                    room_id,
                    "m.room.message",
                    {"msgtype": "m.text", "body": text},
                    txn=platform.txn_id("reply", event.event_id),
                ),
            )
            return
        approval_id = platform.approval_id(room_id, event.event_id)
        # the approval counts from the request, so a request finished after a crash keeps its
        # first deadline (and, past it, opens nothing) instead of starting a new one
        requested_at = min(event.server_timestamp, self._clock())
        expires_at = requested_at + self.approval_ttl_ms
        if expires_at <= self._clock():
            self.log.info("matrix_request_expired", extra={"approval": approval_id, "room": room_id})
            return
        existing = await self.approvals.get(approval_id)  # a retried attempt of this event
        slot = await self.slots.take(
            self.account_id,
            event.sender,
            approval_id,
            cap=self.max_pending,
            expires_at=existing.expires_at if existing else expires_at,
        )
        if slot is None:
            await self.io.send(
                room_id,
                "m.room.message",
                platform.refused_content(event.sender, self.max_pending),
                txn=platform.txn_id("refused", event.event_id),
            )
            self.log.info("matrix_request_refused", extra={"requester": event.sender, "room": room_id})
            return
        approval = await self.approvals.request(
            approval_id,
            command.action,
            requested_by=event.sender,
            decisions=command.decisions,
            ttl_ms=self.approval_ttl_ms,
            requested_at=requested_at,
            context={"room_id": room_id, "request_event_id": event.event_id, SLOT_FIELD: slot},
        )
        if approval.expires_at <= self._clock():
            return  # nothing left to ask
        prompt_id = await self.io.send(
            room_id, "m.room.message", platform.prompt_content(approval), txn=platform.txn_id("prompt", event.event_id)
        )
        target = ReactionTarget(approval.id, approval.decisions)
        if not await self.targets.register_target(
            self.account_id, room_id, prompt_id, target, expires_at=approval.expires_at
        ):
            return
        for decision in approval.decisions:
            await self.io.send(
                room_id,
                "m.reaction",
                platform.reaction_content(prompt_id, platform.EMOJI[decision]),
                txn=platform.txn_id(f"seed-{decision}", prompt_id),
            )
        self.log.info("matrix_prompt_posted", extra={"approval": approval.id, "room": room_id})

    # -- reactions ------------------------------------------------------------------------
    async def on_reaction(self, room_id: str, event: ReactionEvent) -> None:
        """Resolve the prompt `event` reacts to, if a listed approver chose an allowed decision."""
        decision = platform.decision_for(event.key)
        if not self.wants_reaction(event) or decision is None:
            return
        target = await self.targets.peek(self.account_id, room_id, event.reacts_to)
        if target is None:
            await self._not_answerable(room_id, event)
            return
        if decision not in target.decisions:
            return
        approval = await self.approvals.get(target.approval_id)
        if approval is None:  # the approval's row expired a moment before the target's
            await self._send_expired(room_id, event)
            return
        if await self._withdrawn(room_id, event):
            return
        await self.io.send(
            room_id,
            "m.room.message",
            platform.outcome_content(approval, decision, event.sender),
            txn=platform.txn_id("outcome", approval.id),
        )
        resolution = await self.targets.resolve_target(self.account_id, room_id, event.reacts_to, decision)
        if resolution.outcome is Outcome.RESOLVED:
            await self.approvals.resolve(approval.id, decision)
            await self._free_slot(approval)
            self.log.info("matrix_approval_resolved", extra={"approval": approval.id, "decision": decision})

    async def _withdrawn(self, room_id: str, event: ReactionEvent) -> bool:
        """True when the homeserver now has the reaction redacted (our batch was stale)."""
        current = await self.io.fetch_event(room_id, event.event_id)
        if current is None or platform.is_redacted(current):
            self.log.info("matrix_reaction_withdrawn", extra={"event_id": event.event_id, "room": room_id})
            return True
        return False

    async def _not_answerable(self, room_id: str, event: ReactionEvent) -> None:
        """No live target. Our prompt whose approval expired, or is still pending (its target
        was evicted), gets "expired"; a resolved prompt or any other event stays silent."""
        prompt = await self.io.fetch_event(room_id, event.reacts_to)
        expires_at = None if prompt is None else platform.prompt_expiry(prompt, self.account_id)
        if expires_at is None:
            return
        approval_id = prompt.get("content", {}).get(platform.APPROVAL_FIELD, {}).get("id") if prompt else None
        still_pending = isinstance(approval_id, str) and await self.approvals.get(approval_id) is not None
        if expires_at <= self._clock() or still_pending:
            await self._send_expired(room_id, event)

    async def _send_expired(self, room_id: str, event: ReactionEvent) -> None:
        await self.io.send(
            room_id, "m.room.message", platform.expired_content(), txn=platform.txn_id("expired", event.event_id)
        )

    async def _free_slot(self, approval: Approval) -> None:
        slot = approval.context.get(SLOT_FIELD)
        if isinstance(slot, int):
            await self.slots.free(self.account_id, approval.requested_by, slot)


# -- the dispatcher ----------------------------------------------------------------------------
@dataclass
class DispatchStats:
    """What /healthz shows about event handling."""

    handled: int = 0
    replays_skipped: int = 0  # claimed before: by an earlier run, another device or gateway
    withdrawn: int = 0  # reactions redacted in the same batch
    failed: int = 0
    last_failed: dict[str, Any] | None = field(default=None)


class EventDispatcher:
    """Route a room's events, in order, to the approval flow, each one isolated."""

    def __init__(
        self,
        flow: ApprovalFlow,
        ledger: HandledEvents,
        *,
        max_attempts: int,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.flow = flow
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.log = log
        self.stats = DispatchStats()

    async def room_events(self, room_id: str, events: list[Any]) -> None:
        """Handle `events` of one room in order. A reaction redacted later in the same list is
        skipped (it was withdrawn before we acted). Raises only CancelledError."""
        redacted = {getattr(e, "redacts", None) for e in events} - {None}
        for event in events:
            if self.flow.wants_message(event):
                await self._one(room_id, event, self.flow.on_message)
            elif self.flow.wants_reaction(event):
                if event.event_id in redacted:
                    self.stats.withdrawn += 1
                    continue
                await self._one(room_id, event, self.flow.on_reaction)

    async def _one(
        self, room_id: str, event: RoomMessageText | ReactionEvent, handler: Callable[[str, Any], Awaitable[None]]
    ) -> None:
        account, device = self.flow.account_id, self.flow.io.device_id
        if not await self.ledger.claim(account, event.event_id, device):
            self.stats.replays_skipped += 1
            self.log.info("matrix_event_replay_skipped", extra={"event_id": event.event_id, "room": room_id})
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                await handler(room_id, event)
            except asyncio.CancelledError:
                # stopping mid-event: let the next start redo it (its sends reuse their txn ids)
                await asyncio.shield(self.ledger.release(account, event.event_id))
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if attempt >= self.max_attempts:
                    await self._give_up(room_id, event.event_id, reason, attempt)
                    return
                delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)]
                retry_after_ms = exc.retry_after_ms if isinstance(exc, MatrixError) else None
                if retry_after_ms:
                    delay = max(delay, min(retry_after_ms / 1000, MAX_RETRY_AFTER_S))
                self.log.warning(
                    "matrix_event_retry",
                    extra={"event_id": event.event_id, "room": room_id, "attempt": attempt, "error": reason},
                )
                await asyncio.sleep(delay)
                continue
            await self.ledger.done(account, event.event_id, device)
            self.stats.handled += 1
            return

    async def _give_up(self, room_id: str, event_id: str, reason: str, attempts: int) -> None:
        self.stats.failed += 1
        self.stats.last_failed = {"event_id": event_id, "room": room_id, "error": reason, "attempts": attempts}
        self.log.error(
            "matrix_event_failed", extra={"event_id": event_id, "room": room_id, "error": reason, "attempts": attempts}
        )
        await self.ledger.mark_failed(self.flow.account_id, event_id, self.flow.io.device_id, reason)
