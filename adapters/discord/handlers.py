"""What the bot does with each verified interaction: the gate's work (`respond`) and check.

A click peeks its entry, checks kind and user (a refused user leaves the entry in place), and
only then claims a single-use entry's use. Work still running DEFER_AFTER_S after the arrival
is answered with a deferral (Discord wants an answer within 3 s) and finished through the
webhook. A panel's custom_ids are random, so its registry entries alone say what a click means.
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
from chatstate.adapters.discord.platform import InteractionGone, RestError
from chatstate.adapters.discord.state import ComponentEntry, ModalEntry, ModalField, Registry
from chatstate.gateway.sdk import Job, UserQuota, Writes, reply

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
COLOURS = ("red", "green", "blue")
Send = Callable[[dict[str, Any]], Awaitable[None]]  # delivers the initial response
Kind = discord.InteractionType
DEFERRABLE = (Kind.application_command, Kind.component, Kind.modal_submit)


async def too_late(_writes: Writes) -> bool:
    """The gate's check after taking over a dead process's claim: the lease (15 s) outlives Discord's
    3 s answer window, so it was answered or failed already; an effect now is one nobody is told of."""
    return True


class DiscordBot:
    """Answers interactions; posts panels through `rest` and records them in `registry`."""

    def __init__(
        self, registry: Registry, rest: platform.DiscordRest, *, log: logging.LoggerAdapter[logging.Logger],
        quota: UserQuota | None = None,  # live panels per user; None in unit tests of the registry
    ) -> None:  # fmt: skip
        self.registry, self.rest, self.log, self.quota = registry, rest, log, quota

    def job(self, it: platform.Interaction, send: Send, *, received_at: float) -> Job:
        """The gate's job for `it`: keyed by the interaction id (a replay has no second effect)."""
        return Job(key=it.id, work=partial(self.respond, it, send, received_at=received_at), answered=too_late)

    async def respond(self, it: platform.Interaction, send: Send, writes: Writes, *, received_at: float) -> str:
        """Answer `it` (arrived at monotonic `received_at`) through `send` (the HTTP body, or the Gateway's callback):
        in full, or deferred and then through the webhook. Returns "answered", "deferred", CALLBACK_FAILED or "too_late"
        (past Discord's deadline the user was told it failed and tries again: no effect). The work always runs to its
        end, so its writes are staged even when Discord refused the answer (the effect happened)."""
        if time.monotonic() - received_at >= platform.RESPONSE_DEADLINE_S:
            self.log.warning("discord_interaction_too_late", extra={"interaction_type": it.type.name})
            return "too_late"
        work = asyncio.create_task(self.answer(it, writes))
        done, _ = await asyncio.wait({work}, timeout=max(0.0, received_at + DEFER_AFTER_S - time.monotonic()))
        deferred = not done and it.type in DEFERRABLE and bool(it.token)
        try:
            await send(platform.defer(it) if deferred else await work)
        except RestError as exc:
            self.log.warning("discord_callback_failed", extra={"error": str(exc), "interaction_type": it.type.name})
            await work
            return CALLBACK_FAILED
        if not deferred:
            return "answered"
        self.log.info("discord_deferred", extra={"interaction_type": it.type.name})
        kind, data = (answer := await work).get("type"), dict(answer.get("data") or {})
        try:  # an update edits the message; a command's or submit's answer replaces "thinking..."
            if kind == platform.Kind.modal.value:  # a modal cannot follow a deferral
                await self.rest.webhook(it, {"content": "Please click again.", "flags": 64}, edit=False)
            else:
                edit = kind == platform.Kind.message_update.value or it.type is not Kind.component
                await self.rest.webhook(it, data, edit=edit)
        except InteractionGone as exc:
            self.log.warning("discord_interaction_gone", extra={"code": exc.code, "interaction_type": it.type.name})
        except RestError as exc:
            self.log.warning("discord_deferred_answer_failed", extra={"error": str(exc)})
        return "deferred"

    async def answer(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        """The interaction response for `it` (never raises for a user's mistake)."""
        if it.type is Kind.ping:
            return platform.pong()
        if it.type is Kind.application_command:
            return await self.command(it, writes)
        if it.type is Kind.component:
            return await self.click(it, writes)
        if it.type is Kind.modal_submit:
            return await self.submit(it)
        if it.type is Kind.autocomplete:
            return platform.no_choices()
        return platform.message("This interaction is not supported.", ephemeral=True)

    async def command(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        """`/panel`: record the panel's entries (`Registry.register`), then post it; the user's
        quota count rides with the done mark, and only for a panel that was posted."""
        if it.command != PANEL_COMMAND:
            return platform.message(f"Unknown command /{it.command}.", ephemeral=True)
        if not it.channel_id:
            return platform.message("/panel works in a channel.", ephemeral=True)
        wait_ms = None if self.quota is None else await self.quota.admit(it.user_id, writes)
        if self.quota is not None and wait_ms is not None:  # visible refusal: their own panels are the limit
            self.log.info("panel_quota_refused", extra={"per_user": self.quota.per_user})
            minutes = max(1, -(-wait_ms // 60_000))
            return platform.message(QUOTA_REFUSED.format(limit=self.quota.per_user, minutes=minutes), ephemeral=True)
        restrict = it.options.get("restrict_to")
        panel = build_panel(allowed_user_ids=[str(restrict)] if restrict else [])
        await self.registry.register(panel.components, panel.modals)
        try:
            sent = await self.rest.send_message(it.channel_id, content=panel.content, view=panel.view)
        except RestError as exc:
            self.log.warning("panel_not_sent", extra={"error": str(exc), "entries_forgotten": len(panel.custom_ids)})
            await self.registry.forget(panel.custom_ids)
            writes.discard()
            return platform.message("Could not post the panel; try again.", ephemeral=True)
        return platform.message(f"Panel posted (message {sent.get('id')}).", ephemeral=True)

    async def click(self, it: platform.Interaction, writes: Writes) -> dict[str, Any]:
        entry = await self.registry.peek_component(it.custom_id)
        if entry is None:
            return await self._used_or_expired(it)
        if entry["component_type"] != getattr(it.component_type, "value", None):
            return platform.message(EXPIRED, ephemeral=True)
        if entry["allowed_user_ids"] and it.user_id not in entry["allowed_user_ids"]:
            return platform.message(NOT_FOR_YOU, ephemeral=True)
        if entry["single_use"]:
            if not await self.registry.claim_use(it.custom_id, it.user_id):
                return await self._used_or_expired(it, default=ALREADY_USED)
            # the claim decided; removing the entry is cleanup (lost in a crash, it expires)
            writes.delete(self.registry.components, it.custom_id)
        action = entry["action"]
        if action == "refresh":
            return platform.update(f"Deployment panel: status refreshed by <@{it.user_id}>.")
        if action == "approve":
            return platform.message(f"Approved by <@{it.user_id}>.")
        if action == "colour":
            return platform.message(f"You picked {', '.join(it.values) or 'nothing'}.", ephemeral=True)
        modal = await self.registry.peek_modal(entry["modal_id"]) if "modal_id" in entry else None
        if action == "feedback" and modal is not None:
            return platform.modal(build_modal(entry["modal_id"], modal))
        return platform.message(EXPIRED, ephemeral=True)

    async def _used_or_expired(self, it: platform.Interaction, *, default: str = EXPIRED) -> dict[str, Any]:
        """The refusal for a click on a component that is gone: consumed (by whom), or expired."""
        user = await self.registry.used_by(it.custom_id)
        text = default if user is None else YOU_ALREADY_USED if user == it.user_id else ALREADY_USED
        return platform.message(text, ephemeral=True)

    async def submit(self, it: platform.Interaction) -> dict[str, Any]:
        """A modal submit consumes the modal entry: a second submit finds it expired."""
        entry = await self.registry.peek_modal(it.custom_id)
        if entry is not None and entry["allowed_user_ids"] and it.user_id not in entry["allowed_user_ids"]:
            return platform.message(NOT_FOR_YOU, ephemeral=True)
        if entry is None or await self.registry.take_modal(it.custom_id) is None:  # or a racing submit got it
            return platform.message(EXPIRED, ephemeral=True)
        comment = it.fields.get("comment", "")
        text = await reply.answer(  # the user's reply hook, if any, composes the text
            reply.Message(comment, it.user_id, it.channel_id or "", "discord"),
            default=f"Thanks <@{it.user_id}>, feedback received: {comment}",
        )
        return platform.message(text or "Feedback received.", ephemeral=text is None)


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


def new_custom_id(action: str) -> str:
    """`<action>:<16 hex>`; well under Discord's 100-character custom_id limit."""
    return f"{action}:{secrets.token_hex(8)}"


def build_panel(*, allowed_user_ids: list[str]) -> Panel:
    """The demo panel: a reusable Refresh, a single-use Approve, a colour select and a Feedback
    button that opens a modal; `allowed_user_ids` (empty = anyone) restricts all of them."""
    allowed = list(allowed_user_ids)
    modal_id = new_custom_id("feedback-modal")
    comment = ModalField(custom_id="comment", label="Comment", style="paragraph", required=True)
    modals = {modal_id: ModalEntry(action="feedback", title="Feedback", fields=[comment], allowed_user_ids=allowed)}
    view = discord.ui.View(timeout=None)  # no discord.py timeout: the registry TTL rules
    options = [discord.SelectOption(label=c.title(), value=c) for c in COLOURS]
    items: tuple[discord.ui.Item[Any], ...] = (
        discord.ui.Button(label="Refresh", style=discord.ButtonStyle.secondary, custom_id=new_custom_id("refresh")),
        discord.ui.Button(label="Approve", style=discord.ButtonStyle.success, custom_id=new_custom_id("approve")),
        discord.ui.Select(custom_id=new_custom_id("colour"), placeholder="Pick a colour", options=options),
        discord.ui.Button(label="Feedback", style=discord.ButtonStyle.primary, custom_id=new_custom_id("feedback")),
    )
    components: dict[str, ComponentEntry] = {}
    for item in items:
        view.add_item(item)
        custom_id: str = item.custom_id  # type: ignore[attr-defined]  # Button and Select have one
        action = custom_id.split(":")[0]
        entry = ComponentEntry(
            component_type=item.type.value, action=action, single_use=action == "approve", allowed_user_ids=allowed
        )
        components[custom_id] = {**entry, "modal_id": modal_id} if action == "feedback" else entry
    who = " for " + ", ".join(f"<@{u}>" for u in allowed) if allowed else ""
    return Panel(f"Deployment panel{who}.", view, components, modals)


def build_modal(custom_id: str, entry: ModalEntry) -> discord.ui.Modal:
    """The modal a stored entry describes, ready for `platform.modal`."""
    view = discord.ui.Modal(title=entry["title"], custom_id=custom_id, timeout=None)
    for f in entry["fields"]:
        style, label, required = discord.TextStyle[f["style"]], f["label"], f["required"]
        view.add_item(discord.ui.TextInput(label=label, custom_id=f["custom_id"], style=style, required=required))
    return view
