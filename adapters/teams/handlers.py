"""Teams behaviour: whether an activity is for the bot, and one answer per inbound activity.

## When the bot answers (`TeamsBot`)

When to answer in Teams, and how the sent-message cache decides it.

In a channel or group chat the bot answers only when @mentioned, or when the message replies to
(or reacts to) a message the bot itself sent within the last 24 h: `reply_to_bot`. In a personal
chat it answers everything. Every answer starts with `[<classification>]`, so a person, the
demo and the tests can see why the bot spoke.

Edits (`messageUpdate`) are never answered: the message was answered (or not) when it was
first sent. A deleted bot message (`messageDelete` naming one of ours) is forgotten, so a reply
to it afterwards is an ordinary message again (it needs a mention); see docs/migrations/teams.md.


## One answer per activity (`ActivityGate`)

However often the channel delivers an activity, it is answered once.

Teams sends an activity again with the same id when the bot was slow to answer or the delivery
failed; a second turn would mean a second reply. Each answerable activity (`message`,
`messageReaction`) is claimed in `msteams.activities` before its turn runs:
- a copy arriving while this process still runs the turn waits for it, then gets 200 if the
  turn succeeded, 503 if it failed (a 200 would tell the channel the activity was handled);
- a copy of a finished activity gets 200 and no turn;
- a copy whose claim is a live lease of another process (one that died mid-turn, or is still
  working) gets 503 + Retry-After, so the channel tries later; once the lease has run out the
  activity is answered (nothing lost);
- a turn whose send failed releases its claim, so the channel's redelivery can answer it.
The claim is `gateway.claims.ClaimLedger`, atomic across gateways sharing a store.

"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from aiohttp import web
from botbuilder.core import ActivityHandler, TurnContext
from botbuilder.schema import Activity, ChannelAccount, MessageReaction

from chatstate.adapters.teams.state import ANSWERED_TYPES, SentMessages, activity_key
from chatstate.gateway import reply
from chatstate.gateway.claims import ClaimLedger
from chatstate.gateway.clock import now_ms

Turn = Callable[[], Awaitable[web.Response]]


class Classification(StrEnum):
    """Why an incoming activity is (or is not) for the bot."""

    MENTION = "mention"
    REPLY_TO_BOT = "reply_to_bot"
    PERSONAL = "personal"
    IGNORED = "ignored"


def _bot_mentions(activity: Activity) -> list[dict[str, Any]]:
    """The properties of each `mention` entity that names the bot (the recipient)."""
    bot_id = activity.recipient.id if activity.recipient else None
    if not bot_id:
        return []
    props = [m.additional_properties or {} for m in TurnContext.get_mentions(activity)]
    return [p for p in props if (p.get("mentioned") or {}).get("id") == bot_id]


def mentions_recipient(activity: Activity) -> bool:
    """True if one of the activity's `mention` entities names the bot (the recipient)."""
    return bool(_bot_mentions(activity))


def text_for_bot(activity: Activity) -> str:
    """The message text without the bot's own @mention; "" when the text is null or absent (a
    message that is only a card or an image).

    Not botbuilder's `remove_recipient_mention`: it needs a recipient and a text, and uses the
    mentioned name as a regular expression, so a null text, no recipient or a name such as
    "C++ (bot)" would raise. The mention's `text` (`<at>name</at>`) is removed literally.
    """
    text = activity.text if isinstance(activity.text, str) else ""
    for mention in _bot_mentions(activity):
        if isinstance(mention.get("text"), str) and mention["text"]:
            text = text.replace(mention["text"], "")
    return text.strip()


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
        text = text_for_bot(activity)
        await reply.respond(  # the user's reply hook, if any, composes the text (gateway/reply.py)
            reply.Message(
                text, getattr(activity.from_property, "id", ""), activity.conversation.id, "teams", activity.reply_to_id
            ),
            default=f"[{kind}] you said: {text}",
            send=turn_context.send_activity,
        )

    async def on_message_update_activity(self, turn_context: TurnContext) -> None:
        self.log.info("classified", extra={"classification": "ignored", "activity_type": "messageUpdate"})

    async def on_message_delete_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        ours = bool(activity.id) and await self.sent.forget(activity.conversation.id, activity.id)
        self.log.info("message_deleted", extra={"sent_by_bot": ours})

    async def on_reactions_added(self, message_reactions: list[MessageReaction], turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if not await self.sent.sent_by_bot(activity.conversation.id, activity.reply_to_id):
            self.log.info("classified", extra={"classification": "ignored", "activity_type": "messageReaction"})
            return
        self.log.info("classified", extra={"classification": "reply_to_bot", "activity_type": "messageReaction"})
        kinds = ", ".join(r.type for r in message_reactions if r.type)
        await turn_context.send_activity(f"[{Classification.REPLY_TO_BOT}] thanks for the {kinds}")

    async def on_members_added_activity(self, members_added: list[ChannelAccount], turn_context: TurnContext) -> None:
        recipient = turn_context.activity.recipient  # optional on the wire: no recipient, no greeting
        if recipient is not None and any(member.id == recipient.id for member in members_added):
            await turn_context.send_activity("Hi! Mention me, or reply to one of my messages.")


class ActivityGate:
    """Runs each answerable activity's turn at most once to completion (`msteams.activities`)."""

    def __init__(self, ledger: ClaimLedger) -> None:
        self.ledger = ledger
        self._inflight: dict[str, asyncio.Task[web.Response]] = {}

    async def once(self, activity: Activity, turn: Turn) -> web.Response:
        """Run `turn` for `activity` unless a copy of it was (or is being) answered."""
        if activity.type not in ANSWERED_TYPES or not activity.id or activity.conversation is None:
            return await turn()
        key = activity_key(activity.conversation.id, activity.id)
        running = self._inflight.get(key)
        if running is not None:
            await asyncio.wait({running})  # the first copy's turn decides this copy's answer
            failed = running.cancelled() or running.exception() is not None or running.result().status >= 300
            if failed:
                return web.Response(status=503, headers={"Retry-After": "1"}, text="the first copy failed")
            return web.Response(status=200)
        task = asyncio.create_task(self._claimed(key, turn), name=f"teams-activity-{key}")
        self._inflight[key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _claimed(self, key: str, turn: Turn) -> web.Response:
        received_at = now_ms()
        if not await self.ledger.claim(key, received_at=received_at):
            if await self.ledger.is_done(key):
                return web.Response(status=200)
            retry_after = math.ceil(self.ledger.lease_ms / 1000)
            return web.Response(status=503, headers={"Retry-After": str(retry_after)}, text="in progress elsewhere")
        try:
            response = await turn()
        except BaseException:
            await self.ledger.release(key)
            raise
        await self.ledger.mark_done(key, received_at=received_at)
        return response

    async def drain(self, timeout_s: float) -> None:
        """Let turns in flight finish (their writes are what a restart relies on)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout_s)
