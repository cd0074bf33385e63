"""What the bot does with each event: post approval prompts, resolve them by reaction.

Request: a room member writes `!approve <action>` (all three decisions) or `!approve-once
<action>` (no "allow always"). The bot opens the pending approval (core store), posts the
prompt, registers the reaction target (awaited: only now is the prompt "posted"), then seeds
one reaction per allowed decision.

Resolve: a listed approver reacts to the prompt with ✅ ♾️ or ❌. The bot posts the outcome,
then takes the target and the approval (atomic consumes). Posting first is safe because the
outcome's txn id is derived from the approval id: if the process dies before the takes, the
replayed reaction re-sends the same txn (the homeserver returns the first event) and then takes.
Anything else — another sender, the bot's own seed reactions, another emoji, a reaction to a
non-prompt event, a redaction — is ignored and leaves the target in place. A decision reaction
from an approver to a prompt whose approval has expired gets "this approval has expired".
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from nio import MatrixRoom, ReactionEvent, RoomMessageText

from chatstate.adapters.common import Clock, now_ms
from chatstate.adapters.matrix import platform
from chatstate.adapters.matrix.platform import MatrixIO
from chatstate.adapters.matrix.state import Outcome, ReactionTarget, ReactionTargets
from chatstate.gateway.approvals import ApprovalService


class ApprovalFlow:
    """nio event callbacks for one bot account."""

    def __init__(
        self,
        io: MatrixIO,
        targets: ReactionTargets,
        approvals: ApprovalService,
        *,
        approvers: Collection[str],
        approval_ttl_ms: int,
        log: logging.LoggerAdapter[logging.Logger],
        clock: Clock = now_ms,
    ) -> None:
        self.io = io
        self.targets = targets
        self.approvals = approvals
        self.approvers = frozenset(approvers)
        self.approval_ttl_ms = approval_ttl_ms
        self.log = log
        self._clock = clock

    @property
    def account_id(self) -> str:
        return self.io.user_id

    # -- requests -------------------------------------------------------------------------
    async def on_message(self, room: MatrixRoom, event: RoomMessageText) -> None:
        """Open an approval for `!approve ...` and post its prompt (idempotent on replay)."""
        if event.sender == self.account_id:
            return
        command = platform.parse_command(event.body)
        if command is None:
            return
        approval = await self.approvals.request(
            platform.approval_id(room.room_id, event.event_id), command.action,
            requested_by=event.sender, decisions=command.decisions,
            ttl_ms=self.approval_ttl_ms, context={"room_id": room.room_id, "request_event_id": event.event_id},
        )
        if approval.expires_at <= self._clock():
            return  # a request replayed after its approval's lifetime: nothing left to ask
        prompt_id = await self.io.send(
            room.room_id, "m.room.message", platform.prompt_content(approval),
            txn=platform.txn_id("prompt", event.event_id),
        )
        target = ReactionTarget(approval.id, approval.decisions)
        if not await self.targets.register_target(self.account_id, room.room_id, prompt_id, target, expires_at=approval.expires_at):
            return
        for decision in approval.decisions:
            await self.io.send(
                room.room_id, "m.reaction", platform.reaction_content(prompt_id, platform.EMOJI[decision]),
                txn=platform.txn_id(f"seed-{decision}", prompt_id),
            )
        self.log.info("matrix_prompt_posted", extra={"approval": approval.id, "room": room.room_id})

    # -- reactions ------------------------------------------------------------------------
    async def on_reaction(self, room: MatrixRoom, event: ReactionEvent) -> None:
        """Resolve the prompt `event` reacts to, if a listed approver chose an allowed decision."""
        decision = platform.decision_for(event.key)
        if event.sender == self.account_id or event.sender not in self.approvers or decision is None:
            return
        target = await self.targets.peek(self.account_id, room.room_id, event.reacts_to)
        if target is None:
            await self._maybe_expired(room.room_id, event)
            return
        if decision not in target.decisions:
            return
        approval = await self.approvals.get(target.approval_id)
        if approval is None:  # the approval's row expired a moment before the target's
            await self._send_expired(room.room_id, event)
            return
        await self.io.send(
            room.room_id, "m.room.message", platform.outcome_content(approval, decision, event.sender),
            txn=platform.txn_id("outcome", approval.id),
        )
        resolution = await self.targets.resolve_target(self.account_id, room.room_id, event.reacts_to, decision)
        if resolution.outcome is Outcome.RESOLVED:
            await self.approvals.resolve(approval.id, decision)
            self.log.info("matrix_approval_resolved", extra={"approval": approval.id, "decision": decision})

    async def _maybe_expired(self, room_id: str, event: ReactionEvent) -> None:
        """No live target: say "expired" if the reaction is to a prompt past its expiry."""
        prompt = await self.io.fetch_event(room_id, event.reacts_to)
        expires_at = None if prompt is None else platform.prompt_expiry(prompt, self.account_id)
        if expires_at is not None and expires_at <= self._clock():
            await self._send_expired(room_id, event)

    async def _send_expired(self, room_id: str, event: ReactionEvent) -> None:
        await self.io.send(room_id, "m.room.message", platform.expired_content(), txn=platform.txn_id("expired", event.event_id))
