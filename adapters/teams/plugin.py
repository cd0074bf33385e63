"""The Teams plugin: wires auth, the sent-message cache, the botbuilder adapter and the bot.

Config, the `[adapters.teams]` table (docs/migrations/teams.md lists every key):
`app_id`; `openid_metadata_url`, `token_issuer`, `connector_token` for a local Bot Connector
simulator, or `app_password` for Azure; `sent_ttl_ms` and `sent_max_entries` to shrink the 24 h /
1,000 defaults in tests; `mode = "legacy"` keeps the sent-message cache in memory only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from chatstate.adapters.common import AdapterState
from chatstate.adapters.teams.auth import build_authentication
from chatstate.adapters.teams.bot import TeamsBot
from chatstate.adapters.teams.clients import ReusedClients
from chatstate.adapters.teams.connector import TeamsCloudAdapter
from chatstate.adapters.teams.sent import SentMessages
from chatstate.adapters.teams.state import open_sent_messages
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route

MESSAGES_PATH = "/api/messages"  # the Bot Framework messaging endpoint


class TeamsPlugin(Plugin):
    """Microsoft Teams through the Bot Framework: POST /api/messages."""

    id = "teams"
    origin = "bundled"

    def __init__(self) -> None:
        self._state: AdapterState | None = None
        self._adapter: TeamsCloudAdapter | None = None
        self._bot: TeamsBot | None = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", MESSAGES_PATH, self._messages),)

    async def start(self, runtime: PluginRuntime) -> None:
        """Build auth from the config and open the sent-message cache.

        Raises ValueError naming a missing or bad config key, and StateStoreError from opening
        the store (both stop the gateway from starting).
        """
        auth = ReusedClients(build_authentication(runtime.config))  # clients built once, not per turn
        state = open_sent_messages(runtime.config, legacy=runtime.legacy)
        await state.open(runtime)
        sent = SentMessages(state)
        self._state = state
        self._adapter = TeamsCloudAdapter(auth, on_sent=sent.record, log=runtime.log)
        self._bot = TeamsBot(sent, log=runtime.log)

    def health(self) -> dict[str, Any]:
        if self._state is None:
            return {"status": "stopped"}
        detail = self._state.health()
        return {"status": "degraded" if detail["mode"] == "degraded" else "ok", **detail}

    async def _messages(self, request: web.Request) -> web.Response:
        if self._adapter is None or self._bot is None:
            raise web.HTTPServiceUnavailable(text="teams adapter is not started")
        return await self._adapter.handle(request, self._bot)
