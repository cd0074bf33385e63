"""The Discord plugin: one route, `POST /discord/interactions`, Discord's interactions endpoint.

Every request is verified (Ed25519, `X-Signature-Ed25519` over `X-Signature-Timestamp + body`)
before anything is parsed, read or written: a bad signature is 401 and touches no state. Then
(issue 15) a timestamp outside `timestamp_window_s` is 401, the body is parsed (400 for junk,
ids checked before any lookup), and the interaction id is claimed in `discord.interactions`:
a replay of a captured, validly signed interaction answers 409 and does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.bot import DiscordBot
from chatstate.adapters.discord.config import DiscordConfig
from chatstate.adapters.discord.platform import DiscordRest
from chatstate.adapters.common import now_ms
from chatstate.adapters.discord.state import COMPONENTS, InteractionLedger, PanelQuota, Registry
from chatstate.gateway import ingress
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route

INTERACTIONS_PATH = "/discord/interactions"


class DiscordPlugin(Plugin):
    """Components and modals whose registries survive a gateway restart."""

    id = "discord"
    origin = "bundled"

    def __init__(self) -> None:
        self._config: DiscordConfig | None = None
        self._registry: Registry | None = None
        self._rest: DiscordRest | None = None
        self._bot: DiscordBot | None = None
        self._ledger: InteractionLedger | None = None
        self._quota: PanelQuota | None = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", INTERACTIONS_PATH, self._interactions),)

    async def start(self, runtime: PluginRuntime) -> None:
        """Check config, open both registries (not in legacy mode) and the REST session.

        Raises ValueError for a bad `[adapters.discord]` table and StateStoreError from
        opening a store.
        """
        self._config = config = DiscordConfig.from_table(runtime.config)
        self._registry = Registry(legacy=runtime.legacy, ttl_ms=config.ttl_ms, max_entries=config.max_entries)
        await self._registry.open(runtime)
        self._ledger = InteractionLedger(legacy=runtime.legacy, window_s=config.timestamp_window_s)
        await self._ledger.state.open(runtime)
        self._quota = PanelQuota(legacy=runtime.legacy, per_user=config.panels_per_user,
                                 panel_ttl_ms=self._registry.components.spec.ttl_ms or COMPONENTS.ttl_ms or 1)
        await self._quota.state.open(runtime)
        self._rest = DiscordRest(api_base=config.api_base_url, bot_token=config.bot_token)
        await self._rest.open()
        self._bot = DiscordBot(self._registry, self._rest, log=runtime.log, quota=self._quota)

    async def stop(self) -> None:
        if self._rest is not None:
            await self._rest.close()
        if self._registry is not None:
            await self._registry.close()
        for extra in (self._ledger, self._quota):
            if extra is not None:
                await extra.state.close()

    def health(self) -> dict[str, Any]:
        if self._registry is None:
            return {"status": "starting"}
        registries = self._registry.health()
        registries += [x.state.health() for x in (self._ledger, self._quota) if x is not None]
        degraded = any(r["mode"] == "degraded" for r in registries)
        return {"status": "degraded" if degraded else "ok", "registries": registries}

    async def _interactions(self, request: web.Request) -> web.Response:
        assert self._config is not None and self._bot is not None and self._ledger is not None, "start() first"
        body = await request.read()
        timestamp = ingress.credential(request.headers, platform.TIMESTAMP_HEADER)
        if not platform.verify(
            self._config.verify_key,
            signature=ingress.credential(request.headers, platform.SIGNATURE_HEADER),
            timestamp=timestamp,
            body=body,
        ):
            raise web.HTTPUnauthorized(text="invalid request signature")
        if not platform.fresh(timestamp, window_s=self._config.timestamp_window_s, now_s=time.time()):
            raise web.HTTPUnauthorized(text="request timestamp outside the freshness window")
        try:
            interaction = platform.parse(body)
        except platform.BadRequest as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if interaction.id and not await self._ledger.claim(interaction.id, at_ms=now_ms()):
            raise web.HTTPConflict(text="interaction already handled")  # a replay: no second effect
        return web.json_response(await self._bot.answer(interaction))
