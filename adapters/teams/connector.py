"""The platform I/O: authenticate and parse `POST /api/messages`, run the turn, send replies.

Built the way botbuilder's docs show (a `CloudAdapterBase` adapter processing the incoming
`Activity` for an `ActivityHandler`); the aiohttp glue is ours because botbuilder-integration-
aiohttp is not a dependency. Outbound calls go to the activity's `serviceUrl` through
botframework-connector's `ConnectorClient`, so the simulator receives exactly what Azure would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from aiohttp import web
from botbuilder.core import Bot, CloudAdapterBase, TurnContext
from botbuilder.schema import Activity, ResourceResponse
from botframework.connector.auth import AuthenticateRequestResult, BotFrameworkAuthentication
from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError
from requests import RequestException

OnSent = Callable[[str, Sequence[str | None]], Awaitable[None]]
SEND_RETRIES = 3  # a send refused with 429 or 502/503/504 is tried again at most this often
MAX_RETRY_AFTER_S = 10  # a longer Retry-After fails the send instead (the channel redelivers)
BACKOFF_S = 0.25  # 502/503/504: wait 0.25, 0.5, 1 s
TRANSIENT = (502, 503, 504)


def retry_delay(exc: HttpOperationError, attempt: int) -> float | None:
    """Seconds to wait before sending again after `exc`, or None when it must not be retried:
    429 honours Retry-After (bounded), 502/503/504 back off; anything else is final."""
    response: Any = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status == 429:
        headers = getattr(response, "headers", None) or {}
        try:
            wait = float(headers.get("Retry-After", 1))
        except (TypeError, ValueError):
            return None
        return wait if 0 <= wait <= MAX_RETRY_AFTER_S else None
    if status in TRANSIENT:
        return BACKOFF_S * 2**attempt
    return None


class TeamsCloudAdapter(CloudAdapterBase):
    """A botbuilder cloud adapter that reports every id the Bot Connector returns to `on_sent`.

    `send_activities` and `update_activity` are where every botbuilder send path ends
    (`send_activity`, replies, `send_activities`, `update_activity`, proactive turns), so
    overriding just these two makes `on_sent` the single recording point; it is awaited before
    the send returns to the bot's code.
    """

    def __init__(
        self, auth: BotFrameworkAuthentication, *, on_sent: OnSent,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
    ) -> None:
        super().__init__(auth)
        self._on_sent = on_sent
        self._log = log or logging.getLogger("chatstate.adapters.teams")

    async def send_activities(
        self, context: TurnContext, activities: list[Activity]
    ) -> list[ResourceResponse]:
        """Send each activity (429 and 502/503/504 retried, bounded) and record the id of the
        send that finally succeeded, once. Raises HttpOperationError when retries run out."""
        responses = []
        for activity in activities:
            response = await self._send_one(context, activity)
            if activity.conversation is not None and response is not None:
                await self._on_sent(activity.conversation.id, [response.id])
            responses.append(response)
        return responses

    async def _send_one(self, context: TurnContext, activity: Activity) -> ResourceResponse:
        for attempt in range(SEND_RETRIES + 1):
            try:
                [response] = await super().send_activities(context, [activity])
                return response
            except HttpOperationError as exc:
                delay = retry_delay(exc, attempt)
                if delay is None or attempt == SEND_RETRIES:
                    raise
                self._log.warning("bot_connector_retry", extra={
                    "status": getattr(exc.response, "status_code", None), "attempt": attempt + 1, "delay_s": delay})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def update_activity(self, context: TurnContext, activity: Activity) -> ResourceResponse | None:
        response = await super().update_activity(context, activity)
        if activity.conversation is not None:
            await self._on_sent(activity.conversation.id, [response.id if response else activity.id])
        return response

    async def authenticate(self, activity: Activity, auth_header: str | None) -> AuthenticateRequestResult:
        """Validate the bearer token of an incoming activity (see adapters.teams.auth).

        Runs on a worker thread with its own loop: botframework-connector fetches the OpenID
        metadata and JWKS with blocking `requests` inside its coroutines (once a day per URL),
        which must not stall the gateway's loop. Raises PermissionError and PyJWT errors for a
        bad token, `requests.RequestException` when the metadata cannot be fetched.
        """
        return await asyncio.to_thread(
            asyncio.run, self.bot_framework_authentication.authenticate_request(activity, auth_header)
        )

    async def handle(self, request: web.Request, bot: Bot) -> web.Response:
        """Serve `POST /api/messages`: 401 before anything else when the token is missing or
        bad, 400 for a body that is not an Activity, 502 when the Bot Connector refused a send.
        Answers only after the turn, and so every recording, is done."""
        authenticated, activity = await self.read(request)
        return await self.run(authenticated, activity, bot)

    async def read(self, request: web.Request) -> tuple[AuthenticateRequestResult, Activity]:
        """Authenticate and parse one request: 401 (missing/bad token), 400, 503 (no keys)."""
        auth_header = request.headers.get("Authorization")
        if not auth_header:
            raise web.HTTPUnauthorized(text="missing bearer token")
        activity = _parse(await request.read())
        try:
            authenticated = await self.authenticate(activity, auth_header)
        except RequestException as exc:
            self._log.error("auth_metadata_unavailable", extra={"error": type(exc).__name__})
            raise web.HTTPServiceUnavailable(text="cannot fetch the token signing keys") from None
        except Exception as exc:  # noqa: BLE001 - the library signals a bad token with many types
            self._log.warning("auth_rejected", extra={"error": type(exc).__name__})  # never the token
            raise web.HTTPUnauthorized(text="invalid bearer token") from None
        return authenticated, activity

    async def run(self, authenticated: AuthenticateRequestResult, activity: Activity, bot: Bot) -> web.Response:
        """Run the turn; 502 when the Bot Connector refused a send (after its retries)."""
        try:
            invoke = await self.process_activity(authenticated, activity, bot.on_turn)
        except (HttpOperationError, ClientRequestError) as exc:
            self._log.error("bot_connector_failed", extra={"error": type(exc).__name__})
            raise web.HTTPBadGateway(text=f"bot connector call failed: {type(exc).__name__}") from None
        if invoke is None:
            return web.Response(status=HTTPStatus.OK)
        return web.json_response(invoke.body, status=invoke.status)


def _parse(body: bytes) -> Activity:
    """Deserialize a Bot Framework Activity; raises HTTPBadRequest for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        raise web.HTTPBadRequest(text="body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise web.HTTPBadRequest(text="body is not an Activity")
    try:
        activity = Activity().deserialize(data)
    except DeserializationError:  # a ValueError; msrest names the field, never echoes values
        raise web.HTTPBadRequest(text="body is not a valid Activity") from None
    if not activity.service_url or activity.conversation is None:
        raise web.HTTPBadRequest(text="an Activity needs serviceUrl and conversation")
    return activity
