"""The bot: when to answer in Teams, and how the sent-message cache decides it.

In a channel or group chat the bot answers only when @mentioned, or when the message replies to
(or reacts to) a message the bot itself sent within the last 24 h: `reply_to_bot`. In a personal
chat it answers everything. Every answer starts with `[<classification>]`, so a person, the
demo and the tests can see why the bot spoke.

Edits (`messageUpdate`) are never answered: the message was answered (or not) when it was
first sent. A deleted bot message (`messageDelete` naming one of ours) is forgotten, so a reply
to it afterwards is an ordinary message again (it needs a mention); see docs/migrations/teams.md.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from botbuilder.core import ActivityHandler, TurnContext
from botbuilder.schema import Activity, ChannelAccount, MessageReaction

from chatstate.adapters.teams.sent import SentMessages


class Classification(StrEnum):
    """Why an incoming activity is (or is not) for the bot."""

    MENTION = "mention"
    REPLY_TO_BOT = "reply_to_bot"
    PERSONAL = "personal"
    IGNORED = "ignored"


def mentions_recipient(activity: Activity) -> bool:
    """True if one of the activity's `mention` entities names the bot (the recipient)."""
    bot_id = activity.recipient.id if activity.recipient else None
    for mention in TurnContext.get_mentions(activity):
        mentioned = (mention.additional_properties or {}).get("mentioned") or {}
        if bot_id and mentioned.get("id") == bot_id:
            return True
    return False


class TeamsBot(ActivityHandler):
    """Answers mentions, personal chats and replies/reactions to its own recent messages."""

    def __init__(self, sent: SentMessages, *, log: logging.LoggerAdapter[Any] | logging.Logger) -> None:
        self.sent = sent
        self.log = log

    async def classify(self, activity: Activity) -> Classification:
        """Decide whether the bot is addressed; reads the sent-message cache for replies."""
        if await self.sent.sent_by_bot(activity.conversation.id, activity.reply_to_id):
            return Classification.REPLY_TO_BOT
        if mentions_recipient(activity):
            return Classification.MENTION
        if activity.conversation.conversation_type == "personal":
            return Classification.PERSONAL
        return Classification.IGNORED

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        kind = await self.classify(activity)
        self.log.info("classified", extra={"classification": str(kind), "activity_type": "message"})
        if kind is Classification.IGNORED:
            return
        text = (TurnContext.remove_recipient_mention(activity) or "").strip()
        await turn_context.send_activity(f"[{kind}] you said: {text}")

    async def on_message_update_activity(self, turn_context: TurnContext) -> None:
        self.log.info("classified", extra={"classification": "ignored", "activity_type": "messageUpdate"})

    async def on_message_delete_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        ours = bool(activity.id) and await self.sent.forget(activity.conversation.id, activity.id)
        self.log.info("message_deleted", extra={"sent_by_bot": ours})

    async def on_reactions_added(
        self, message_reactions: list[MessageReaction], turn_context: TurnContext
    ) -> None:
        activity = turn_context.activity
        if not await self.sent.sent_by_bot(activity.conversation.id, activity.reply_to_id):
            self.log.info("classified", extra={"classification": "ignored", "activity_type": "messageReaction"})
            return
        self.log.info("classified", extra={"classification": "reply_to_bot", "activity_type": "messageReaction"})
        kinds = ", ".join(r.type for r in message_reactions if r.type)
        await turn_context.send_activity(f"[{Classification.REPLY_TO_BOT}] thanks for the {kinds}")

    async def on_members_added_activity(
        self, members_added: list[ChannelAccount], turn_context: TurnContext
    ) -> None:
        bot_id = turn_context.activity.recipient.id
        if any(member.id == bot_id for member in members_added):
            await turn_context.send_activity("Hi! Mention me, or reply to one of my messages.")
