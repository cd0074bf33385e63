"""Slack Socket Mode: slack-sdk's aiohttp `SocketModeClient`, feeding the same event path as HTTP.

The transport owns only the link. Each envelope goes to `handle(payload, retry_attempt)`, the
plugin's one event path (claim in `slack.events`, policy, reply, done mark: the code the Events
API route runs), which says whether to acknowledge:
- acked: the event was handled, ignored, is a duplicate, or is still being handled after the
  ack budget (2.5 s; Slack wants the ack within 3 s). The claim was taken first, durably.
- not acked: a live lease of another (dead) process holds the event, or the reply failed and the
  lease was released. Slack redelivers an un-acked envelope with `retry_attempt` + 1, which is
  what the HTTP path gets by answering 503.
So a SIGKILL with envelopes in flight loses nothing: Slack redelivers them to the restarted
gateway (or to another connection of the app), and the `slack.events` claim makes each reply
happen once. `slash_commands` and `interactive` envelopes are acked and ignored, as the HTTP
path has no route for them.

slack-sdk reconnects by itself: on a `disconnect` frame (warning, refresh_requested,
link_disabled, too_many_websockets) it asks `apps.connections.open` for a new URL and opens a
new link; when pings stop getting pongs it does the same. An ack is sent on whichever link is
current, and Slack accepts it there.
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

# `handle(event_callback payload, retry_attempt)` -> True to acknowledge the envelope
EventHandler = Callable[[dict[str, Any], int], Awaitable[bool]]
STOP_TIMEOUT_S = 10.0  # how long stop() lets envelopes in hand finish and be acked


class SocketModeTransport:
    """One Socket Mode link for the app; start it from the plugin's `start`, stop it in `stop`."""

    def __init__(
        self,
        *,
        app_token: str,
        api_base_url: str,
        handle: EventHandler,
        log: logging.LoggerAdapter[logging.Logger],
        ping_interval_s: float,
    ) -> None:
        self._app_token = app_token
        self._api_base_url = api_base_url
        self._handle = handle
        self._log = log
        self._ping_interval_s = ping_interval_s
        self._client: SocketModeClient | None = None
        self._closing = False
        self._in_hand: set[asyncio.Task[None]] = set()
        self.counts = {"envelopes": 0, "acked": 0, "not_acked": 0, "redelivered": 0, "disconnects": 0}

    async def start(self) -> None:
        """Open the link; returns once connected.

        Raises slack_sdk.errors.SlackApiError when `apps.connections.open` refuses the token
        (slack-sdk would otherwise retry forever, and the gateway must not report ready).
        """
        web_client = AsyncWebClient(base_url=self._api_base_url)
        first = await web_client.apps_connections_open(app_token=self._app_token)
        client = SocketModeClient(
            app_token=self._app_token,
            web_client=web_client,
            ping_interval=self._ping_interval_s,
            logger=logging.getLogger("chatstate.adapters.slack.socket_mode.sdk"),
        )
        client.wss_uri = str(first["url"])
        client.on_message_listeners.append(self._on_frame)  # sees `disconnect`, which listeners do not
        client.socket_mode_request_listeners.append(self._on_request)
        self._client = client
        await client.connect()
        self._log.info("slack_socket_connected")

    async def stop(self) -> None:
        """Take no new envelopes (Slack redelivers them), let those in hand finish and be acked,
        then close the link."""
        self._closing = True
        if self._in_hand:
            await asyncio.wait(list(self._in_hand), timeout=STOP_TIMEOUT_S)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> dict[str, Any]:
        connected = (
            self._client is not None
            and self._client.current_session is not None
            and not self._client.current_session.closed
        )
        return {"transport": "socket", "connected": connected, **self.counts}

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
            await self._serve(client, req)
        finally:
            self._in_hand.discard(task)

    async def _serve(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        self.counts["envelopes"] += 1
        attempt = req.retry_attempt or 0
        if attempt:
            self.counts["redelivered"] += 1
        ack = True
        if req.type == "events_api":
            ack = await self._handle(req.payload, attempt)
        if not ack:
            self.counts["not_acked"] += 1
            self._log.info("slack_envelope_not_acked", extra={"envelope_id": req.envelope_id, "retry_attempt": attempt})
            return
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        self.counts["acked"] += 1
