"""The Discord plugin: one route, `POST /discord/interactions`, Discord's interactions endpoint,
or (`transport = "gateway"`) the Discord Gateway websocket (`gateway_client.py`).

Every request is verified (Ed25519, `X-Signature-Ed25519` over `X-Signature-Timestamp + body`)
before anything is parsed, read or written: a bad signature is 401 and touches no state. Then
a timestamp outside `timestamp_window_s` is 401, the body is parsed (400 for junk,
ids checked before any lookup), and `sdk.InboundGate` claims the interaction id in
`discord.interactions`: a replay of a captured, validly signed interaction answers 409 and does
nothing. The work's state writes commit with the done mark, in one transaction.
Both transports answer through the same `DiscordBot.respond` (the answer, or a deferral within
Discord's 3 s): over HTTP in the response body, over the Gateway through the interaction
callback (`DiscordRest.callback`, 429s retried within the 3 s).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import discord
from aiohttp import web
from nacl.signing import VerifyKey

from chatstate.adapters.discord import platform
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.discord.gateway_client import GatewayClient
from chatstate.adapters.discord.gateway_state import GatewayState
from chatstate.adapters.discord.handlers import CALLBACK_FAILED, DiscordBot
from chatstate.adapters.discord.rest import DiscordRest
from chatstate.adapters.discord.state import (
    COMPONENTS,
    INTERACTION_LEASE_MS,
    Registry,
    interactions_spec,
    panel_owners_spec,
)
from chatstate.gateway.sdk import (
    AdapterSettings,
    AdapterState,
    InboundGate,
    Outcome,
    PluginRuntime,
    Route,
    StatefulPlugin,
    UserQuota,
    ingress,
)

INTERACTIONS_PATH = "/discord/interactions"


@dataclass(frozen=True)
class Running:
    """The Discord plugin's parts, built once in `build`."""

    settings: DiscordSettings
    verify_key: VerifyKey | None  # None: transport = "gateway" without a public key (no HTTP route)
    rest: DiscordRest
    bot: DiscordBot
    gate: InboundGate
    link: GatewayClient | None  # transport = "gateway"

    async def close(self) -> None:
        """Take no new dispatches (the session stays resumable), let answers in flight finish,
        then close the REST session."""
        if self.link is not None:
            await self.link.stop()
        await self.gate.stop()
        await self.rest.close()

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"in_flight": self.gate.in_flight}
        if self.link is not None:
            report["transport"] = self.link.health()
            if not self.link.live:  # reconnecting, refused for good, or its reader ended
                report["status"] = "degraded"
        return report


class DiscordPlugin(StatefulPlugin[Running]):
    """Components and modals whose registries survive a gateway restart."""

    id = "discord"
    origin = "bundled"
    settings_type = DiscordSettings

    def routes(self) -> Sequence[Route]:
        return (Route("POST", INTERACTIONS_PATH, self._interactions),)

    def check(self, settings: AdapterSettings) -> None:
        """The public key parses (and is there for transport = "http"); ValueError naming it."""
        DiscordSettings.of_settings(settings).verify_key()

    async def build(self, runtime: PluginRuntime) -> Running:
        """Open the registries, the gate's claims and the quota, the REST session, and (transport
        = "gateway") the Gateway link. Raises StateStoreError from opening a store."""
        config = DiscordSettings.of(runtime)
        registry = Registry(legacy=runtime.legacy, ttl_ms=config.ttl_ms, max_entries=config.max_entries)
        for state in registry.states:
            await self.open_state(state, runtime)
        claims, owners = [
            await self.open_state(AdapterState(spec, legacy=runtime.legacy), runtime)
            for spec in (
                interactions_spec(config.timestamp_window_s),
                panel_owners_spec(registry.components.spec.ttl_ms or COMPONENTS.ttl_ms or 1),
            )
        ]
        quota = UserQuota(owners, per_user=config.panels_per_user, ttl_ms=owners.spec.ttl_ms or 1)
        rest = DiscordRest(api_base=config.api_base_url, bot_token=config.bot_token)
        await rest.open()
        bot = DiscordBot(registry, rest, log=runtime.log, quota=quota)
        gate = InboundGate(claims, lease_ms=INTERACTION_LEASE_MS, log=runtime.log)
        run = Running(config, config.verify_key(), rest, bot, gate, None)
        if config.transport == "gateway":
            # the lease owner is the gateway, not the process: a restart re-takes its own lease
            link_state = GatewayState(legacy=runtime.legacy, shard=(0, 1), owner=config.gateway_id)
            await self.open_state(link_state.sessions, runtime)
            link = GatewayClient(
                api_base=config.api_base_url,
                bot_token=config.bot_token,
                state=link_state,
                handle=lambda payload, received_at: self._gateway_interaction(run, payload, received_at),
                log=runtime.log,
                intents=config.intents,
                reidentify_delay_s=config.reidentify_delay_s,
                lease_ms=config.shard_lease_ms,
            )
            try:
                await link.start()
            except BaseException:
                await rest.close()
                raise
            run = Running(config, run.verify_key, rest, bot, gate, link)
        return run

    @staticmethod
    async def _gateway_interaction(run: Running, payload: dict[str, Any], received_at: float) -> str:
        """A Gateway INTERACTION_CREATE (received at monotonic `received_at`): the same parse,
        gate and `respond` as the HTTP route, the initial response sent through the interaction
        callback. Says which count it adds to: "duplicates" (replayed after a RESUME, or held
        by another gateway), "callback_failures" (Discord did not take the answer; logged) or
        "interactions". Raises platform.BadRequest for a payload Discord would not send."""
        it = platform.parse(json.dumps(payload).encode())

        async def send(response: dict[str, Any]) -> None:
            await run.rest.callback(it, response, received_at=received_at)

        answer = await run.gate.deliver(run.bot.job(it, send, received_at=received_at))
        if answer.outcome in (Outcome.ALREADY_DONE, Outcome.IN_PROGRESS, Outcome.LEASED):
            return "duplicates"
        return "interactions" if answer.taken and answer.text != CALLBACK_FAILED else "callback_failures"

    async def _interactions(self, request: web.Request) -> web.Response:
        run = self.running
        if run.verify_key is None:  # transport = "gateway" without a public key
            raise web.HTTPNotFound(text="this gateway takes Discord interactions over the Gateway")
        received_at = time.monotonic()
        body = await request.read()
        timestamp = ingress.credential(request.headers, platform.TIMESTAMP_HEADER)
        if not platform.verify(
            run.verify_key,
            signature=ingress.credential(request.headers, platform.SIGNATURE_HEADER),
            timestamp=timestamp,
            body=body,
        ):
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

        delivery = asyncio.ensure_future(run.gate.deliver(run.bot.job(interaction, send, received_at=received_at)))
        await asyncio.wait({initial, delivery}, return_when=asyncio.FIRST_COMPLETED)
        if initial.done():
            if initial.result().get("type") not in platform.DEFERRALS:
                await asyncio.wait({delivery})  # the done mark and the work's writes land first
            # a deferral goes out now; the gate keeps the work in flight (`stop` waits for it)
            return web.json_response(initial.result())
        answer = delivery.result()
        if answer.outcome in (Outcome.ALREADY_DONE, Outcome.IN_PROGRESS):
            raise web.HTTPConflict(text="interaction already handled")  # a replay: no second effect
        return answer.response()
