"""Slack Socket Mode: slack-sdk's aiohttp `SocketModeClient`, feeding the same event path as HTTP.

The transport owns only the link. Each `events_api` envelope goes to `handle(payload)`, the
Events API route's path (the gate's claim, the reply, the done mark), which says whether to
ack: yes when the event was handled, ignored, a duplicate, or is still running after the ack
budget (2.5 s of Slack's 3; held first); no while a live lease of another (dead) process holds
it or after its reply failed, and Slack redelivers it with `retry_attempt` + 1 (HTTP's 503). So
a SIGKILL with envelopes in flight loses nothing, and the claim makes each reply happen once.
`slash_commands` and `interactive` envelopes are acked and ignored (no HTTP route either).
slack-sdk reconnects by itself (after a `disconnect` frame, or pings without pongs: a new URL
from `apps.connections.open`, a new link); an ack goes on whichever link is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMessage
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from chatstate.adapters.slack.config import SlackSettings

EventHandler = Callable[[dict[str, Any], int | None], Awaitable[bool]]  # payload, retry_attempt -> ack it?
STOP_TIMEOUT_S = 10.0  # how long stop() lets envelopes in hand finish and be acked


class SocketModeTransport:
    """One Socket Mode link for the app; start it from the plugin's `start`, stop it in `stop`."""

    def __init__(
        self, settings: SlackSettings, handle: EventHandler, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self._settings = settings
        self._handle = handle
        self._log = log
        self._client: SocketModeClient | None = None
        self._closing = False
        self._in_hand: set[asyncio.Task[None]] = set()
        self.counts = {"envelopes": 0, "acked": 0, "not_acked": 0, "redelivered": 0, "disconnects": 0}

    async def start(self) -> None:
        """Open the link; returns once connected. Raises SlackApiError when `apps.connections.open`
        refuses the token (slack-sdk would retry forever; the gateway must not report ready)."""
        app_token = self._settings.app_token
        web_client = AsyncWebClient(base_url=self._settings.api_base_url)
        first = await web_client.apps_connections_open(app_token=app_token)
        client = SocketModeClient(
            app_token=app_token,
            web_client=web_client,
            ping_interval=self._settings.socket_ping_interval_s,
            logger=logging.getLogger("chatstate.adapters.slack.socket_mode.sdk"),
        )
        client.wss_uri = str(first["url"])
        client.on_message_listeners.append(self._on_frame)  # sees `disconnect`, which listeners do not
        client.socket_mode_request_listeners.append(self._on_request)
        self._client = client
        await client.connect()
        self._log.info("slack_socket_connected")

    async def stop(self) -> None:
        """Take no new envelopes (Slack redelivers them), ack those in hand, close the link."""
        self._closing = True
        if self._in_hand:
            await asyncio.wait(list(self._in_hand), timeout=STOP_TIMEOUT_S)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> dict[str, Any]:
        session = None if self._client is None else self._client.current_session
        return {"transport": "socket", "connected": session is not None and not session.closed, **self.counts}

    async def _on_frame(self, frame: WSMessage) -> None:
        if '"disconnect"' not in frame.data:  # cheap test before parsing every envelope twice
            return
        with contextlib.suppress(ValueError):
            message = json.loads(frame.data)
            if isinstance(message, dict) and message.get("type") == "disconnect":  # slack-sdk reconnects
                self.counts["disconnects"] += 1
                self._log.info("slack_socket_disconnect", extra={"reason": message.get("reason")})

    async def _on_request(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        if self._closing:
            return  # not acked: Slack redelivers it to whoever is connected next
        task = asyncio.current_task()
        assert task is not None  # slack-sdk runs each listener call in its own task
        self._in_hand.add(task)
        try:
            self.counts["envelopes"] += 1
            self.counts["redelivered"] += bool(req.retry_attempt)
            if req.type == "events_api" and not await self._handle(req.payload, req.retry_attempt):
                self.counts["not_acked"] += 1
                extra = {"envelope_id": req.envelope_id, "retry_attempt": req.retry_attempt or 0}
                self._log.info("slack_envelope_not_acked", extra=extra)
                return
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            self.counts["acked"] += 1
        finally:
            self._in_hand.discard(task)
