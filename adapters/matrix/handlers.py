"""What the bot does with each event with effects, as one `sdk.InboundGate` job (claim, work,
done; docs/migrations/matrix.md walks through it):
- a request (`!approve <action>`, `!approve-once <action>`): within the requester's quota, post
  the prompt and seed one reaction per allowed decision, staging the approval, the reaction
  target and the quota count; over it, answer "too many pending approvals"; an action longer
  than `platform.MAX_ACTION_CHARS`, answer that it is too long;
- an approver's decision reaction (to something of an event id's shape): re-fetch it (a redacted one has no effect), post the outcome,
  stage the end of the target and the approval and give the count back; a prompt no longer
  answerable gets "this approval has expired", a resolved one silence;
- any other text, when the user set a reply hook: the hook's answer (`sdk.reply`); an edit
  (`m.replace`) is never acted on, as on the other platforms: its message was, or was not;
- the takeover check: what did the bot already say about the event (all it says references its
  cause)? A prompt found is finished, an outcome found resolves; found anything: no new answer.
A failing event is retried `event_max_attempts` times (honouring the homeserver's
`retry_after_ms`), then given up and marked done, so one bad room cannot stop the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from nio import ReactionEvent, RoomMessageText

import chatstate.gateway.sdk as sdk
from chatstate.adapters.matrix import platform
from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.platform import MatrixError, MatrixIO, decision_for
from chatstate.adapters.matrix.state import ReactionTarget, json_key
from chatstate.gateway.sdk import Approval, Job, Outcome, Writes, reply

RETRY_DELAYS_S = (0.25, 1.0, 2.0)  # between attempts of one event; the last one repeats
MAX_RETRY_AFTER_S = 30.0  # a homeserver asking for longer is capped: the loop must move on
LEASED_POLL_S = 0.5  # another gateway works on this event: look again this often


@dataclass
class Stats:
    """What /healthz shows about event handling (by these names)."""

    events_handled: int = 0
    events_failed: int = 0
    last_failed_event: dict[str, Any] | None = None
    replays_skipped: int = 0  # done before: by an earlier run, another device or gateway
    reactions_withdrawn: int = 0  # redacted in the same batch


@dataclass
class ApprovalFlow:
    """The bot's behaviour on one account's room events, handed to the gate one event at a time."""

    io: MatrixIO
    settings: MatrixSettings
    gate: sdk.InboundGate
    targets: sdk.AdapterState  # matrix.approval-reactions
    approvals: sdk.ApprovalService
    quota: sdk.UserQuota
    log: logging.LoggerAdapter[logging.Logger]
    clock: sdk.Clock = sdk.now_ms
    stats: Stats = field(default_factory=Stats)

    def key(self, *ids: str) -> str:
        """A store key of this bot account's: a target, a claim or a requester's count."""
        return json_key(self.io.user_id, *ids)

    def job(self, room_id: str, event: object) -> Job | None:
        """The gate's job for an event with effects (a request, an approver's decision), else None."""
        if event is None or getattr(event, "sender", self.io.user_id) == self.io.user_id:
            return None
        if isinstance(event, RoomMessageText) and platform.is_edit(event.source):
            return None
        if isinstance(event, RoomMessageText) and platform.parse_command(event.body) is not None:
            work, check = self._request, self._request_answered
        elif isinstance(event, RoomMessageText) and reply.hooked("matrix"):
            work, check = self._reply, self._said_anything
        elif (
            isinstance(event, ReactionEvent)
            and event.sender in self.settings.approvers
            and decision_for(event.key)
            and platform.is_event_id(event.reacts_to)
        ):
            work, check = self._reaction, self._reaction_answered
        else:
            return None
        attempts = partial(self._attempts, work, room_id, event)
        return Job(self.key(event.event_id), attempts, partial(check, room_id, event))

    async def room_events(self, room_id: str, events: list[Any]) -> None:
        """Handle `events` of one room in order, each through the gate. A reaction redacted later
        in the same list is skipped (it was withdrawn before we acted). Raises CancelledError
        when the gate is draining (the batch is then replayed next start)."""
        redacted = {getattr(e, "redacts", None) for e in events} - {None}
        for event in events:
            job = self.job(room_id, event)
            if job is not None and isinstance(event, ReactionEvent) and event.event_id in redacted:
                self.stats.reactions_withdrawn += 1
            elif job is not None:
                await self._deliver(room_id, event.event_id, job)

    async def _deliver(self, room_id: str, event_id: str, job: Job) -> None:
        failures = 0
        while True:
            answer = await self.gate.deliver(job)
            if answer.outcome is Outcome.DONE:
                self.stats.events_handled += answer.text != "failed"  # given up: counted in `failed`
                return
            if answer.outcome in (Outcome.ALREADY_DONE, Outcome.IN_PROGRESS):
                self.stats.replays_skipped += 1
                self.log.info("matrix_event_replay_skipped", extra={"event_id": event_id, "room": room_id})
                return
            if answer.outcome is Outcome.DRAINING:
                raise asyncio.CancelledError
            if answer.outcome is Outcome.FAILED:  # the takeover's check failed: try again, bounded
                failures += 1
                if failures >= self.settings.event_max_attempts:
                    return self._give_up(room_id, event_id, "the takeover check failed", failures)
            await asyncio.sleep(LEASED_POLL_S)  # LEASED: wait for its done mark or the lease's end

    async def _attempts(self, handle: Callable[..., Awaitable[str]], room_id: str, event: Any, writes: Writes) -> str:
        """Run `handle` up to `event_max_attempts` times; given up, the event is done all the same."""
        for attempt in range(1, self.settings.event_max_attempts + 1):
            try:
                return await handle(room_id, event, writes)
            except Exception as exc:
                writes.discard()
                reason = f"{type(exc).__name__}: {exc}"
                if attempt >= self.settings.event_max_attempts:
                    self._give_up(room_id, event.event_id, reason, attempt)
                    break
                delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)]
                if isinstance(exc, MatrixError) and exc.retry_after_ms:
                    delay = max(delay, min(exc.retry_after_ms / 1000, MAX_RETRY_AFTER_S))
                extra = {"event_id": event.event_id, "room": room_id, "attempt": attempt, "error": reason}
                self.log.warning("matrix_event_retry", extra=extra)
                await asyncio.sleep(delay)
        return "failed"

    def _give_up(self, room_id: str, event_id: str, reason: str, attempts: int) -> None:
        self.stats.events_failed += 1
        self.stats.last_failed_event = {"event_id": event_id, "room": room_id, "error": reason, "attempts": attempts}
        self.log.error("matrix_event_failed", extra=self.stats.last_failed_event)

    # -- plain messages: the user's reply hook ---------------------------------------------
    async def _reply(self, room_id: str, event: RoomMessageText, writes: Writes) -> str:
        def send(text: str) -> Awaitable[str]:
            content = platform.notice(text, event.event_id, msgtype="m.text")
            return self.io.say(room_id, content, kind="reply", cause=event.event_id)

        said = await reply.respond(reply.Message(event.body, event.sender, room_id, "matrix"), default=None, send=send)
        return "replied" if said else "ignored"

    async def _said_anything(self, room_id: str, event: RoomMessageText, writes: Writes) -> bool:
        return bool(await self.io.said_about(room_id, event.event_id))

    # -- requests -------------------------------------------------------------------------
    def _approval(self, room_id: str, event: RoomMessageText) -> Approval:
        """The approval `event` asks for; it counts from the request message (our clock if that
        is behind), so every attempt and takeover gets the same deadline."""
        action, decisions = platform.parse_command(event.body) or ("", ())  # job() routes only commands here
        asked = min(event.server_timestamp, self.clock())
        context = {"room_id": room_id, "request_event_id": event.event_id}
        approval_id = platform.approval_id(room_id, event.event_id)
        return Approval(
            approval_id, action, event.sender, decisions, asked, asked + self.settings.approval_ttl_ms, context
        )

    async def _request(self, room_id: str, event: RoomMessageText, writes: Writes) -> str:
        """Post the prompt and stage its rows, or refuse over the quota."""
        approval = self._approval(room_id, event)
        if approval.expires_at <= self.clock():
            self.log.info("matrix_request_expired", extra={"approval": approval.id, "room": room_id})
            return "expired"
        refusal = None
        if len(approval.action) > platform.MAX_ACTION_CHARS:
            refusal = platform.too_long_content(len(approval.action), event.event_id)
        elif await self.quota.admit(self.key(event.sender), writes) is not None:
            refusal = platform.refused_content(event.sender, self.settings.max_pending_per_requester, event.event_id)
        if refusal is not None:
            await self.io.say(room_id, refusal, kind="refused", cause=event.event_id)
            self.log.info("matrix_request_refused", extra={"requester": event.sender, "room": room_id})
            return "refused"
        content = platform.prompt_content(approval, event.event_id)
        prompt_id = await self.io.say(room_id, content, kind="prompt", cause=event.event_id)
        await self._finish_prompt(writes, room_id, prompt_id, approval, seeded=())
        return "prompted"

    async def _finish_prompt(
        self, writes: Writes, room_id: str, prompt_id: str, approval: Approval, *, seeded: tuple[str, ...]
    ) -> None:
        """Stage the approval and the prompt's target (they live as long as the approval), and
        seed the reactions not in `seeded`."""
        if not self.approvals.open(writes, approval):
            return  # expired meanwhile: nothing left to ask
        target = ReactionTarget(approval.id, approval.decisions).to_json()
        remaining = approval.expires_at - self.clock()
        writes.put(self.targets, self.key(room_id, prompt_id), target, ttl_ms=max(remaining, 1))
        for decision in approval.decisions:
            if (emoji := platform.EMOJI[decision]) not in seeded:
                content = {"m.relates_to": {"rel_type": platform.ANNOTATION, "event_id": prompt_id, "key": emoji}}
                await self.io.say(room_id, content, kind=f"seed-{decision}", cause=prompt_id, event_type="m.reaction")
        self.log.info("matrix_prompt_posted", extra={"approval": approval.id, "room": room_id})

    async def _request_answered(self, room_id: str, event: RoomMessageText, writes: Writes) -> bool:
        """After a takeover: did the bot already answer this request? A prompt found is finished."""
        said = await self.io.said_about(room_id, event.event_id)
        prompt = next((e for e in said if platform.prompt_expiry(e, self.io.user_id) is not None), None)
        approval = self._approval(room_id, event)
        if prompt is not None and approval.expires_at > self.clock():
            await self.quota.admit(self.key(event.sender), writes)  # counted if there is room
            reactions = await self.io.said_about(room_id, prompt["event_id"], platform.ANNOTATION)
            seeded = tuple(r["content"]["m.relates_to"].get("key", "") for r in reactions)
            await self._finish_prompt(writes, room_id, prompt["event_id"], approval, seeded=seeded)
        return bool(said)

    # -- reactions ------------------------------------------------------------------------
    async def _reaction(self, room_id: str, event: ReactionEvent, writes: Writes) -> str:
        """Resolve the prompt `event` reacts to, if the decision is one it offers."""
        decision = decision_for(event.key)
        value = await self.targets.get(self.key(room_id, event.reacts_to))
        if value is None:
            return await self._not_answerable(room_id, event)
        target = ReactionTarget.from_json(value)
        if decision is None or decision not in target.decisions:
            return "ignored"
        approval = await self.approvals.get(target.approval_id)
        if approval is None:  # the approval's row expired a moment before the target's
            return await self._send_expired(room_id, event)
        current = await self.io.fetch_event(room_id, event.event_id)
        if current is None or platform.is_redacted(current):  # our batch was stale
            self.log.info("matrix_reaction_withdrawn", extra={"event_id": event.event_id, "room": room_id})
            return "withdrawn"
        content = platform.outcome_content(approval, decision, event.sender, event.event_id)
        await self.io.say(room_id, content, kind="outcome", cause=approval.id)
        await self._resolve(writes, room_id, event.reacts_to, approval)
        self.log.info("matrix_approval_resolved", extra={"approval": approval.id, "decision": decision})
        return "resolved"

    async def _resolve(self, writes: Writes, room_id: str, prompt_id: str, approval: Approval) -> None:
        writes.delete(self.targets, self.key(room_id, prompt_id))
        self.approvals.resolve(writes, approval.id)
        await self.quota.release(self.key(approval.requested_by), writes)

    async def _reaction_answered(self, room_id: str, event: ReactionEvent, writes: Writes) -> bool:
        """After a takeover: did the bot already answer this reaction? An outcome found resolves."""
        said = await self.io.said_about(room_id, event.event_id)
        for answer in said:
            if approval := await self._pending(answer):
                await self._resolve(writes, room_id, event.reacts_to, approval)
        return bool(said)

    async def _pending(self, event: dict[str, Any]) -> Approval | None:
        """The still pending approval a prompt or outcome event names, if any."""
        approval_id = platform.approval_of(event).get("id")
        return await self.approvals.get(approval_id) if isinstance(approval_id, str) else None

    async def _not_answerable(self, room_id: str, event: ReactionEvent) -> str:
        """No live target. Our prompt whose approval expired, or is still pending (its target
        was evicted), gets "expired"; a resolved prompt or any other event stays silent."""
        prompt = await self.io.fetch_event(room_id, event.reacts_to)
        expires_at = None if prompt is None else platform.prompt_expiry(prompt, self.io.user_id)
        if prompt is None or expires_at is None:
            return "ignored"
        if expires_at <= self.clock() or await self._pending(prompt) is not None:
            return await self._send_expired(room_id, event)
        return "ignored"

    async def _send_expired(self, room_id: str, event: ReactionEvent) -> str:
        content = platform.notice(platform.EXPIRED_TEXT, event.event_id)
        await self.io.say(room_id, content, kind="expired", cause=event.event_id)
        return "expired"
