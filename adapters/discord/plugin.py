"""The Discord plugin: one route, `POST /discord/interactions`, Discord's interactions endpoint,
or (`transport = "gateway"`) the Discord Gateway websocket (`gateway_client.py`).

Every request is verified (Ed25519, `X-Signature-Ed25519` over `X-Signature-Timestamp + body`)
before anything is parsed, read or written: a bad signature is 401 and touches no state. Then
a timestamp outside `timestamp_window_s` is 401, the body is parsed (400 for junk,
ids checked before any lookup), and the interaction id is claimed in `discord.interactions`:
a replay of a captured, validly signed interaction answers 409 and does nothing.
Both transports answer through the same `DiscordBot.respond` (the answer, or a deferral within
Discord's 3 s): over HTTP in the response body, over the Gateway through the interaction
callback (`DiscordRest.callback`, 429s retried within the 3 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from nacl.signing import VerifyKey

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.discord.gateway_client import GatewayClient
from chatstate.adapters.discord.gateway_state import GatewayState
from chatstate.adapters.discord.handlers import DiscordBot
from chatstate.adapters.discord.rest import DiscordRest, RestError
from chatstate.adapters.discord.state import COMPONENTS, InteractionLedger, PanelQuota, Registry
from chatstate.gateway import ingress
from chatstate.gateway.clock import now_ms
from chatstate.gateway.plugin import PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings
from chatstate.gateway.stateful import StatefulPlugin

INTERACTIONS_PATH = "/discord/interactions"
STOP_TIMEOUT_S = 10.0  # how long stop() waits for deferred answers in flight


class DiscordPlugin(StatefulPlugin):
    """Components and modals whose registries survive a gateway restart."""

    id = "discord"
    origin = "bundled"
    settings_type = DiscordSettings

    def __init__(self) -> None:
        super().__init__()
        self._config: DiscordSettings | None = None
        self._verify_key: VerifyKey | None = None
        self._registry: Registry | None = None
        self._rest: DiscordRest | None = None
        self._bot: DiscordBot | None = None
        self._ledger: InteractionLedger | None = None
        self._quota: PanelQuota | None = None
        self._gateway: GatewayClient | None = None
        self._gateway_state: GatewayState | None = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", INTERACTIONS_PATH, self._interactions),)

    def check(self, settings: AdapterSettings) -> None:
        """The public key parses (and is there for transport = "http"); ValueError naming it."""
        DiscordSettings.of_settings(settings).verify_key()

    async def start(self, runtime: PluginRuntime) -> None:
        """Open both registries (not in legacy mode) and the REST session.

        Raises StateStoreError from opening a store.
        """
        self._config = config = DiscordSettings.of(runtime)
        self._verify_key = config.verify_key()
        self._registry = Registry(legacy=runtime.legacy, ttl_ms=config.ttl_ms, max_entries=config.max_entries)
        self._ledger = InteractionLedger(legacy=runtime.legacy, window_s=config.timestamp_window_s)
        self._quota = PanelQuota(
            legacy=runtime.legacy,
            per_user=config.panels_per_user,
            panel_ttl_ms=self._registry.components.spec.ttl_ms or COMPONENTS.ttl_ms or 1,
        )
        for state in (*self._registry.states, self._ledger.state, self._quota.state):
            await self.open_state(state, runtime)
        self._rest = DiscordRest(api_base=config.api_base_url, bot_token=config.bot_token)
        await self._rest.open()
        self._bot = DiscordBot(self._registry, self._rest, log=runtime.log, quota=self._quota)
        if config.transport == "gateway":
            # the lease owner is the gateway, not the process: a restart re-takes its own lease
            self._gateway_state = GatewayState(legacy=runtime.legacy, shard=(0, 1), owner=config.gateway_id)
            for state in self._gateway_state.states:
                await self.open_state(state, runtime)
            self._gateway = GatewayClient(
                api_base=config.api_base_url,
                bot_token=config.bot_token,
                state=self._gateway_state,
                handle=self._gateway_interaction,
                log=runtime.log,
                intents=config.intents,
                reidentify_delay_s=config.reidentify_delay_s,
                lease_ms=config.shard_lease_ms,
            )
            await self._gateway.start()

    async def stop(self) -> None:
        if self._gateway is not None:
            await self._gateway.stop()  # interactions in hand finish; the session stays resumable
        if self._bot is not None:
            await self._bot.drain(STOP_TIMEOUT_S)  # deferred answers still going out
        if self._rest is not None:
            await self._rest.close()
        await super().stop()  # every registry, the ledger, the quota and the Gateway's state

    def health(self) -> dict[str, Any]:
        if self._registry is None:
            return {"status": "starting"}
        report: dict[str, Any] = {"status": "degraded" if self.degraded() else "ok", "registries": self.states_health()}
        if self._gateway is not None:
            report["transport"] = self._gateway.health()
            if not self._gateway.live:  # reconnecting, refused for good, or its reader ended
                report["status"] = "degraded"
        return report

    async def _gateway_interaction(self, payload: dict[str, Any], received_at: float) -> bool:
        """A Gateway INTERACTION_CREATE (received at monotonic `received_at`): the same parse and
        `respond` as the HTTP route, the initial response sent through the interaction callback.
        False when Discord did not take it (logged). Raises platform.BadRequest for a payload
        Discord would not send."""
        assert self._bot is not None and self._rest is not None
        it, rest = platform.parse(json.dumps(payload).encode()), self._rest

        async def send(response: dict[str, Any]) -> None:
            await rest.callback(it, response, received_at=received_at)

        try:
            await self._bot.respond(it, received_at=received_at, send=send)
        except RestError as exc:  # the action may have happened; the user saw "This interaction failed"
            self._bot.log.warning(
                "discord_callback_failed", extra={"error": str(exc), "interaction_type": it.type.name}
            )
            return False
        return True

    async def _interactions(self, request: web.Request) -> web.Response:
        assert self._config is not None and self._bot is not None and self._ledger is not None, "start() first"
        if self._verify_key is None:  # transport = "gateway" without a public key
            raise web.HTTPNotFound(text="this gateway takes Discord interactions over the Gateway")
        received_at = time.monotonic()
        body = await request.read()
        timestamp = ingress.credential(request.headers, platform.TIMESTAMP_HEADER)
        if not platform.verify(
            self._verify_key,
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
        return web.json_response(await self._bot.respond(interaction, received_at=received_at))
