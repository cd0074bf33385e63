"""The Teams plugin: wires auth, the sent-message cache, the botbuilder adapter and the bot.

Config, the `[adapters.teams]` table (`config.TeamsSettings`; docs/migrations/teams.md lists every key):
`app_id`; `openid_metadata_url`, `token_issuer`, `connector_token` for a local Bot Connector
simulator, or `app_password` for Azure; `sent_ttl_ms` and `sent_max_entries` to shrink the 24 h /
1,000 defaults in tests; `activity_lease_ms` (20 s) for the per-activity claim;
`mode = "legacy"` keeps the sent-message cache and the claims in memory only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from chatstate.adapters.teams.auth import TokenCheck, build_authentication, build_token_check
from chatstate.adapters.teams.clients import ReusedClients
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.handlers import ActivityGate, TeamsBot
from chatstate.adapters.teams.keys import SigningKeys
from chatstate.adapters.teams.platform import TeamsCloudAdapter
from chatstate.adapters.teams.state import SentMessages, open_activity_claims, open_requester_quota, open_sent_messages
from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.plugin import PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings
from chatstate.gateway.stateful import StatefulPlugin

MESSAGES_PATH = "/api/messages"  # the Bot Framework messaging endpoint
STOP_TIMEOUT_S = 10.0  # how long stop() waits for turns in flight


class TeamsPlugin(StatefulPlugin):
    """Microsoft Teams through the Bot Framework: POST /api/messages."""

    id = "teams"
    origin = "bundled"
    settings_type = TeamsSettings

    def __init__(self) -> None:
        super().__init__()
        self._state: AdapterState | None = None
        self._activities: AdapterState | None = None
        self._quota: AdapterState | None = None
        self._gate: ActivityGate | None = None
        self._adapter: TeamsCloudAdapter | None = None
        self._bot: TeamsBot | None = None
        self._check: TokenCheck | None = None
        self._key_sets: list[SigningKeys] = []

    def routes(self) -> Sequence[Route]:
        return (Route("POST", MESSAGES_PATH, self._messages),)

    def check(self, settings: AdapterSettings) -> None:
        """Azure or simulator credentials are complete (ValueError naming the missing key)."""
        TeamsSettings.of_settings(settings).check_credentials()

    async def start(self, runtime: PluginRuntime) -> None:
        """Build auth from the settings and open the sent-message cache, the per-activity
        claims and the requester quota.

        Raises StateStoreError from opening the store (it stops the gateway from starting).
        """
        settings = TeamsSettings.of(runtime)
        auth = ReusedClients(build_authentication(settings))  # clients built once, not per turn
        self._check, self._key_sets = build_token_check(settings)
        state = await self.open_state(open_sent_messages(settings, legacy=runtime.legacy), runtime)
        claims = open_activity_claims(settings, legacy=runtime.legacy)
        await self.open_state(claims.state, runtime)
        quota = open_requester_quota(settings, legacy=runtime.legacy)
        await self.open_state(quota.state, runtime)
        sent = SentMessages(state)
        self._state, self._activities, self._quota = state, claims.state, quota.state
        self._gate = ActivityGate(claims)
        self._adapter = TeamsCloudAdapter(auth, on_sent=sent.record, log=runtime.log, quota=quota)
        self._bot = TeamsBot(sent, log=runtime.log)

    async def stop(self) -> None:
        """Let turns in flight finish (their writes are what a restart relies on); cancel a
        signing-key fetch still running (it holds no thread: nothing to wait for)."""
        if self._gate is not None:
            await self._gate.drain(STOP_TIMEOUT_S)
        for keys in self._key_sets:
            await keys.close()
        await super().stop()  # the states: closed here, not left to the gateway

    def health(self) -> dict[str, Any]:
        if self._state is None:
            return {"status": "stopped"}
        detail = self._state.health()
        # An unreachable metadata host is the far end's fault, not ours: reported, not degraded.
        signing = self._check.keys.health() if self._check is not None else None
        quota = self._quota.health() if self._quota is not None else None
        activities = self._activities.health() if self._activities is not None else None
        return {
            "status": "degraded" if self.degraded() else "ok",
            **detail,
            "signing_keys": signing,
            "quota": quota,
            "activities": activities,
        }

    async def _messages(self, request: web.Request) -> web.Response:
        if self._adapter is None or self._bot is None or self._check is None or self._gate is None:
            raise web.HTTPServiceUnavailable(text="teams adapter is not started")
        adapter, bot = self._adapter, self._bot
        authenticated, activity = await adapter.read(request, check=self._check)  # 401/400 before any state
        return await self._gate.once(activity, lambda: adapter.run(authenticated, activity, bot))
