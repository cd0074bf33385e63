"""What the Slack bot does with an event: the gate's prepare, work and check (`sdk.InboundGate`
does the claim, the done mark, the ack budget and held events).

- prepare: decide (`MentionPolicy` + the participation lookup); a thread new to the bot is
  recorded and counted against the user's quota with the claim, before the post: a SIGKILL after
  it must not lose the thread (a follow-up may come first) nor its count (the retry finds it known);
- work (`respond`): reply through `reply`, the one send path, so no path can forget to record;
- check (`answered_before`), after a takeover of a dead process's lease: is our reply (it
  carries the event_id as metadata) already in the thread? Then stage what the dead process
  could not commit, and answer nothing more.
The mention policy is apart from where participation is stored: each is tested without the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.platform import SlackApi, SlackMessage
from chatstate.adapters.slack.state import ThreadParticipation, ThreadRef
from chatstate.gateway.sdk import AdapterState, Job, UserQuota, Writes, reply

QUOTA_NOTE = (
    "(You have {limit} threads I am following, the most one person may have, so I won't "
    "follow this one: mention me here to get an answer.)"
)
Reason = Literal[
    "explicit_mention",  # the text @mentions the bot
    "left_to_app_mention",  # a channel `message` that @mentions the bot: its `app_mention` twin is answered
    "direct_message",  # a DM needs no mention
    "mention_not_required",  # require_mention = false
    "reply_to_bot",  # implicit: the thread's parent message is the bot's
    "bot_thread_participant",  # implicit: the bot replied in this thread within the TTL
    "own_message",  # never answer ourselves
    "no_mention",  # nothing above applies
]
Follow = Literal["known", "new", "refused"]  # the bot follows the thread already / starts to / may not


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
        if message.event_type == "app_mention" or message.mentions(bot_user_id):  # whatever its text says
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


@dataclass
class Turn:
    """One event on its way through the gate: what its prepare decided, for its work and check."""

    message: SlackMessage
    thread: ThreadRef  # keyed by the thread's root, never a child ts
    answer: bool = False
    follow: Follow = "known"
    prepared: Writes = field(default_factory=Writes)


@dataclass
class SlackBot:
    """The bot's behaviour on Slack messages, handed to the gate as one `Job` per event."""

    settings: SlackSettings
    api: SlackApi
    bot_user_id: str
    threads: ThreadParticipation
    quota: UserQuota
    watched: list[AdapterState]  # while one fails, every thread counts as known (`_follow`)
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]

    def __post_init__(self) -> None:
        self.policy = MentionPolicy(self.settings.require_mention, self.settings.require_explicit_mention)

    def job(self, message: SlackMessage) -> Job:
        """The gate's job for `message`: keyed `{team_id}:{event_id}`, held as its fields."""
        thread = ThreadRef(message.team_id, self.settings.account_id, message.channel, message.thread_root)
        turn = Turn(message, thread)
        return Job(
            key=f"{message.team_id}:{message.event_id}",
            work=partial(self.respond, turn),
            answered=partial(self.answered_before, turn),
            hold=vars(message),  # its fields, all plain JSON
            prepare=partial(self.prepare, turn),
        )

    def resume(self, _key: str, held: Any) -> Job | None:
        """The job of a held event (None for a row of another shape)."""
        try:
            return self.job(SlackMessage(**held))
        except TypeError:
            return None

    async def prepare(self, turn: Turn, writes: Writes) -> None:
        """Apply the mention policy; to answer in a thread new to the bot, count it against the
        user's quota and record it, into `writes` (committed with the claim)."""
        turn.prepared = writes
        message, bot_user_id = turn.message, self.bot_user_id
        participated = False
        if self.policy.needs_participation(message, bot_user_id):
            participated = await self.threads.replied_in(turn.thread) is not None
        turn.answer, _reason = self.policy.decide(message, bot_user_id, participated=participated)
        if turn.answer:
            turn.follow = await self._follow(writes, turn.thread, message)

    async def respond(self, turn: Turn, writes: Writes) -> str:
        """Reply if the prepare decided so: "replied" or "ignored"."""
        if not turn.answer:
            return "ignored"
        message = turn.message
        text = message.text.replace(f"<@{self.bot_user_id}>", "").strip()  # without the bot's mention
        # the user's reply hook, if any, composes the text (sdk.reply); None: say nothing
        said = await reply.respond(
            reply.Message(text, message.user, message.channel, "slack", turn.thread.thread_ts),
            default=f"echo: {text}" if text else "echo",
            send=lambda answer: self.reply(writes, turn.thread, answer, event_id=message.event_id, follow=turn.follow),
        )
        if not said:
            turn.prepared.undo(writes)  # nothing posted: the thread it was prepared for is not followed
        return "replied" if said else "ignored"

    async def answered_before(self, turn: Turn, writes: Writes) -> bool:
        """Did a process that died holding this event post its reply before the done mark? If
        so, stage the participation it could not commit. Raises as `SlackApi.find_reply`."""
        thread, message = turn.thread, turn.message
        found = await self.api.find_reply(
            channel=thread.channel_id, thread_ts=thread.thread_ts, after_ts=message.ts, event_id=message.event_id
        )
        if found is not None and turn.follow == "known":  # a new thread's row came with the claim
            self.threads.record_participation(writes, thread, agent_id=self.settings.agent_id)
        return found is not None

    async def reply(self, writes: Writes, thread: ThreadRef, text: str, *, event_id: str, follow: Follow) -> str:
        """Post `text` in `thread`, answering `event_id`; returns the posted ts. Every message the
        bot sends goes through here, so no send path can forget to record (a bug the reference
        system had): a thread the bot follows has its window refreshed (it runs from the last
        reply); a new one was recorded with the claim, just now. Past the user's quota (`follow`
        "refused") the bot answers, says it will not follow the thread, and records nothing.
        Raises SlackApiError / aiohttp.ClientError when the post fails (the gate then puts the
        prepared rows back and releases the event)."""
        if follow == "refused":
            text = f"{text}\n{QUOTA_NOTE.format(limit=self.settings.threads_per_user)}"
        ts = await self.api.post_message(
            channel=thread.channel_id, text=text, thread_ts=thread.thread_ts, event_id=event_id
        )
        if follow == "known":
            self.threads.record_participation(writes, thread, agent_id=self.settings.agent_id)
        return ts

    async def _follow(self, writes: Writes, thread: ThreadRef, message: SlackMessage) -> Follow:
        """ "known": the bot follows `thread` already; "new": the user is under their quota (the
        thread is counted against them and recorded, in `writes`); "refused": they are at it."""
        if any(st.last_error for st in self.watched):
            # the store is failing: fail open (an outage is not the time to refuse), follow
            # uncounted, add no slow calls. The quota's own state is not watched: it recovers
            # through the next commit it is part of, which this would otherwise never let happen
            return "known"
        # a top-level message starts its thread: only an earlier attempt at this event can have
        # recorded it (with its claim), and the gate prepares again, reading, before a takeover
        if message.thread_ts is None and not writes.earlier_attempt:
            writes.skipped_reads = True
        elif await self.threads.replied_in(thread) is not None:
            return "known"  # a thread counts once, against the user who made the bot follow it
        if await self.quota.admit(f"{thread.team_id}:{message.user}", writes) is None:
            self.threads.record_participation(writes, thread, agent_id=self.settings.agent_id)
            return "new"
        self.log.info("thread_quota_refused", extra={"per_user": self.quota.per_user})
        return "refused"
