"""What the Slack bot does with an event, exactly once: claim, decide, reply, record, mark done.

Moved out of plugin.py (wiring only) with the mention policy (was policy.py). The steps, each
write awaited before the next (plugin.py's docstring walks a SIGKILL through them):
1. claim `{team_id}:{event_id}` under a short lease in `slack.events`;
2. decide (`MentionPolicy` + the participation lookup), reply in the thread, record
   participation (`reply` is the one send path, so no path can forget to record);
3. replace the lease with the done mark; a failed post releases the lease for Slack's retry.
`accept` waits `ack_budget_s` for that, then holds the event in `slack.pending` and lets it
finish in the background; `recover_held` finishes held events whose process died.
The mention policy is kept apart from where participation is stored, so it can be tested (and
changed) without a store and the store without it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import aiohttp
from slack_sdk.errors import SlackApiError

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.platform import BotIdentity, SlackApi, SlackMessage
from chatstate.adapters.slack.state import EventLedger, PendingWork, ThreadParticipation, ThreadQuota, ThreadRef
from chatstate.gateway import reply
from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.clock import now_ms

QUOTA_NOTE = (
    "(You have {limit} threads I am following, the most one person may have, so I won't "
    "follow this one: mention me here to get an answer.)"
)
STOP_TIMEOUT_S = 10.0  # how long stop() waits for replies still being written
MIN_RECOVERY_INTERVAL_S = 0.2  # the recovery loop looks for orphaned held events every lease/2

Reason = Literal[
    "explicit_mention",  # the text @mentions the bot
    "left_to_app_mention",  # a channel `message` event that @mentions the bot: Slack also
    #                         sends an `app_mention` event for it, and that one is answered
    "direct_message",  # a DM needs no mention
    "mention_not_required",  # require_mention = false
    "reply_to_bot",  # implicit: the thread's parent message is the bot's
    "bot_thread_participant",  # implicit: the bot replied in this thread within the TTL
    "own_message",  # never answer ourselves
    "no_mention",  # nothing above applies
]
IMPLICIT: frozenset[Reason] = frozenset({"reply_to_bot", "bot_thread_participant"})


@dataclass(frozen=True)
class MentionPolicy:
    """`require_mention` and `require_explicit_mention` from the adapter's config."""

    require_mention: bool = True
    require_explicit_mention: bool = False

    def needs_participation(self, message: SlackMessage, bot_user_id: str) -> bool:
        """Whether `decide` could use the participation lookup (skip the read otherwise)."""
        return (
            self.require_mention
            and not self.require_explicit_mention
            and message.thread_ts is not None
            and self.decide(message, bot_user_id, participated=False)[0] is False
        )

    def decide(self, message: SlackMessage, bot_user_id: str, *, participated: bool) -> tuple[bool, Reason]:
        """Return (answer?, why). `participated`: the bot has a live row for this thread."""
        if message.user == bot_user_id:
            return False, "own_message"
        if message.mentions(bot_user_id):
            if message.event_type == "message" and message.channel_type != "im":
                return False, "left_to_app_mention"
            return True, "explicit_mention"
        if message.channel_type == "im":
            return True, "direct_message"
        if not self.require_mention:
            return True, "mention_not_required"
        if self.require_explicit_mention:
            return False, "no_mention"
        if message.thread_ts is not None and message.parent_user_id == bot_user_id:
            return True, "reply_to_bot"
        if message.thread_ts is not None and participated:
            return True, "bot_thread_participant"
        return False, "no_mention"


class Outcome(Enum):
    """What became of one delivery; decides the HTTP answer Slack gets."""

    REPLIED = "replied"
    IGNORED = "ignored"  # the policy said no; the event is still marked done
    ALREADY_DONE = "already_done"  # a retry or duplicate of a finished event: ack and drop
    IN_PROGRESS = "in_progress"  # a duplicate of an event this process is working on
    LEASED = "leased"  # a live lease nobody here owns (its process died mid-reply)
    FAILED = "failed"  # the Web API call failed; the lease is released for Slack's retry


