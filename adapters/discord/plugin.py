"""The Discord plugin: `POST /discord/interactions`, or the Gateway websocket with
`transport = "gateway"`. An HTTP request is verified (Ed25519, and a fresh timestamp) before
anything is parsed, read or written (401 otherwise), then parsed (400 for junk); the gate claims
the interaction id, so a replayed capture answers 409 and does nothing. Both transports answer
through `DiscordBot.respond`: in the HTTP body, or through the interaction callback.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import discord
from aiohttp import web
from nacl.signing import VerifyKey

import chatstate.gateway.sdk as sdk
from chatstate.adapters.discord import platform, state
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.discord.gateway_client import GatewayClient
from chatstate.adapters.discord.handlers import CALLBACK_FAILED, DiscordBot, Send

INTERACTIONS_PATH = "/discord/interactions"
REPLAYED = (sdk.Outcome.ALREADY_DONE, sdk.Outcome.IN_PROGRESS)  # a duplicate of an interaction answered here


@dataclass(frozen=True)
class Running:
    """The Discord plugin's parts, built once in `build`."""

    settings: DiscordSettings
    verify_key: VerifyKey | None  # None: transport = "gateway" without a public key (no HTTP route)
    rest: platform.DiscordRest
    bot: DiscordBot
    gate: sdk.InboundGate
    link: GatewayClient | None = None  # transport = "gateway"

    async def deliver(self, it: platform.Interaction, send: Send, received_at: float, last: bool = False) -> sdk.Answer:
        return await self.gate.deliver(self.bot.job(it, send, received_at=received_at), last_attempt=last)

    async def close(self) -> None:
        """Take no new dispatches (the session stays resumable); let answers in flight finish."""
        if self.link is not None:
            await self.link.stop()
        await self.gate.stop()
        await self.rest.close()

    def health(self) -> dict[str, Any]:
        if self.link is None:
            return {"in_flight": self.gate.in_flight}
        down = {} if self.link.live else {"status": "degraded"}  # reconnecting, refused, or its reader ended
        return {"in_flight": self.gate.in_flight, "transport": self.link.health(), **down}

    async def from_gateway(self, payload: dict[str, Any], received_at: float) -> str:
        """A Gateway INTERACTION_CREATE, answered through the callback; the count it adds to:
        "duplicates" (a RESUME's replay, or another gateway's), "callback_failures" (Discord
        did not take the answer) or "interactions". Raises platform.BadRequest."""
        it = platform.parse(json.dumps(payload).encode())

        async def send(response: dict[str, Any]) -> None:
            await self.rest.callback(it, response, received_at=received_at)

        answer = await self.deliver(it, send, received_at, True)  # one session per shard, never sent again
        if answer.outcome in (*REPLAYED, sdk.Outcome.LEASED):
            return "duplicates"
        return "interactions" if answer.taken and answer.text != CALLBACK_FAILED else "callback_failures"


class DiscordPlugin(sdk.StatefulPlugin[Running]):
    """Components and modals whose registries survive a gateway restart."""

    id = "discord"
    settings_type = DiscordSettings
    webhook = INTERACTIONS_PATH

    async def build(self, runtime: sdk.PluginRuntime) -> Running:
        """Open the registries, the gate's claims, the quota, the REST session and (transport
        = "gateway") the Gateway link. Raises StateStoreError from opening a store."""
        config = DiscordSettings.of(runtime)
        registry = state.Registry(legacy=runtime.legacy, ttl_ms=config.ttl_ms, max_entries=config.max_entries)
        panel_ttl_ms = registry.components.spec.ttl_ms or 1
        specs = (state.interactions_spec(config.timestamp_window_s), state.panel_owners_spec(panel_ttl_ms))
        claims, owners = [sdk.AdapterState(spec, legacy=runtime.legacy) for spec in specs]
        for opened in (*registry.states, claims, owners):
            await self.open_state(opened, runtime)
        quota = sdk.UserQuota(owners, per_user=config.panels_per_user, ttl_ms=panel_ttl_ms)
        rest = platform.DiscordRest(api_base=config.api_base_url, bot_token=config.bot_token)
        await rest.open()
        bot = DiscordBot(registry, rest, log=runtime.log, quota=quota)
        gate = sdk.InboundGate(claims, lease_ms=state.INTERACTION_LEASE_MS, log=runtime.log)
        run = Running(config, config.verify_key(), rest, bot, gate)
        if config.transport == "http":
            return run
        # the lease owner is the gateway, not the process: a restart re-takes its own lease
        link_state = state.GatewayState(legacy=runtime.legacy, shard=(0, 1), owner=config.gateway_id)
        await self.open_state(link_state.sessions, runtime)
        link = GatewayClient(config, state=link_state, handle=run.from_gateway, log=runtime.log)
        try:
            await link.start()
        except BaseException:
            await rest.close()
            raise
        return Running(config, run.verify_key, rest, bot, gate, link)

    async def handle(self, request: web.Request) -> web.Response:
        run = self.running
        if run.verify_key is None:  # transport = "gateway" without a public key
            raise web.HTTPNotFound(text="this gateway takes Discord interactions over the Gateway")
        received_at = time.monotonic()
        body = await request.read()
        timestamp = sdk.ingress.credential(request.headers, platform.TIMESTAMP_HEADER)
        signature = sdk.ingress.credential(request.headers, platform.SIGNATURE_HEADER)
        if not platform.verify(run.verify_key, signature=signature, timestamp=timestamp, body=body):
            raise web.HTTPUnauthorized(text="invalid request signature")
        if not platform.fresh(timestamp, window_s=run.settings.timestamp_window_s, now_s=time.time()):
            raise web.HTTPUnauthorized(text="request timestamp outside the freshness window")
        try:
            interaction = platform.parse(body)
        except platform.BadRequest as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if interaction.type is discord.InteractionType.ping:  # no id, no effect: nothing to claim
            return web.json_response(platform.pong())
        initial: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def send(response: dict[str, Any]) -> None:
            initial.set_result(response)

        delivery = asyncio.ensure_future(run.deliver(interaction, send, received_at))
        await asyncio.wait({initial, delivery}, return_when=asyncio.FIRST_COMPLETED)
        if initial.done():
            if initial.result().get("type") not in platform.DEFERRALS:
                await asyncio.wait({delivery})  # the done mark and the work's writes land first
            # a deferral goes out now; the gate keeps the work in flight (`stop` waits for it)
            return web.json_response(initial.result())
        answer = delivery.result()
        if answer.outcome in REPLAYED:
            raise web.HTTPConflict(text="interaction already handled")  # a replay: no second effect
        return answer.response()
