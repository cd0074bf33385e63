"""The Discord plugin: one route, `POST /discord/interactions`, Discord's interactions endpoint.

Every request is verified (Ed25519, `X-Signature-Ed25519` over `X-Signature-Timestamp + body`)
before anything is parsed, read or written: a bad signature is 401 and touches no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from nacl.signing import VerifyKey

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.bot import DiscordBot
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.discord.platform import DiscordRest
from chatstate.adapters.discord.state import Registry
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings

INTERACTIONS_PATH = "/discord/interactions"


class DiscordPlugin(Plugin):
    """Components and modals whose registries survive a gateway restart."""

    id = "discord"
    origin = "bundled"
    settings_type = DiscordSettings

    def __init__(self) -> None:
        self._verify_key: VerifyKey | None = None
        self._registry: Registry | None = None
        self._rest: DiscordRest | None = None
        self._bot: DiscordBot | None = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", INTERACTIONS_PATH, self._interactions),)

    def check(self, settings: AdapterSettings) -> None:
        """The public key must be a 32-byte hex key (ValueError naming it otherwise)."""
        DiscordSettings.of_settings(settings).verify_key()

    async def start(self, runtime: PluginRuntime) -> None:
        """Open both registries (not in legacy mode) and the REST session.

        Raises StateStoreError from opening a store.
        """
        config = DiscordSettings.of(runtime)
        self._verify_key = config.verify_key()
        self._registry = Registry(legacy=runtime.legacy, ttl_ms=config.ttl_ms, max_entries=config.max_entries)
        await self._registry.open(runtime)
        self._rest = DiscordRest(api_base=config.api_base_url, bot_token=config.bot_token)
        await self._rest.open()
        self._bot = DiscordBot(self._registry, self._rest, log=runtime.log)

    async def stop(self) -> None:
        if self._rest is not None:
            await self._rest.close()
        if self._registry is not None:
            await self._registry.close()

    def health(self) -> dict[str, Any]:
        if self._registry is None:
            return {"status": "starting"}
        registries = self._registry.health()
        degraded = any(r["mode"] == "degraded" for r in registries)
        return {"status": "degraded" if degraded else "ok", "registries": registries}

    async def _interactions(self, request: web.Request) -> web.Response:
        assert self._verify_key is not None and self._bot is not None, "the gateway starts plugins first"
        body = await request.read()
        if not platform.verify(
            self._verify_key,
            signature=request.headers.get(platform.SIGNATURE_HEADER),
            timestamp=request.headers.get(platform.TIMESTAMP_HEADER),
            body=body,
        ):
            raise web.HTTPUnauthorized(text="invalid request signature")
        try:
            interaction = platform.parse(body)
        except platform.BadRequest as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(await self._bot.answer(interaction))
