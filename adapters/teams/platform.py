"""The platform I/O: authenticate and parse `POST /api/messages`, run the turn, send replies.

Built the way botbuilder's docs show (a `CloudAdapterBase` adapter processing the incoming
`Activity` for an `ActivityHandler`); the aiohttp glue is ours because botbuilder-integration-
aiohttp is not a dependency. Outbound calls go to the activity's `serviceUrl` through
botframework-connector's `ConnectorClient`, so the simulator receives exactly what Azure would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import web
from botbuilder.core import Bot, CloudAdapterBase, TurnContext
from botbuilder.schema import Activity, ResourceResponse
from botframework.connector.auth import AuthenticateRequestResult, BotFrameworkAuthentication
from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError

from chatstate.adapters.teams.auth import MAX_TOKEN_CHARS, TokenCheck
from chatstate.adapters.teams.keys import KeysUnavailable
from chatstate.gateway import ingress
from chatstate.gateway.claims import RequesterQuota
from chatstate.gateway.clock import now_ms
from chatstate.gateway.ingress import short_id

_T = TypeVar("_T")
QUOTA_NOTE = (
    "(You have had many answers from me recently, so a reply to this message will need an @mention to reach me.)"
)
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
        self,
        auth: BotFrameworkAuthentication,
        *,
        on_sent: OnSent,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
        quota: RequesterQuota | None = None,
    ) -> None:
        super().__init__(auth)
        self._on_sent = on_sent
        self._log = log or logging.getLogger("chatstate.adapters.teams")
        self._quota = quota  # sent rows per requester; None = unlimited

    async def send_activities(self, context: TurnContext, activities: list[Activity]) -> list[ResourceResponse]:
        """Send each activity (429 and 502/503/504 retried, bounded) and record the id of the
        send that finally succeeded, once, unless the requester is over their quota (then the
        message carries a visible note instead). Raises HttpOperationError when retries run
        out; the quota rows of what was not sent are given back."""
        requester = _requester(context)
        recorded = [await self._admit(requester) for _ in activities]
        for activity, admitted in zip(activities, recorded, strict=True):
            if not admitted and activity.type == "message":  # visible: replies will need a mention
                activity.text = f"{activity.text or ''}\n{QUOTA_NOTE}"
        responses = []
        for i, activity in enumerate(activities):
            try:
                response = await self._send_one(context, activity)
            except BaseException:
                if requester is not None and self._quota is not None:
                    for _ in filter(None, recorded[i:]):
                        await self._quota.release(requester, now_ms=now_ms())
                raise
            if recorded[i] and activity.conversation is not None and response is not None:
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
                self._log.warning(
                    "bot_connector_retry",
                    extra={
                        "status": getattr(exc.response, "status_code", None),
                        "attempt": attempt + 1,
                        "delay_s": delay,
                    },
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _admit(self, requester: str | None) -> bool:
        if self._quota is None or requester is None:
            return True
        if await self._quota.admit(requester, now_ms=now_ms()) is None:
            return True
        self._log.info("sent_quota_refused", extra={"per_user": self._quota.per_user})
        return False

    async def update_activity(self, context: TurnContext, activity: Activity) -> ResourceResponse | None:
        response = await super().update_activity(context, activity)
        if activity.conversation is not None:
            await self._on_sent(activity.conversation.id, [response.id if response else activity.id])
        return response

    async def authenticate(self, activity: Activity, auth_header: str | None) -> AuthenticateRequestResult:
        """Validate the bearer token of an incoming activity (see adapters.teams.auth).

        On the loop: the library reads its signing keys from adapters.teams.keys (installed in
        its metadata cache), a coroutine with timeouts, so nothing here blocks; the worker
        thread and second event loop this used to need (~300 µs a request) are gone.
        Raises PermissionError and PyJWT errors for a bad token, KeysUnavailable when no
        signing keys can be had.
        """
        return await self.bot_framework_authentication.authenticate_request(activity, auth_header)

    async def handle(self, request: web.Request, bot: Bot, *, check: TokenCheck) -> web.Response:
        """Serve `POST /api/messages`: 401 before the body is even read when the token is
        missing or bad, 400 for a body that is not an Activity, 503 when no signing keys can be
        fetched, 502 when the Bot Connector refused a send. Answers only after the turn, and
        so every recording, is done."""
        authenticated, activity = await self.read(request, check=check)
        return await self.run(authenticated, activity, bot)

    async def read(self, request: web.Request, *, check: TokenCheck) -> tuple[AuthenticateRequestResult, Activity]:
        """Authenticate, then parse, one request: 401 (missing/bad token, before the body is
        read), 400 (not an Activity), 503 (no signing keys)."""
        auth_header = ingress.credential(request.headers, "Authorization", max_chars=MAX_TOKEN_CHARS + 7)
        if not auth_header:
            raise web.HTTPUnauthorized(text="missing bearer token")
        await self._guarded(check.verify(auth_header))  # authentication before parsing
        activity = _parse(await request.read())
        authenticated = await self._guarded(self.authenticate(activity, auth_header))
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

    async def _guarded(self, auth: Awaitable[_T]) -> _T:
        """Await a token check: 503 when no keys can be had, 401 for any other failure."""
        try:
            return await auth
        except KeysUnavailable:
            self._log.error("auth_metadata_unavailable", extra={"error": "KeysUnavailable"})
            raise web.HTTPServiceUnavailable(text="cannot fetch the token signing keys") from None
        except Exception as exc:  # noqa: BLE001 - the library signals a bad token with many types
            self._log.warning("auth_rejected", extra={"error": type(exc).__name__})  # never the token
            raise web.HTTPUnauthorized(text="invalid bearer token") from None


def _requester(context: TurnContext) -> str | None:
    """The user whose activity this turn answers (None for a proactive send)."""
    sender = context.activity.from_property if context.activity is not None else None
    return short_id(sender.id, limit=200) if sender is not None and isinstance(sender.id, str) and sender.id else None


def _parse(body: bytes) -> Activity:
    """Deserialize a Bot Framework Activity; raises HTTPBadRequest for anything else."""
    try:
        data = ingress.loads(body)  # depth-limited
    except ingress.BadInput as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise web.HTTPBadRequest(text="body is not an Activity")
    _check_shape(data)
    _check_entities(data.get("entities"))
    try:
        activity = Activity().deserialize(data)
    except (DeserializationError, ValueError, TypeError, AttributeError):  # msrest names the field, never echoes values
        raise web.HTTPBadRequest(text="body is not a valid Activity") from None
    if not activity.service_url or activity.conversation is None:
        raise web.HTTPBadRequest(text="an Activity needs serviceUrl and conversation")
    return activity


def _check_entities(entities: object) -> None:
    """Refuse entities botbuilder's mention helpers would crash on (`entities: [{}]`,
    a mention whose `text` is null). Each entity is an object with a string `type`; a mention
    also has a string `text` and `mentioned: {id, name}` of strings, as Teams always sends."""
    if entities is None:
        return
    if not isinstance(entities, list):
        raise web.HTTPBadRequest(text="entities must be a list")
    for entity in entities:
        if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
            raise web.HTTPBadRequest(text="each entity needs a string type")
        if entity["type"].lower() != "mention":
            continue
        mentioned = entity.get("mentioned")
        if not (
            isinstance(entity.get("text"), str)
            and isinstance(mentioned, dict)
            and isinstance(mentioned.get("id"), str)
            and isinstance(mentioned.get("name"), str)
        ):
            raise web.HTTPBadRequest(text="a mention entity needs text and mentioned {id, name}")


_OPTIONAL_TEXT = ("id", "replyToId", "text", "channelId", "locale", "textFormat")
_OPTIONAL_OBJECT_LISTS = ("membersAdded", "membersRemoved", "reactionsAdded", "reactionsRemoved", "attachments")


def _check_shape(data: dict[str, object]) -> None:
    """Refuse fields of the wrong type before msrest coerces them into something botbuilder then
    fails on (a numeric conversation id, a list as replyToId, a null member of membersAdded).
    Every optional field may be null or absent."""
    service_url = data.get("serviceUrl")
    if (
        not isinstance(service_url, str)
        or not service_url.startswith(("http://", "https://"))
        or len(service_url) > 2048
    ):
        raise web.HTTPBadRequest(text="serviceUrl must be an http(s) URL")
    for name in _OPTIONAL_TEXT:
        if data.get(name) is not None and not isinstance(data.get(name), str):
            raise web.HTTPBadRequest(text=f"{name} must be a string")
    for name in _OPTIONAL_OBJECT_LISTS:  # null or absent is fine; a null member is not
        items = data.get(name)
        if items is not None and not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            raise web.HTTPBadRequest(text=f"{name} must be a list of objects")
    for name, required in (("conversation", True), ("from", False), ("recipient", False)):
        account = data.get(name)
        if account is None and not required:
            continue
        if not isinstance(account, dict) or not _is_id(account.get("id")):
            raise web.HTTPBadRequest(text=f"{name}.id must be a non-empty string without '/', '?' or '#'")
        if account.get("name") is not None and not isinstance(account.get("name"), str):
            raise web.HTTPBadRequest(text=f"{name}.name must be a string")


def _is_id(value: object) -> bool:
    # Bot Framework ids hold ':', '@', ';', '=' but never URL path or query separators; they are
    # put into the Bot Connector's URL paths.
    return (
        isinstance(value, str) and 0 < len(value) <= 1024 and not any(c in value for c in "/?#") and value.isprintable()
    )
