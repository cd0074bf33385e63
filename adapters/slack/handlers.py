"""What the Slack bot does with an event: the gate's work and check (`sdk.InboundGate` does
the claim, the done mark, the ack budget and held events; plugin.py walks a SIGKILL through it).

- work (`respond`): decide (`MentionPolicy` + the participation lookup) and reply in the thread;
  `reply` is the one send path, so no path can forget to record: a new thread is recorded
  before the post, and the window's refresh and the user's quota count ride with the done mark;
- check (`answered_before`), after a takeover of a dead process's lease: is our reply (it
  carries the event_id as metadata) already in the thread? Then stage what the dead process
  could not commit, and answer nothing more.
The mention policy is kept apart from where participation is stored, so it can be tested (and
changed) without a store and the store without it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.platform import BotIdentity, SlackApi, SlackMessage
from chatstate.adapters.slack.state import ThreadParticipation, ThreadRef
from chatstate.gateway.sdk import AdapterState, Job, UserQuota, Writes, reply

QUOTA_NOTE = (
    "(You have {limit} threads I am following, the most one person may have, so I won't "
    "follow this one: mention me here to get an answer.)"
)

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


def without_mention(message: SlackMessage, bot_user_id: str) -> str:
    return message.text.replace(f"<@{bot_user_id}>", "").strip()


def compose_reply(message: SlackMessage, bot_user_id: str) -> str:
    """The answer when no reply hook is set: it echoes the text without the mention."""
    text = without_mention(message, bot_user_id)
    return f"echo: {text}" if text else "echo"


class SlackBot:
    """The bot's behaviour on Slack messages, handed to the gate as one `Job` per event."""

    def __init__(
        self,
        settings: SlackSettings,
        *,
        api: SlackApi,
        bot: BotIdentity,
        threads: ThreadParticipation,
        quota: UserQuota,
        watched: list[AdapterState],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.settings = settings
        self.bot = bot
        self._api = api
        self._threads = threads
        self._quota = quota
        self._watched = watched
        self._log = log
        self._policy = MentionPolicy(settings.require_mention, settings.require_explicit_mention)

    def job(self, message: SlackMessage) -> Job:
        """The gate's job for `message`: keyed `{team_id}:{event_id}`, held as its fields."""
        return Job(
            key=f"{message.team_id}:{message.event_id}",
            work=partial(self.respond, message),
            answered=partial(self.answered_before, message),
            hold=asdict(message),
        )

    def resume(self, _key: str, held: Any) -> Job | None:
        """The job of a held event (None for a row of another shape)."""
        try:
            return self.job(SlackMessage(**held))
        except TypeError:
            return None

    async def respond(self, message: SlackMessage, writes: Writes) -> str:
        """Apply the mention policy and reply if it says so: "replied" or "ignored"."""
        thread = self.thread_of(message)
        participated = False
        if self._policy.needs_participation(message, self.bot.user_id):
            participated = await self._threads.replied_in(thread) is not None
        answer, _reason = self._policy.decide(message, self.bot.user_id, participated=participated)
        if not answer:
            return "ignored"
        sent = await reply.respond(  # the user's reply hook, if any, composes the text (gateway/reply.py)
            reply.Message(
                without_mention(message, self.bot.user_id), message.user, message.channel, "slack", thread.thread_ts
            ),
            default=compose_reply(message, self.bot.user_id),
            send=lambda text: self.reply(writes, thread, text, event_id=message.event_id, requester=message.user),
        )
        return "replied" if sent else "ignored"

    async def answered_before(self, message: SlackMessage, writes: Writes) -> bool:
        """Did a process that died holding this event post its reply before the done mark? If
        so, stage the participation it could not commit. Raises as `SlackApi.find_reply`."""
        thread = self.thread_of(message)
        found = await self._api.answered(
            channel=thread.channel_id, thread_ts=thread.thread_ts, after_ts=message.ts, event_id=message.event_id
        )
        if found and await self._follow(writes, thread, message.user) != "refused":
            self._threads.record_participation(writes, thread, agent_id=self.settings.agent_id)
        return found

    # -- outbound: the one send path ------------------------------------------------------
    def thread_of(self, message: SlackMessage) -> ThreadRef:
        """The thread a reply to `message` goes to: keyed by the root, never a child ts."""
        return ThreadRef(message.team_id, self.settings.account_id, message.channel, message.thread_root)

    async def reply(self, writes: Writes, thread: ThreadRef, text: str, *, event_id: str, requester: str) -> str:
        """Post `text` in `thread`, answering `event_id`, and record participation; returns the
        posted message's ts.

        Every message the bot sends goes through here, so no send path can forget to record (a
        bug the reference system had). A thread new to the bot is recorded durably *before*
        the post: once the reply is visible a SIGKILL must not forget the thread, and the next
        follow-up may come before any redelivery of this event. Refreshing the window of a
        thread the bot follows rides with the event's done mark (one transaction). A new thread
        counts against `requester`'s quota (`threads_per_user`); past it the bot still answers,
        says it will not follow the thread, and records nothing.
        Raises SlackApiError / aiohttp.ClientError when the post fails; a row recorded ahead of
        it is removed again (the gate discards the staged rows and releases the event).
        """
        follow = await self._follow(writes, thread, requester)
        if follow == "refused":
            text = f"{text}\n{QUOTA_NOTE.format(limit=self.settings.threads_per_user)}"
        elif follow == "new":
            await self._threads.record_now(thread, agent_id=self.settings.agent_id)
        try:
            ts = await self._api.post_message(
                channel=thread.channel_id, text=text, thread_ts=thread.thread_ts, event_id=event_id
            )
        except Exception:
            if follow == "new":
                await self._threads.forget(thread)
            raise
        if follow != "refused":
            self._threads.record_participation(writes, thread, agent_id=self.settings.agent_id)
        return ts

    async def _follow(self, writes: Writes, thread: ThreadRef, requester: str) -> Literal["known", "new", "refused"]:
        """ "known": the bot follows `thread` already; "new": `requester` is under their quota (the
        thread is counted against them, in `writes`); "refused": they are at it. While the store
        fails every thread counts as known (fail open: an outage is not the time to refuse)."""
        if any(st.last_error for st in self._watched):
            # the store is failing (the claim just found out): follow uncounted and add no slow
            # calls. The quota's own state is not watched: it recovers through the next commit
            # it is part of, which this check would otherwise never let happen
            return "known"
        if await self._threads.replied_in(thread) is not None:
            return "known"  # a thread counts once, against the user who made the bot follow it
        if await self._quota.admit(f"{thread.team_id}:{requester}", writes) is None:
            return "new"
        self._log.info("thread_quota_refused", extra={"per_user": self._quota.per_user})
        return "refused"
