"""The bot's peek -> check -> consume order, on the registries alone (clicks need no REST)."""

from __future__ import annotations

import logging
from pathlib import Path

import discord
from discord_helpers import close_registry, open_registry
from runtime_support import FileRuntime

from chatstate.adapters.discord import handlers, platform
from chatstate.adapters.discord.handlers import EXPIRED, NOT_FOR_YOU, DiscordBot
from chatstate.adapters.discord.state import Registry
from chatstate.gateway.sdk import Writes

LOG = logging.LoggerAdapter(logging.getLogger("test.discord"), {})


def click(custom_id: str, kind: discord.ComponentType, user_id: str = "1") -> platform.Interaction:
    return platform.Interaction(
        discord.InteractionType.component, user_id, "10", custom_id=custom_id, component_type=kind
    )


async def test_wrong_kind_unknown_id_and_old_versions_read_as_expired(tmp_path: Path) -> None:
    registry = Registry(legacy=False)
    await open_registry(registry, FileRuntime("discord", tmp_path / "state.sqlite"))
    bot = DiscordBot(registry, platform.DiscordRest(api_base="http://127.0.0.1:9", bot_token="unused"), log=LOG)
    try:
        panel = handlers.build_panel(allowed_user_ids=["1"])
        await registry.register(panel.components, panel.modals)
        approve = next(cid for cid, e in panel.components.items() if e["action"] == "approve")

        wrong_kind = await bot.answer(click(approve, discord.ComponentType.string_select), Writes())
        assert wrong_kind["data"]["content"] == EXPIRED
        refused = await bot.answer(click(approve, discord.ComponentType.button, user_id="2"), Writes())
        assert refused["data"]["content"] == NOT_FOR_YOU
        assert await registry.peek_component(approve) is not None  # neither consumed it

        unknown = await bot.answer(click("approve:ffffffffffffffff", discord.ComponentType.button), Writes())
        assert unknown["data"]["content"] == EXPIRED

        await registry.components.record(approve, {"version": 2, "entry": panel.components[approve]})
        newer = await bot.answer(click(approve, discord.ComponentType.button), Writes())
        assert newer["data"]["content"] == EXPIRED

        ok = await bot.answer(click(next(iter(panel.components)), discord.ComponentType.button), Writes())
        assert ok["type"] == discord.InteractionResponseType.message_update.value  # Refresh still works
    finally:
        await close_registry(registry)


async def test_an_interaction_past_discords_deadline_has_no_effect(tmp_path: Path) -> None:
    """A click whose claim took longer than Discord's 3 s (a store failing over) was failed by
    Discord already: the user saw "This interaction failed" and will click again, so working on
    it now would apply an effect the user is never told of (a single use taken, a second panel
    posted). It is done, with no effect and no answer."""
    import time

    registry = Registry(legacy=False)
    await open_registry(registry, FileRuntime("discord", tmp_path / "state.sqlite"))
    bot = DiscordBot(registry, platform.DiscordRest(api_base="http://127.0.0.1:9", bot_token="unused"), log=LOG)
    sent: list[dict[str, object]] = []

    async def send(response: dict[str, object]) -> None:
        sent.append(response)

    try:
        panel = handlers.build_panel(allowed_user_ids=[])
        await registry.register(panel.components, panel.modals)
        approve = next(cid for cid, e in panel.components.items() if e["action"] == "approve")
        it = click(approve, discord.ComponentType.button)
        late = time.monotonic() - platform.RESPONSE_DEADLINE_S - 0.5
        word = await bot.respond(it, send, Writes(), received_at=late)
        assert sent == [] and await registry.used_by(approve) is None  # the single use is still there
        assert word == "too_late"
        assert await bot.respond(it, send, Writes(), received_at=time.monotonic()) == "answered"
        assert await registry.used_by(approve) == "1" and len(sent) == 1
    finally:
        await close_registry(registry)
