"""The platform I/O: authenticate and parse `POST /api/messages`, run the turn, send replies.

Built the way botbuilder's docs show (a `CloudAdapterBase` adapter processing the incoming
`Activity` for an `ActivityHandler`); the aiohttp glue is ours because botbuilder-integration-
aiohttp is not a dependency. Outbound calls go to the activity's `serviceUrl` through
botframework-connector's `ConnectorClient`, so the simulator receives exactly what Azure would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from functools import partial
from typing import Any, TypeVar

from aiohttp import web
from botbuilder.core import Bot, CloudAdapterBase, InvokeResponse, TurnContext
from botbuilder.schema import Activity, ActivityTypes, ResourceResponse
from botframework.connector import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)
from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError

from chatstate.adapters.teams.auth import MAX_TOKEN_CHARS, KeysUnavailable, TokenCheck
from chatstate.adapters.teams.state import ID_HASH_CHARS, SentMessages
from chatstate.gateway.sdk import Refused, UserQuota, Writes, ingress

_T = TypeVar("_T")
_V = TypeVar("_V")
Log = logging.LoggerAdapter[logging.Logger]
QUOTA_NOTE = (
    "(You have had many answers from me recently, so a reply to this message will need an @mention to reach me.)"
)
WRITES = "chatstate.writes"  # the turn state's key for the turn's staged writes (`run` sets it)
SEND_RETRIES = 3  # a send refused with 429 or 502/503/504 is tried again at most this often
MAX_RETRY_AFTER_S = 10  # a longer Retry-After fails the send instead (the channel redelivers)
BACKOFF_S = 0.25  # 502/503/504: wait 0.25, 0.5, 1 s
FINAL_STATUSES = (400, 403, 404)  # a send every retry meets too: malformed or too big, bot blocked or removed
MAX_CLIENTS = 64  # distinct (app id, serviceUrl, audience) kept; the least recently used leaves


def _retry_after(exc: HttpOperationError) -> float | None:
    try:
        wait = float((getattr(exc.response, "headers", None) or {}).get("Retry-After", 1))
    except (TypeError, ValueError):
        return None
    return wait if 0 <= wait <= MAX_RETRY_AFTER_S else None


@contextlib.asynccontextmanager
async def staged(writes: Writes | None = None) -> AsyncIterator[Writes]:
    """`writes` (a turn's, committed with its done mark) or, outside a turn, writes of its own:
    committed when the block ends, dropped if it raises."""
    if writes is not None:
        yield writes
        return
    own = Writes()
    try:
        yield own
    except BaseException:
        own.discard()
        raise
    await own.commit()


class TeamsCloudAdapter(CloudAdapterBase):
    """A botbuilder cloud adapter whose every send records the id the Bot Connector returned.

    Every botbuilder send path ends in `send_activities` or `update_activity`, so these two are
    the one send path: each stages its sent-message row (and the quota count) into the turn's
    `Writes` (see `staged`). botbuilder's `on_send_activities` hooks run before the send and never
    see the returned ids."""

    def __init__(self, auth: BotFrameworkAuthentication, *, sent: SentMessages, quota: UserQuota, log: Log) -> None:
        super().__init__(auth)
        self._sent, self._quota, self._log = sent, quota, log

    async def send_activities(self, context: TurnContext, activities: list[Activity]) -> list[ResourceResponse]:
        """Send each activity (429 and 502/503/504 retried, bounded) and stage the id of the
        send that finally succeeded (an invoke's response is the HTTP answer: neither), unless the requester is over their quota (then the message
        carries a visible note instead and nothing is recorded). Raises HttpOperationError when
        retries run out (the gate discards what was staged)."""
        sender = getattr(getattr(context.activity, "from_property", None), "id", None)
        requester = ingress.short_id(sender, limit=ID_HASH_CHARS) if isinstance(sender, str) and sender else None
        responses = []
        async with staged(context.turn_state.get(WRITES)) as writes:
            for activity in activities:
                if activity.type == ActivityTypes.invoke_response:  # the HTTP answer: no message, no count
                    responses.extend(await super().send_activities(context, [activity]))
                    continue
                admitted = requester is None or await self._quota.admit(requester, writes) is None
                if not admitted:
                    self._log.info("sent_quota_refused", extra={"per_user": self._quota.per_user})
                    if activity.type == "message":  # visible: replies will need a mention
                        activity.text = f"{activity.text or ''}\n{QUOTA_NOTE}"
                response = await self._send_one(context, activity)
                if admitted and activity.conversation is not None and response is not None:
                    self._sent.record(writes, activity.conversation.id, response.id)
                responses.append(response)
        return responses

    async def _send_one(self, context: TurnContext, activity: Activity) -> ResourceResponse:
        """Send; a 429 again after its Retry-After, a 502/503/504 after a backoff; anything else,
        or SEND_RETRIES retries, raises."""
        for attempt in range(SEND_RETRIES + 1):
            try:
                [response] = await super().send_activities(context, [activity])
                return response
            except HttpOperationError as exc:
                status = getattr(exc.response, "status_code", None)
                delay = BACKOFF_S * 2**attempt if status in (502, 503, 504) else None
                delay = _retry_after(exc) if status == 429 else delay
                if delay is None or attempt == SEND_RETRIES:
                    raise
                extra = {"status": status, "attempt": attempt + 1, "delay_s": delay}
                self._log.warning("bot_connector_retry", extra=extra)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def update_activity(self, context: TurnContext, activity: Activity) -> ResourceResponse | None:
        async with staged(context.turn_state.get(WRITES)) as writes:
            response = await super().update_activity(context, activity)
            if activity.conversation is not None:
                self._sent.record(writes, activity.conversation.id, response.id if response else activity.id)
        return response

    async def read(self, request: web.Request, *, check: TokenCheck) -> tuple[AuthenticateRequestResult, Activity]:
        """Authenticate, then parse, one request: 401 (missing/bad token, before the body is
        read), 400 (not an Activity), 503 (no signing keys)."""
        auth_header = ingress.credential(request.headers, "Authorization", max_chars=MAX_TOKEN_CHARS + 7)
        await self._guarded(check.verify(auth_header))  # authentication before parsing
        activity = _parse(await request.read())
        # the library's full validation, on the loop: it reads the keys auth.py installed
        library = self.bot_framework_authentication
        return await self._guarded(library.authenticate_request(activity, str(auth_header))), activity

    async def run(
        self, authenticated: AuthenticateRequestResult, activity: Activity, bot: Bot, writes: Writes
    ) -> InvokeResponse | None:
        """Run the turn, its sends staging into `writes`; 502 when the Bot Connector refused a
        send (after its retries), `Refused` when it refused it for good (FINAL_STATUSES)."""

        async def turn(context: TurnContext) -> None:
            context.turn_state[WRITES] = writes
            await bot.on_turn(context)

        try:
            return await self.process_activity(authenticated, activity, turn)
        except (HttpOperationError, ClientRequestError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            self._log.error("bot_connector_failed", extra={"error": type(exc).__name__, "status": status})
            if status in FINAL_STATUSES:
                raise Refused(f"bot connector {status}") from None
            raise web.HTTPBadGateway(text=f"bot connector call failed: {type(exc).__name__}") from None

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


# Every optional field may be null or absent; what no channel sends is refused before msrest
# coerces it into something botbuilder then fails on (a numeric conversation id, a list as
# replyToId, a null member of membersAdded, an entity or mention its helpers would crash on).
_TEXT = ("id", "replyToId", "text", "channelId", "locale", "textFormat")
_OBJECT_LISTS = ("membersAdded", "membersRemoved", "reactionsAdded", "reactionsRemoved", "attachments", "entities")
_ACCOUNTS = (("conversation", True), ("from", False), ("recipient", False))  # (field, required)


def _parse(body: bytes) -> Activity:
    """Deserialize a Bot Framework Activity; raises HTTPBadRequest for anything else."""
    try:
        data = ingress.loads(body)  # depth-limited
    except ingress.BadInput as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise web.HTTPBadRequest(text="body is not an Activity")
    _check_shape(data)
    try:  # serviceUrl and conversation are there: _check_shape requires them
        return Activity().deserialize(data)
    except (DeserializationError, ValueError, TypeError, AttributeError):  # msrest names the field, never echoes values
        raise web.HTTPBadRequest(text="body is not a valid Activity") from None


def _check_shape(data: dict[str, Any]) -> None:
    url = data.get("serviceUrl")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise web.HTTPBadRequest(text="serviceUrl must be an http(s) URL")
    for name in _TEXT:
        if data.get(name) is not None and not isinstance(data.get(name), str):
            raise web.HTTPBadRequest(text=f"{name} must be a string")
    for name in _OBJECT_LISTS:
        items = data.get(name)
        if items is not None and not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            raise web.HTTPBadRequest(text=f"{name} must be a list of objects")
    for name, required in _ACCOUNTS:
        account = data.get(name)
        if account is None and not required:
            continue
        if not isinstance(account, dict) or not _is_id(account.get("id")):
            raise web.HTTPBadRequest(text=f"{name}.id must be a non-empty string without '/', '?' or '#'")
        if account.get("name") is not None and not isinstance(account.get("name"), str):
            raise web.HTTPBadRequest(text=f"{name}.name must be a string")
    for entity in data.get("entities") or []:  # as Teams always sends: a typed mention names {id, name}
        mentioned = entity.get("mentioned")
        if not isinstance(entity.get("type"), str):
            raise web.HTTPBadRequest(text="each entity needs a string type")
        if entity["type"].lower() == "mention" and not (
            isinstance(entity.get("text"), str)
            and isinstance(mentioned, dict)
            and all(isinstance(mentioned.get(k), str) for k in ("id", "name"))
        ):
            raise web.HTTPBadRequest(text="a mention entity needs text and mentioned {id, name}")


def _is_id(value: object) -> bool:
    # Bot Framework ids hold ':', '@', ';', '=' but never URL path or query separators; they are
    # put into the Bot Connector's URL paths.
    return (
        isinstance(value, str) and 0 < len(value) <= 1024 and not any(c in value for c in "/?#") and value.isprintable()
    )


# -- Bot Connector clients built once, not per turn ------------------------------------------
# botbuilder's `CloudAdapterBase.process_activity` builds a new `ConnectorClient` and a new
# user-token client on every turn, each an msrest pipeline whose `ClientRetryPolicy` computes its
# retry status list with a quadratic scan: ~4 ms of the ~6 ms an activity cost went to two clients
# used at most once (benchmarks/teams_bench.py). botbuilder's older `BotFrameworkAdapter` cached
# connector clients for the same reason; `ReusedClients` puts a bounded cache back around the
# public `BotFrameworkAuthentication` interface. Reuse is safe: a client's credentials refresh
# their own token, and every turn runs on one event loop.


class _Lru(OrderedDict[Hashable, Any]):
    async def get_or_make(self, key: Hashable, make: Callable[[], Awaitable[_V]]) -> _V:
        if key not in self:
            self[key] = await make()
            if len(self) > MAX_CLIENTS:
                self.popitem(last=False)
        self.move_to_end(key)
        return self[key]


def _app_id(claims: ClaimsIdentity | None) -> str | None:
    """The bot app id a turn acts as: the token's audience, else its appid (as botbuilder reads it)."""
    claim = claims.get_claim_value if claims is not None else lambda _name: None
    return claim(AuthenticationConstants.AUDIENCE_CLAIM) or claim(AuthenticationConstants.APP_ID_CLAIM)


class _ReusingConnectorFactory(ConnectorFactory):
    def __init__(self, inner: ConnectorFactory, app_id: str | None, cache: _Lru) -> None:
        self._inner, self._app_id, self._cache = inner, app_id, cache

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        make = partial(self._inner.create, service_url, audience)
        return await self._cache.get_or_make((self._app_id, service_url, audience), make)


class ReusedClients(BotFrameworkAuthentication):
    """`inner` with its connector and user-token clients built once and reused across turns;
    validation is `inner`'s, unchanged (only the factories in its results are wrapped). The
    skill-host calls are left out: this bot hosts no skills."""

    def __init__(self, inner: BotFrameworkAuthentication) -> None:
        self.inner = inner
        self.connector_clients = _Lru()
        self.user_token_clients = _Lru()

    def _wrap(self, result: AuthenticateRequestResult) -> AuthenticateRequestResult:
        if result.connector_factory is not None:
            app_id = _app_id(result.claims_identity)
            result.connector_factory = _ReusingConnectorFactory(
                result.connector_factory, app_id, self.connector_clients
            )
        return result

    async def authenticate_request(self, activity: Activity, auth_header: str) -> AuthenticateRequestResult:
        return self._wrap(await self.inner.authenticate_request(activity, auth_header))

    async def authenticate_streaming_request(
        self, auth_header: str, channel_id_header: str
    ) -> AuthenticateRequestResult:
        return self._wrap(await self.inner.authenticate_streaming_request(auth_header, channel_id_header))

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        inner = self.inner.create_connector_factory(claims_identity)
        return _ReusingConnectorFactory(inner, _app_id(claims_identity), self.connector_clients)

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        make = partial(self.inner.create_user_token_client, claims_identity)
        return await self.user_token_clients.get_or_make(_app_id(claims_identity), make)
