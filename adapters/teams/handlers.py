"""Teams behaviour: whether an activity is for the bot, and the gate's work and check.

In a channel or group chat the bot answers only when @mentioned, or when the message replies to
(or reacts to) a message the bot itself sent within the last 24 h: `reply_to_bot`; in a personal
chat, everything. Every answer starts with `[<classification>]`, so people and tests see why the
bot spoke. An edit (`messageUpdate`) is never answered: its message was, or was not, when sent.
A deleted bot message (`messageDelete`) is forgotten: a reply to it needs a mention again. An
`invoke` the bot does not implement (a card action, a task module) is acked 200 with a null body:
botbuilder's 501 would be a server error on the channel's side for a well-formed request.

One answer per `message`, `messageReaction` and `conversationUpdate` (the greeting):
`sdk.InboundGate` keyed like `state.sent_key`; the work is the botbuilder turn, its sends staging
into the gate's `Writes` (platform.py). The check after a takeover cannot ask Teams (no Bot
Connector call reads back what the bot sent), so a turn killed between the connector accepting
its reply and the done commit is answered again (docs/migrations/teams.md measures that window).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from botbuilder.core import ActivityHandler, InvokeResponse, TurnContext
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse, ChannelAccount, MessageReaction
from botframework.connector.auth import AuthenticateRequestResult

from chatstate.adapters.teams.platform import WRITES, Log, TeamsCloudAdapter, staged
from chatstate.adapters.teams.state import SentMessages, sent_key
from chatstate.gateway.sdk import InboundGate, Job, Refused, Writes, reply

ANSWERED_TYPES = ("message", "messageReaction", "conversationUpdate")  # gated: a redelivered copy is answered once
Classification = Literal["mention", "reply_to_bot", "personal", "ignored"]  # why it is (not) for the bot


def _bot_mentions(activity: Activity) -> list[dict[str, Any]]:
    """The properties of each `mention` entity that names the bot (the recipient)."""
    bot_id = activity.recipient.id if activity.recipient else None
    props = [m.additional_properties or {} for m in TurnContext.get_mentions(activity)]
    return [p for p in props if bot_id and (p.get("mentioned") or {}).get("id") == bot_id]


def text_for_bot(activity: Activity) -> str:
    """The message text without the bot's own @mention (its `<at>name</at>`, removed literally);
    "" when the text is null or absent. Not botbuilder's `remove_recipient_mention`: a null text,
    no recipient or a name such as "C++ (bot)" (used as a regular expression) would raise."""
    text = activity.text if isinstance(activity.text, str) else ""
    for mention in _bot_mentions(activity):
        if isinstance(mention.get("text"), str) and mention["text"]:
            text = text.replace(mention["text"], "")
    return text.strip()


@dataclass(eq=False)
class TeamsBot(ActivityHandler):
    """Answers mentions, personal chats and replies/reactions to its own recent messages."""

    sent: SentMessages
    adapter: TeamsCloudAdapter
    gate: InboundGate
    log: Log

    async def answer(self, authenticated: AuthenticateRequestResult, activity: Activity) -> web.Response:
        """Run the turn: through the gate if it may be answered (200, or 503 + Retry-After), else
        with its writes committed after it (502 when the Bot Connector failed; 200 if `Refused`)."""
        if activity.type in ANSWERED_TYPES and activity.id:
            return (await self.gate.deliver(self.job(authenticated, activity))).response()
        try:
            async with staged() as writes:
                invoke = await self.adapter.run(authenticated, activity, self, writes)
        except Refused:  # logged as bot_connector_failed
            invoke = None
        return web.Response(status=200) if invoke is None else web.json_response(invoke.body, status=invoke.status)

    def job(self, authenticated: AuthenticateRequestResult, activity: Activity) -> Job:
        """The gate's job for an answerable activity (parse guarantees its conversation)."""

        async def turn(writes: Writes) -> str:
            await self.adapter.run(authenticated, activity, self, writes)
            return "handled"

        return Job(sent_key(activity.conversation.id, activity.id), turn, answered=self.answered_before)

    async def answered_before(self, _writes: Writes) -> bool:
        """Did a dead turn's reply reach Teams? Unknowable (module docstring): answer again."""
        return False

    async def classify(self, activity: Activity) -> Classification:
        """Decide whether the bot is addressed; reads the sent-message cache for replies."""
        if await self.sent.sent_by_bot(activity.conversation.id, activity.reply_to_id):
            return "reply_to_bot"
        if _bot_mentions(activity):
            return "mention"
        return "personal" if activity.conversation.conversation_type == "personal" else "ignored"

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        kind = await self.classify(activity)
        self.log.info("classified", extra={"classification": kind, "activity_type": "message"})
        if kind == "ignored":
            return
        text = text_for_bot(activity)
        sender = getattr(activity.from_property, "id", None) or ""  # `from` may be null or absent
        await reply.respond(  # the user's reply hook, if any, composes the text (gateway/reply.py)
            reply.Message(text, sender, activity.conversation.id, "teams", activity.reply_to_id),
            default=f"[{kind}] you said: {text}",
            send=turn_context.send_activity,
        )

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse | None:
        """botbuilder's answer (sign-in invokes; 400 for a malformed card action, its error in the
        documented JSON form), or 200 with a null body where it says "not implemented"."""
        response = await super().on_invoke_activity(turn_context)
        if response is not None and response.status == HTTPStatus.NOT_IMPLEMENTED:
            self.log.info("classified", extra={"classification": "ignored", "activity_type": "invoke"})
            return InvokeResponse(status=HTTPStatus.OK)
        error = response.body if response is not None else None
        if isinstance(error, AdaptiveCardInvokeResponse) and isinstance(error.value, Exception):
            # botbuilder puts an Exception(code, message) in the body, which is no JSON
            code, message = [*map(str, error.value.args), "", ""][:2]
            value = {"code": code, "message": message}
            return InvokeResponse(
                status=response.status, body={"statusCode": error.status_code, "type": error.type, "value": value}
            )
        return response

    async def on_message_update_activity(self, turn_context: TurnContext) -> None:
        self.log.info("classified", extra={"classification": "ignored", "activity_type": "messageUpdate"})

    async def on_message_delete_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        writes = turn_context.turn_state[WRITES]
        ours = bool(activity.id) and await self.sent.forget(writes, activity.conversation.id, activity.id)
        self.log.info("message_deleted", extra={"sent_by_bot": ours})

    async def on_reactions_added(self, message_reactions: list[MessageReaction], turn_context: TurnContext) -> None:
        activity = turn_context.activity
        ours = await self.sent.sent_by_bot(activity.conversation.id, activity.reply_to_id)
        kind = "reply_to_bot" if ours else "ignored"
        self.log.info("classified", extra={"classification": kind, "activity_type": "messageReaction"})
        if ours:
            kinds = ", ".join(r.type for r in message_reactions if r.type)
            await turn_context.send_activity(f"[reply_to_bot] thanks for the {kinds}")

    async def on_members_added_activity(self, members_added: list[ChannelAccount], turn_context: TurnContext) -> None:
        recipient = turn_context.activity.recipient  # optional on the wire: no recipient, no greeting
        if recipient is not None and any(member.id == recipient.id for member in members_added):
            await turn_context.send_activity("Hi! Mention me, or reply to one of my messages.")