def without_mention(message: SlackMessage, bot_user_id: str) -> str:
    return message.text.replace(f"<@{bot_user_id}>", "").strip()


def compose_reply(message: SlackMessage, bot_user_id: str) -> str:
    """The answer when no reply hook is set: it echoes the text without the mention."""
    text = without_mention(message, bot_user_id)
    return f"echo: {text}" if text else "echo"


class EventWork:
    """The exactly-once work on Slack events of one plugin: in-flight tasks, held events, the
    lease/ack protocol above, and the one send path."""

    def __init__(
        self,
        settings: SlackSettings,
        *,
        api: SlackApi,
        bot: BotIdentity,
        threads: ThreadParticipation,
        events: EventLedger,
        pending: PendingWork,
        quota: ThreadQuota,
        states: list[AdapterState],
        legacy: bool,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.settings = settings
        self.bot = bot
        self.legacy = legacy
        self._api = api
        self._threads = threads
        self._events = events
        self._pending = pending
        self._quota = quota
        self._states = states
        self._log = log
        self._policy = MentionPolicy(settings.require_mention, settings.require_explicit_mention)
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self._held: set[str] = set()  # keys this process holds in slack.pending

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def drain(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Let replies in flight finish (their writes are what a restart relies on)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout_s)

    async def accept(self, message: SlackMessage, *, retried: bool = False) -> Outcome | None:
        """Start (or join) the work on `message`; return its outcome, or None if it is still
        running after `ack_budget_s` (then it finishes in the background)."""
        key = EventLedger.key(message.team_id, message.event_id)
        if key in self._inflight:
            return Outcome.IN_PROGRESS
        task = self._start(key, message, retried=retried)
        done, _ = await asyncio.wait({task}, timeout=self.settings.ack_budget_s)
        if done:
            return task.result()
        if not self.legacy:
            # Slack gets its 200 now and will not retry: hold the event first, so a crash
            # before the reply lands leaves it to the recovery loop instead of losing it
            self._held.add(key)
            await self._pending.hold(key, message)
        return None

    def _start(self, key: str, message: SlackMessage, *, retried: bool) -> asyncio.Task[Outcome]:
        task = asyncio.create_task(self._run(key, message, retried=retried), name=f"slack-event-{key}")
        self._inflight[key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return task

    async def recover_held(self) -> None:
        """Finish events held in `slack.pending` that no task here is working on: those of a
        process that died after acking them; and try the store again for each degraded state. The event claim decides who does it (a live
        owner's lease makes this a no-op until it finishes or its lease runs out)."""
        interval = max(MIN_RECOVERY_INTERVAL_S, self.settings.event_lease_ms / 2000)
        while True:
            for state in self._states:  # a degraded namespace nothing calls would stay degraded
                if state.last_error is not None:
                    await state.recover()
            for key, message in await self._pending.held():
                if key not in self._inflight:
                    self._log.info("slack_held_event_taken", extra={"event_key": key})
                    self._held.add(key)
                    self._start(key, message, retried=True)
            await asyncio.sleep(interval)

    async def _run(self, key: str, message: SlackMessage, *, retried: bool) -> Outcome:
        """Claim, answer, mark done; every write awaited before the next step."""
        received_at = now_ms()
        if not await self._events.claim(key, received_at=received_at):
            if await self._events.is_done(key):
                await self._finish_held(key)
                return Outcome.ALREADY_DONE
            return Outcome.LEASED
        try:
            if retried and not self.legacy and await self._answered_before(message):
                await self._events.mark_done(key, received_at=received_at)
                await self._finish_held(key)
                return Outcome.ALREADY_DONE
            replied = await self._respond(message)
        except (TimeoutError, SlackApiError, aiohttp.ClientError) as exc:
            self._log.warning("slack_reply_failed", extra={"event_key": key, "error": type(exc).__name__})
            await self._events.release(key)
            return Outcome.FAILED
        await self._events.mark_done(key, received_at=received_at)
        await self._finish_held(key)
        return Outcome.REPLIED if replied else Outcome.IGNORED

    async def _finish_held(self, key: str) -> None:
        """Drop the `slack.pending` row of a done event, if this process held or recovered it."""
        if key in self._held:
            self._held.discard(key)
            await self._pending.finish(key)

    async def _answered_before(self, message: SlackMessage) -> bool:
        """For a retried event we just claimed: did an earlier attempt post its reply and die
        before marking the event done? If so, record the participation it could not record.

        Part of the migration, so legacy mode (the "before") does not do it.
        """
        thread = self.thread_of(message)
        found = await self._api.answered(
            channel=thread.channel_id, thread_ts=thread.thread_ts, after_ts=message.ts, event_id=message.event_id
        )
        if found and await self._may_follow(thread, message.user):
            await self._threads.record_participation(thread, agent_id=self.settings.agent_id)
        return found

    async def _respond(self, message: SlackMessage) -> bool:
        """Apply the mention policy and reply if it says so; True if the bot replied."""
        thread = self.thread_of(message)
        participated = False
        if self._policy.needs_participation(message, self.bot.user_id):
            participated = await self._threads.replied_in(thread) is not None
        answer, _reason = self._policy.decide(message, self.bot.user_id, participated=participated)
        if answer:  # the user's reply hook, if any, composes the text (gateway/reply.py)
            answer = await reply.respond(
                reply.Message(
                    without_mention(message, self.bot.user_id), message.user, message.channel, "slack", thread.thread_ts
                ),
                default=compose_reply(message, self.bot.user_id),
                send=lambda text: self.reply(thread, text, event_id=message.event_id, requester=message.user),
            )
        return answer

    # -- outbound: the one send path ------------------------------------------------------
    def thread_of(self, message: SlackMessage) -> ThreadRef:
        """The thread a reply to `message` goes to: keyed by the root, never a child ts."""
        return ThreadRef(message.team_id, self.settings.account_id, message.channel, message.thread_root)

    async def reply(self, thread: ThreadRef, text: str, *, event_id: str, requester: str | None = None) -> str:
        """Post `text` in `thread`, answering `event_id`, and record participation; returns
        the posted message's ts.

        Every message the bot sends goes through here, so no send path can forget to record
        (a bug the reference system had). The row is durable *before* the post, so once the
        reply is visible in Slack a SIGKILL cannot lose the thread (an early-acked event's
        recovery only runs after its lease). A thread new to the bot counts against
        `requester`'s quota (`threads_per_user`); past it the bot still answers, says it will
        not follow the thread, and records nothing (issue 15).
        Raises SlackApiError / aiohttp.ClientError when the post fails; the row is removed
        again then (a failed send records nothing; the event is released, and the retry that
        posts records it anew).
        """
        follow = requester is None or await self._may_follow(thread, requester)
        if follow:
            await self._threads.record_participation(thread, agent_id=self.settings.agent_id)
        else:
            text = f"{text}\n{QUOTA_NOTE.format(limit=self.settings.threads_per_user)}"
        try:
            return await self._api.post_message(
                channel=thread.channel_id, text=text, thread_ts=thread.thread_ts, event_id=event_id
            )
        except Exception:
            if follow:
                await self._threads.forget(thread)
            raise

    async def _may_follow(self, thread: ThreadRef, requester: str) -> bool:
        """True if `requester` is under their quota (one read, one write for a thread new to
        them), or the bot already follows `thread`, or the quota's store is failing."""
        if any(st.last_error for st in self._states):
            return True  # the store is failing (the claim just found out): fail open, add no slow calls
        admitted = await self._quota.admit(thread, user_id=requester)
        if admitted is not False:
            return True
        if await self._threads.replied_in(thread) is not None:
            return True  # at the quota, but the bot already follows this thread: keep following
        self._log.info("thread_quota_refused", extra={"per_user": self._quota.per_user})
        return False
