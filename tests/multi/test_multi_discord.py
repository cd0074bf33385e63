"""A single-use Discord button sent through gateway A and clicked through A and B at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord
from multi_helpers import gateways, stored, via

from chatstate.gateway.sim.discord import DiscordSimulator

CHANNEL_MESSAGE = discord.InteractionResponseType.channel_message.value
UPDATE_MESSAGE = discord.InteractionResponseType.message_update.value
ALREADY_USED = "This component was already used."
EXPIRED = "This component has expired."


async def test_fifty_concurrent_clicks_through_two_gateways_have_one_winner(shared_url: str, tmp_path: Path) -> None:
    sim = DiscordSimulator()
    async with gateways([sim], shared_url, tmp_path) as (a, b):
        message = await via(a, sim).post_panel()  # only A has these components in memory
        approve = sim.component(message, "Approve")["custom_id"]
        assert approve in stored(shared_url, "discord", "discord.components")

        users = [str(1_100_000_000_000_001_000 + i) for i in range(50)]
        targets = [a if i % 2 else b for i in range(50)]

        async def click(gw, user):
            return gw, await via(gw, sim).deliver(sim.click_payload(message, "Approve", user_id=user))

        replies = await asyncio.gather(*(click(gw, u) for gw, u in zip(targets, users)))

        assert all(r.status == 200 for _, r in replies)
        winners = [(gw, r) for gw, r in replies if r.type == CHANNEL_MESSAGE and r.content.startswith("Approved by")]
        assert len(winners) == 1
        assert all(r.ephemeral and r.content in (ALREADY_USED, EXPIRED) for _, r in replies if (_, r) not in winners)
        assert approve not in stored(shared_url, "discord", "discord.components")
        # the reusable button of A's panel still works through B, which knows it only via Redis
        refreshed = await via(b, sim).click(message, "Refresh")
        assert refreshed.type == UPDATE_MESSAGE and "refreshed by" in refreshed.content
