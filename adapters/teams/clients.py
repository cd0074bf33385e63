"""One Bot Connector client per (app id, serviceUrl, audience), not one per activity.

botbuilder's `CloudAdapterBase.process_activity` builds a new `ConnectorClient` and a new
user-token client on every turn, each an msrest pipeline whose `ClientRetryPolicy` computes its
retry status list with a quadratic scan: ~4 ms of the ~6 ms an activity cost went to two clients
used at most once (benchmarks/teams_bench.py, docs/performance.md "Issue 20"). botbuilder's older
`BotFrameworkAdapter` cached connector clients for the same reason; this puts a bounded cache
back around the public `BotFrameworkAuthentication` interface. Reuse is safe: a client's
credentials refresh their own token, and every turn runs on one event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any, TypeVar

from botbuilder.schema import Activity
from botframework.connector import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)

MAX_CLIENTS = 64  # distinct (app id, serviceUrl, audience) kept; the least recently used leaves
_V = TypeVar("_V")


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
