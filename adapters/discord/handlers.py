"""What the bot does with each verified interaction: the gate's work (`respond`) and check.

The order of a click (docs/migrations/discord.md): peek the entry (missing or expired ->
"expired"); check kind and user (a refused user gets an ephemeral "not for you", the entry
stays); only then, for a single-use entry, claim its use in `discord.used` (one atomic write
that names the user: of racing clicks exactly one wins, every later one is told "already used")
and stage its consumption with the done mark.

Discord wants the initial response within 3 s of the interaction's arrival, over either
transport. `respond` gives the work DEFER_AFTER_S from the arrival; work still running then is
answered with a deferred response (type 5, or 6 for a click) and finished through the
interaction webhook (edit the original, or a follow-up). A token that died meanwhile (10062,
50027) or an interaction already answered (40060) is logged, not raised: the work itself is done.

## The bot's messages (`build_panel`, `build_modal`)

The bot's messages, built with discord.py's `discord.ui` and serialized by discord.py.

A panel is one message with four components: a reusable "Refresh" button, a single-use
"Approve" button, a reusable colour select, and a "Feedback" button that opens a modal. Each
custom_id is fresh (`<action>:<random>`), so the registry entry is the only thing that knows
what a click means; that is what must survive a restart. The modal is rebuilt from its
registry entry when the trigger is clicked, so it too works after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import discord

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.rest import DiscordRest, InteractionGone, RestError
from chatstate.adapters.discord.state import ComponentEntry, ModalEntry, ModalField, Registry
from chatstate.gateway.sdk import Job, UserQuota, Writes, now_ms, reply

EXPIRED = "This component has expired."
NOT_FOR_YOU = "This component is not for you."
ALREADY_USED = "This component was already used."
YOU_ALREADY_USED = "You already used this component."
QUOTA_REFUSED = (
    "You already have {limit} live panels, the most one person may have; your oldest expires in about {minutes} min."
)
PANEL_COMMAND = "panel"  # /panel [restrict_to:<user>] posts a panel in the channel
DEFER_AFTER_S = 2.0  # Discord's deadline is 3 s; answer "deferred" if the work is not done by then
CALLBACK_FAILED = "callback_failed"  # the work's word when Discord refused the initial response
Send = Callable[[dict[str, Any]], Awaitable[None]]  # delivers the initial response
DEFERRABLE = (
    discord.InteractionType.application_command,
    discord.InteractionType.component,
    discord.InteractionType.modal_submit,
)


def allowed(entry: ComponentEntry | ModalEntry, user_id: str) -> bool:
    return not entry["allowed_user_ids"] or user_id in entry["allowed_user_ids"]


async def too_late(_writes: Writes) -> bool:
    """The gate's check after taking over a dead process's claim: the lease (15 s) outlives
    Discord's 3 s window for the initial response, so the interaction was either answered
    already or can no longer be; either way applying its effect now would be an effect the
    user is never told about."""
    return True


class DiscordBot:
    """Answers interactions; sends panels through `rest` and records them in `registry`."""

    def __init__(
        self,
        registry: Registry,
        rest: DiscordRest,
        *,
        log: logging.LoggerAdapter[logging.Logger],
        quota: UserQuota | None = None,
    ) -> None:
        self.registry = registry
        self.rest = rest
        self.log = log
        self.quota = quota  # live panels per user; None = no quota (unit tests of the registry)

    def job(self, it: platform.Interaction, send: Send, *, received_at: float) -> Job:
        """The gate's job for `it`: keyed by the interaction id (a replay has no second effect)."""
        return Job(key=it.id, work=partial(self.respond, it, send, received_at=received_at), answered=too_late)

    async def respond(self, it: platform.Interaction, send: Send, writes: Writes, *, received_at: float) -> str:
        """Answer `it` (received at monotonic `received_at`) through `send`: the full answer if
        the work is done DEFER_AFTER_S after that, else a deferred one, the rest finished through
        the interaction webhook. Returns "answered", "deferred" or CALLBACK_FAILED.

        Both transports answer through here: the HTTP route's `send` hands the response to the
        route's body, the Gateway's is the interaction callback (`DiscordRest.callback`). The
        work always runs to its end, so its state writes are staged even when Discord refused
        the answer (the effect happened; the user saw "This interaction failed")."""
        work = asyncio.create_task(self.answer(it, writes))
        done, _ = await asyncio.wait({work}, timeout=max(0.0, received_at + DEFER_AFTER_S - time.monotonic()))
        deferred = not done and it.type in DEFERRABLE and bool(it.token)
        if not deferred:
            initial = await work
        elif it.type is discord.InteractionType.component:
            initial = platform.defer_update()
        else:  # /panel answers ephemerally; a modal submit answers in the channel
            initial = platform.defer_message(ephemeral=it.type is discord.InteractionType.application_command)
        try:
            await send(initial)
        except RestError as exc:
            self.log.warning("discord_callback_failed", extra={"error": str(exc), "interaction_type": it.type.name})
            await work
            return CALLBACK_FAILED
        if not deferred:
            return "answered"
        self.log.info("discord_deferred", extra={"interaction_type": it.type.name})
        await self._finish(it, await work)
        return "deferred"

    async def _finish(self, it: platform.Interaction, answer: dict[str, Any]) -> None:
        """Send the answer of deferred work: an update edits the original message, a message
        becomes the edit of the "thinking" placeholder (command, submit) or a follow-up (click)."""
        kind, data = answer.get("type"), dict(answer.get("data") or {})
        try:
            if kind == discord.InteractionResponseType.modal.value:  # a modal cannot follow a deferral
                await self.rest.followup(it, {"content": "Please click again.", "flags": 64})
            elif (
                kind == discord.InteractionResponseType.message_update.value
                or it.type is not discord.InteractionType.component
            ):
                await self.rest.edit_original(it, data)
            else:
                await self.rest.followup(it, data)
        except InteractionGone as exc:
            self.log.warning("discord_interaction_gone", extra={"code": exc.code, "interaction_type": it.type.name})
        except RestError as exc:
            self.log.warning("discord_deferred_answer_failed", extra={"error": str(exc)})

    async def answer(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        """The interaction response for `it` (never raises for a user's mistake)."""
        kind = it.type
        if kind is discord.InteractionType.ping:
            return platform.pong()
        if kind is discord.InteractionType.application_command:
            return await self.command(it, writes)
        if kind is discord.InteractionType.component:
            return await self.click(it, writes)
        if kind is discord.InteractionType.modal_submit:
            return await self.submit(it)
        return platform.message("This interaction is not supported.", ephemeral=True)

    async def command(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        """`/panel`: remember the panel's entries (awaited), then post it; only then "sent".
        The user's quota count rides with the done mark, and only for a panel that was posted."""
        if it.command != PANEL_COMMAND:
            return platform.message(f"Unknown command /{it.command}.", ephemeral=True)
        if not it.channel_id:
            return platform.message("/panel works in a channel.", ephemeral=True)
        counted = Writes()
        if self.quota is not None:
            wait_ms = await self.quota.admit(it.user_id, counted)
            if wait_ms is not None:  # visible refusal: the user's own panels are the limit
                self.log.info("panel_quota_refused", extra={"per_user": self.quota.per_user})
                return platform.message(
                    QUOTA_REFUSED.format(limit=self.quota.per_user, minutes=max(1, -(-wait_ms // 60_000))),
                    ephemeral=True,
                )
        restrict = it.options.get("restrict_to")
        panel = build_panel(allowed_user_ids=[str(restrict)] if restrict else [])
        # Entries first: a click can only follow the post, and a crash after the post must
        # not leave a message whose buttons mean nothing.
        await self.registry.register(panel.components, panel.modals)
        try:
            sent = await self.rest.send_message(it.channel_id, content=panel.content, view=panel.view)
        except RestError as exc:
            self.log.warning("panel_not_sent", extra={"error": str(exc), "entries_forgotten": len(panel.custom_ids)})
            await self.registry.forget(panel.custom_ids)
            counted.discard()
            return platform.message("Could not post the panel; try again.", ephemeral=True)
        writes.staged.extend(counted.staged)
        return platform.message(f"Panel posted (message {sent.get('id')}).", ephemeral=True)

    async def click(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        entry = await self.registry.peek_component(it.custom_id)
        if entry is None:
            return await self._used_or_expired(it)
        if entry["component_type"] != getattr(it.component_type, "value", None):
            return platform.message(EXPIRED, ephemeral=True)
        if not allowed(entry, it.user_id):
            return platform.message(NOT_FOR_YOU, ephemeral=True)
        if entry["single_use"]:
            if not await self.registry.claim_use(it.custom_id, it.user_id, used_at=now_ms()):
                return await self._used_or_expired(it, default=ALREADY_USED)
            # the claim decided; consuming the entry is cleanup that rides with the done mark
            # (if a crash loses it, the entry expires and the claim refuses meanwhile)
            writes.delete(self.registry.components, it.custom_id)
        action = entry["action"]
        if action == "refresh":
            return platform.update(f"Deployment panel: status refreshed by <@{it.user_id}>.")
        if action == "approve":
            return platform.message(f"Approved by <@{it.user_id}>.")
        if action == "colour":
            return platform.message(f"You picked {', '.join(it.values) or 'nothing'}.", ephemeral=True)
        if action == "feedback" and "modal_id" in entry:
            modal = await self.registry.peek_modal(entry["modal_id"])
            if modal is None:
                return platform.message(EXPIRED, ephemeral=True)
            return platform.modal(build_modal(entry["modal_id"], modal))
        return platform.message(EXPIRED, ephemeral=True)

    async def _used_or_expired(self, it: platform.Interaction, *, default: str = EXPIRED) -> dict[str, Any]:
        """The refusal for a click on a component that is gone: consumed (by whom), or expired."""
        user = await self.registry.used_by(it.custom_id)
        if user is None:
            return platform.message(default, ephemeral=True)
        return platform.message(YOU_ALREADY_USED if user == it.user_id else ALREADY_USED, ephemeral=True)

    async def submit(self, it: platform.Interaction) -> dict[str, Any]:
        """A modal submit consumes the modal entry: a second submit finds it expired."""
        entry = await self.registry.peek_modal(it.custom_id)
        if entry is None:
            return platform.message(EXPIRED, ephemeral=True)
        if not allowed(entry, it.user_id):
            return platform.message(NOT_FOR_YOU, ephemeral=True)
        if await self.registry.take_modal(it.custom_id) is None:
            return platform.message(EXPIRED, ephemeral=True)  # a concurrent submit got it
        comment = it.fields.get("comment", "")
        text = await reply.answer(  # the user's reply hook, if any, composes the text (gateway/reply.py)
            reply.Message(comment, it.user_id, it.channel_id or "", "discord"),
            default=f"Thanks <@{it.user_id}>, feedback received: {comment}",
        )
        return platform.message(text or "Feedback received.", ephemeral=text is None)


# -- the bot's messages ----------------------------------------------------------------------
COLOURS = ("red", "green", "blue")


def new_custom_id(action: str) -> str:
    """`<action>:<16 hex>`; well under Discord's 100-character custom_id limit."""
    return f"{action}:{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Panel:
    """A message ready to send, and the registry entries its components need."""

    content: str
    view: discord.ui.View
    components: dict[str, ComponentEntry]
    modals: dict[str, ModalEntry]

    @property
    def custom_ids(self) -> list[str]:
        return [*self.components, *self.modals]


def build_panel(*, allowed_user_ids: list[str]) -> Panel:
    """The demo panel; `allowed_user_ids` (empty = anyone) restricts every component of it."""
    allowed = list(allowed_user_ids)
    modal_id = new_custom_id("feedback-modal")
    modals: dict[str, ModalEntry] = {
        modal_id: ModalEntry(
            action="feedback",
            title="Feedback",
            fields=[ModalField(custom_id="comment", label="Comment", style="paragraph", required=True)],
            allowed_user_ids=allowed,
        )
    }
    view = discord.ui.View(timeout=None)  # no discord.py timeout: the registry TTL rules
    colours: discord.ui.Select[discord.ui.View] = discord.ui.Select(
        custom_id=new_custom_id("colour"),
        placeholder="Pick a colour",
        options=[discord.SelectOption(label=c.title(), value=c) for c in COLOURS],
    )
    items: list[tuple[discord.ui.Item[discord.ui.View], str, bool]] = [  # (item, action, single_use)
        (_button("Refresh", discord.ButtonStyle.secondary, "refresh"), "refresh", False),
        (_button("Approve", discord.ButtonStyle.success, "approve"), "approve", True),
        (colours, "colour", False),
        (_button("Feedback", discord.ButtonStyle.primary, "feedback"), "feedback", False),
    ]
    components: dict[str, ComponentEntry] = {}
    for item, action, single_use in items:
        view.add_item(item)
        custom_id = item.custom_id  # type: ignore[attr-defined]  # Button and Select both have one
        entry = ComponentEntry(
            component_type=item.type.value, action=action, single_use=single_use, allowed_user_ids=allowed
        )
        if action == "feedback":
            entry["modal_id"] = modal_id
        components[custom_id] = entry
    who = " for " + ", ".join(f"<@{u}>" for u in allowed) if allowed else ""
    return Panel(f"Deployment panel{who}.", view, components, modals)


def _button(label: str, style: discord.ButtonStyle, action: str) -> discord.ui.Button[discord.ui.View]:
    return discord.ui.Button(label=label, style=style, custom_id=new_custom_id(action))


def build_modal(custom_id: str, entry: ModalEntry) -> discord.ui.Modal:
    """The modal a stored entry describes, ready for `platform.modal`."""
    view = discord.ui.Modal(title=entry["title"], custom_id=custom_id, timeout=None)
    for f in entry["fields"]:
        style = discord.TextStyle[f["style"]]
        text: discord.ui.TextInput[discord.ui.Modal] = discord.ui.TextInput(
            label=f["label"], custom_id=f["custom_id"], style=style, required=f["required"]
        )
        view.add_item(text)
    return view
