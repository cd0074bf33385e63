"""The Teams plugin (wiring): POST /api/messages. A request's token is checked before its body
is read (401), the body parsed (400), then `TeamsBot.answer` runs the turn through the gate: one
durable claim, then the turn's staged rows committed with the done mark, then 200.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chatstate.adapters.teams.auth import SigningKeys, TokenCheck, build_authentication
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.handlers import TeamsBot
from chatstate.adapters.teams.platform import ReusedClients, TeamsCloudAdapter
from chatstate.adapters.teams.state import ACTIVITIES, SentMessages, requesters_spec, spec_from_config
from chatstate.gateway.sdk import AdapterState, InboundGate, PluginRuntime, StatefulPlugin, UserQuota

MESSAGES_PATH = "/api/messages"  # the Bot Framework messaging endpoint


@dataclass(frozen=True)
class Running:
    """The Teams plugin's parts, built once in `build` (the bot holds the adapter and the gate)."""

    bot: TeamsBot
    check: TokenCheck
    key_sets: tuple[SigningKeys, ...]

    async def close(self) -> None:
        """Let turns in flight finish (a restart relies on their writes); cancel key fetches."""
        await self.bot.gate.stop()
        for keys in self.key_sets:
            await keys.close()

    def health(self) -> dict[str, Any]:
        # a kept key set still verifies tokens while the metadata host is down; with none ever
        # fetched and the last fetch failed, every activity is refused (503): not a green /healthz
        keys = self.check.keys.health()
        dead = {"status": "degraded"} if keys["failing"] and not keys["keys"] else {}
        return {"in_flight": self.bot.gate.in_flight, "signing_keys": keys, **dead}


class TeamsPlugin(StatefulPlugin[Running]):
    """Microsoft Teams through the Bot Framework: POST /api/messages."""

    id = "teams"
    settings_type = TeamsSettings
    webhook = MESSAGES_PATH

    async def build(self, runtime: PluginRuntime) -> Running:
        """Build auth and open the three states. Raises ValueError (bad config) and
        StateStoreError (opening a store)."""
        settings = TeamsSettings.of(runtime)
        library, check, key_sets = build_authentication(settings)
        sent, activities, requesters = [
            await self.open_state(AdapterState(spec, legacy=runtime.legacy), runtime)
            for spec in (spec_from_config(settings), ACTIVITIES, requesters_spec(settings))
        ]
        messages = SentMessages(sent)
        quota = UserQuota(requesters, per_user=settings.sent_per_user, ttl_ms=settings.sent_ttl_ms)
        adapter = TeamsCloudAdapter(ReusedClients(library), sent=messages, quota=quota, log=runtime.log)
        gate = InboundGate(activities, lease_ms=settings.activity_lease_ms, log=runtime.log)
        bot = TeamsBot(messages, adapter=adapter, gate=gate, log=runtime.log)
        gate.start()
        return Running(bot, check, tuple(key_sets))

    async def handle(self, request: web.Request) -> web.Response:
        run = self.running
        authenticated, activity = await run.bot.adapter.read(request, check=run.check)  # 401/400 before any state
        return await run.bot.answer(authenticated, activity)
