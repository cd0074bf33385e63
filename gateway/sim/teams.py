"""A Bot Connector simulator: the Azure side of a Teams bot, on loopback.

It publishes OpenID metadata and a JWKS (an RSA key endorsed for `msteams`), signs the
activities it delivers to the gateway's `/api/messages` with that key (RS256, `iss`, `aud` =
the bot's app id, `serviceurl`), and serves the Bot Connector REST calls the bot makes back:
`POST /v3/conversations/{id}/activities[/{replyToId}]` and `PUT .../activities/{id}`, each
answered with the id Teams would assign and recorded for tests. Calls without the configured
connector token are refused with 401, as Azure refuses calls without an AAD token.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import time
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chatstate.gateway.sim.base import SimulatorServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "teams"
ISSUER = "https://api.botframework.com"  # what Azure puts in `iss`; the adapter is told to expect it
METADATA_PATH = "/v1/.well-known/openidconfiguration"
KEYS_PATH = "/v1/.well-known/keys"
TOKEN_LIFETIME_S = 3600


def new_signing_key() -> rsa.RSAPrivateKey:
    """An RSA key like the ones Azure signs channel tokens with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def fixture(name: str) -> dict[str, Any]:
    """A fresh copy of `fixtures/teams/<name>.json` (Bot Framework Activity schema)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


class TeamsSimulator(SimulatorServer):
    """The Bot Connector service plus Azure's token signing, for one bot app id."""

    name: ClassVar[str] = "teams"

    def __init__(self, host: str = "127.0.0.1", *, app_id: str = "00000000-0000-4000-8000-00000000b07") -> None:
        super().__init__(host)
        self.app_id = app_id
        self.bot_id = f"28:{app_id}"
        self.connector_token = secrets.token_urlsafe(24)
        self.key = new_signing_key()
        self.kid = secrets.token_hex(8)
        self.gateway_url: str | None = None  # set by the harness once the gateway runs
        self._ids = itertools.count(time.time_ns() // 1_000_000)

    # -- what the gateway needs -----------------------------------------------------------
    def gateway_config(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "openid_metadata_url": self.base_url + METADATA_PATH,
            "token_issuer": ISSUER,
            "connector_token": self.connector_token,
        }

    def build(self, app: web.Application) -> None:
        app.router.add_get(METADATA_PATH, self._metadata)
        app.router.add_get(KEYS_PATH, self._keys)
        app.router.add_post("/v3/conversations/{conversation_id}/activities", self._send)
        app.router.add_post("/v3/conversations/{conversation_id}/activities/{reply_to_id}", self._send)
        app.router.add_put("/v3/conversations/{conversation_id}/activities/{activity_id}", self._update)

    # -- Azure: OpenID metadata and signing keys ----------------------------------------------
    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": ISSUER,
            "authorization_endpoint": self.base_url + "/v1/authorize",
            "jwks_uri": self.base_url + KEYS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        })

    async def _keys(self, request: web.Request) -> web.Response:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", endorsements=["msteams"])
        return web.json_response({"keys": [jwk]})

    def token(
        self,
        *,
        key: rsa.RSAPrivateKey | None = None,
        audience: str | None = None,
        issuer: str = ISSUER,
        service_url: str | None = None,
        expires_in_s: int = TOKEN_LIFETIME_S,
    ) -> str:
        """A channel-to-bot token as Azure signs it; override a field to forge a bad one."""
        now = int(time.time())
        claims = {
            "iss": issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or self.base_url,
            "nbf": now - 60,
            "iat": now - 60,
            "exp": now + expires_in_s,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    # -- Bot Connector: what the bot sends ------------------------------------------------------
    def _authorized(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.connector_token}":
            # Azure answers with an ErrorResponse body, which botframework-connector deserializes
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": {"code": "Unauthorized", "message": "missing or wrong token"}}),
                content_type="application/json",
            )

    async def _send(self, request: web.Request) -> web.Response:
        self._authorized(request)
        body = await request.json()
        activity_id = str(next(self._ids))
        conversation_id = request.match_info["conversation_id"]
        await self.record("activity", {
            **body,
            "id": activity_id,
            "conversation_id": conversation_id,
            "reply_to_id": request.match_info.get("reply_to_id"),
        })
        return web.json_response({"id": activity_id})

    async def _update(self, request: web.Request) -> web.Response:
        self._authorized(request)
        body = await request.json()
        activity_id = request.match_info["activity_id"]
        await self.record("update", {**body, "id": activity_id, "conversation_id": request.match_info["conversation_id"]})
        return web.json_response({"id": activity_id})

    def sent(self) -> list[dict[str, Any]]:
        """What the bot posted (sends and replies, not updates), oldest first."""
        return [r.payload for r in self.recorded("activity")]

    # -- Teams users: activities delivered to the gateway -----------------------------------------
    def activity(self, name: str, **fields: Any) -> dict[str, Any]:
        """A fixture activity addressed to this bot from this service, with `fields` applied.

        `conversation_id` sets conversation.id; `reply_to_id` sets replyToId; other keys are
        Activity fields in wire spelling (e.g. text=...).
        """
        activity = fixture(name)
        activity["id"] = str(next(self._ids))
        activity["serviceUrl"] = self.base_url
        activity["recipient"] = {"id": self.bot_id, "name": activity["recipient"]["name"]}
        for entity in activity.get("entities", []):
            if entity.get("type") == "mention":
                entity["mentioned"]["id"] = self.bot_id
        for account in activity.get("membersAdded", []):
            if account["id"] == "28:{app_id}":
                account["id"] = self.bot_id
        if "conversation_id" in fields:
            activity["conversation"]["id"] = fields.pop("conversation_id")
        if "reply_to_id" in fields:
            activity["replyToId"] = fields.pop("reply_to_id")
        activity.update(copy.deepcopy(fields))
        return activity

    async def deliver(self, activity: dict[str, Any], *, token: str | None = "") -> int:
        """POST `activity` to the gateway's /api/messages; returns the HTTP status.

        `token=""` signs a valid token; None sends no Authorization header; any other string is
        sent as the bearer. The gateway answers after the turn, so when this returns every reply
        the bot made to this activity is already in `records`.
        """
        if self.gateway_url is None:
            raise RuntimeError("teams simulator: gateway_url is not set (start the gateway first)")
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token()}"
        async with aiohttp.ClientSession() as session:
            async with session.post(self.gateway_url + "/api/messages", json=activity, headers=headers) as resp:
                await resp.read()
                return resp.status
