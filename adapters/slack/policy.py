"""When the bot answers a message: the mention policy, kept apart from where participation
is stored, so it can be tested (and changed) without a store and the store without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chatstate.adapters.slack.platform import SlackMessage

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
