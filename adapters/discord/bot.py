"""What the bot does with each verified interaction: peek, check, consume, answer.

The order is the point of the migration (docs/migrations/discord.md):
1. peek the entry (`get_entry`, memory then store): missing or expired -> "expired";
2. check kind and user: a refused user gets an ephemeral "not for you" and the entry stays;
3. only then, for single-use entries, consume (`take`, the store's atomic read+delete):
   of racing clicks exactly one gets the entry back, the rest are told it was already used.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from chatstate.adapters.discord import platform, ui
from chatstate.adapters.discord.platform import DiscordRest, RestError
from chatstate.adapters.common import now_ms
from chatstate.adapters.discord.state import ComponentEntry, ModalEntry, PanelQuota, Registry

EXPIRED = "This component has expired."
NOT_FOR_YOU = "This component is not for you."
ALREADY_USED = "This component was already used."
QUOTA_REFUSED = ("You already have {limit} live panels, the most one person may have; "
                 "your oldest expires in about {minutes} min.")
PANEL_COMMAND = "panel"  # /panel [restrict_to:<user>] posts a panel in the channel



def allowed(entry: ComponentEntry | ModalEntry, user_id: str) -> bool:
    return not entry["allowed_user_ids"] or user_id in entry["allowed_user_ids"]


class DiscordBot:
    """Answers interactions; sends panels through `rest` and records them in `registry`."""

    def __init__(
        self, registry: Registry, rest: DiscordRest, *, log: logging.LoggerAdapter[logging.Logger],
        quota: PanelQuota | None = None,
    ) -> None:
        self.registry = registry
        self.rest = rest
        self.log = log
        self.quota = quota  # live panels per user; None = no quota (unit tests of the registry)

    async def answer(self, it: platform.Interaction) -> dict[str, Any]:
        """The interaction response for `it` (never raises for a user's mistake)."""
        kind = it.type
        if kind is discord.InteractionType.ping:
            return platform.pong()
        if kind is discord.InteractionType.application_command:
            return await self.command(it)
        if kind is discord.InteractionType.component:
            return await self.click(it)
        if kind is discord.InteractionType.modal_submit:
            return await self.submit(it)
        return platform.message("This interaction is not supported.", ephemeral=True)

    async def command(self, it: platform.Interaction) -> dict[str, Any]:
        """`/panel`: remember the panel's entries (awaited), then post it; only then "sent"."""
        if it.command != PANEL_COMMAND:
            return platform.message(f"Unknown command /{it.command}.", ephemeral=True)
        if not it.channel_id:
            return platform.message("/panel works in a channel.", ephemeral=True)
        if self.quota is not None:
            wait_ms = await self.quota.admit(it.user_id, now_ms=now_ms())
            if wait_ms is not None:  # visible refusal: the user's own panels are the limit
                self.log.info("panel_quota_refused", extra={"per_user": self.quota.per_user})
                return platform.message(QUOTA_REFUSED.format(limit=self.quota.per_user,
                                                             minutes=max(1, -(-wait_ms // 60_000))), ephemeral=True)
        restrict = it.options.get("restrict_to")
        panel = ui.build_panel(allowed_user_ids=[str(restrict)] if restrict else [])
        # Entries first: a click can only follow the post, and a crash after the post must
        # not leave a message whose buttons mean nothing.
        await self.registry.register(panel.components, panel.modals)
        try:
            sent = await self.rest.send_message(it.channel_id, content=panel.content, view=panel.view)
        except RestError as exc:
            self.log.warning("panel_not_sent", extra={"error": str(exc), "entries_forgotten": len(panel.custom_ids)})
            await self.registry.forget(panel.custom_ids)
            if self.quota is not None:
                await self.quota.release(it.user_id, now_ms=now_ms())
            return platform.message("Could not post the panel; try again.", ephemeral=True)
        return platform.message(f"Panel posted (message {sent.get('id')}).", ephemeral=True)

    async def click(self, it: platform.Interaction) -> dict[str, Any]:
        entry = await self.registry.peek_component(it.custom_id)
        if entry is None or entry["component_type"] != getattr(it.component_type, "value", None):
            return platform.message(EXPIRED, ephemeral=True)
        if not allowed(entry, it.user_id):
            return platform.message(NOT_FOR_YOU, ephemeral=True)
        if entry["single_use"] and await self.registry.take_component(it.custom_id) is None:
            return platform.message(ALREADY_USED, ephemeral=True)
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
            return platform.modal(ui.build_modal(entry["modal_id"], modal))
        return platform.message(EXPIRED, ephemeral=True)

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
        return platform.message(f"Thanks <@{it.user_id}>, feedback received: {comment}")
