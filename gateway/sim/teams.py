"""A Bot Connector simulator: the Azure side of a Teams bot, on loopback.

It publishes OpenID metadata and a JWKS (an RSA key endorsed for `msteams`), signs the
activities it delivers to the gateway's `/api/messages` with that key (RS256, `iss`, `aud` =
the bot's app id, `serviceurl`), and serves the Bot Connector REST calls the bot makes back:
`POST /v3/conversations/{id}/activities[/{replyToId}]` and `PUT .../activities/{id}`, each
answered with the id Teams would assign and recorded for tests. Calls without the configured
connector token are refused with 401, as Azure refuses calls without an AAD token.

`TeamsEdges` (teams_edges.py) switches on the channel's edge behaviours (all at once: `TeamsEdges.hostile()`):
429 + Retry-After and 502/503/504 on the bot's sends, an activity delivered again with the
same id when the bot is slow (or simply twice), redelivery after a failed delivery, users'
edits (`messageUpdate`), and bot messages deleted (`messageDelete`). `hits` counts them.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.teams_edges import RETRY_SCHEDULE_S, TeamsEdges

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

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        app_id: str = "00000000-0000-4000-8000-00000000b07",
        edges: TeamsEdges | None = None,
    ) -> None:
        super().__init__(host)
        self.edges = edges or TeamsEdges()
        self.send_calls = 0
        self.user_actions = 0
        self.deleted: set[str] = set()  # ids of bot messages deleted (soft-deleted in Teams)
        # while set, a send waits for this future before Teams takes it (a slow Bot Connector)
        self.hold_sends: asyncio.Future[bool] | None = None
        self.refuse_sends: int | None = None  # a status every send meets (403: the bot was removed)
        self.send_arrived = asyncio.Event()
        self.open_deliveries = 0  # activities POSTed to the gateway and not yet answered
        self._faults: Counter[str] = Counter()  # transient faults played per send body
        self._to_delete: list[dict[str, Any]] = []  # bot messages to delete after their turn
        self.app_id = app_id
        self.bot_id = f"28:{app_id}"
        self.connector_token = secrets.token_urlsafe(24)
        self.key = new_signing_key()
        self.kid = secrets.token_hex(8)
        self.gateway_url: str | None = None  # set by the harness once the gateway runs
        self._ids = itertools.count(now_ms())

    # -- what the gateway needs -----------------------------------------------------------
    def gateway_config(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "openid_metadata_url": self.base_url + METADATA_PATH,
            "token_issuer": ISSUER,
            "connector_token": self.connector_token,
            **self.edges.gateway_config(),
        }

    def build(self, app: web.Application) -> None:
        app.router.add_get(METADATA_PATH, self._metadata)
        app.router.add_get(KEYS_PATH, self._keys)
        app.router.add_post("/v3/conversations/{conversation_id}/activities", self._send)
        app.router.add_post("/v3/conversations/{conversation_id}/activities/{reply_to_id}", self._send)
        app.router.add_put("/v3/conversations/{conversation_id}/activities/{activity_id}", self._update)

    # -- Azure: OpenID metadata and signing keys ----------------------------------------------
    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": ISSUER,
                "authorization_endpoint": self.base_url + "/v1/authorize",
                "jwks_uri": self.base_url + KEYS_PATH,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

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
        self.send_calls += 1
        self.send_arrived.set()
        if self.hold_sends is not None:
            await asyncio.shield(self.hold_sends)
        if self.refuse_sends is not None:
            return web.json_response({"error": {"code": "Forbidden", "message": "no"}}, status=self.refuse_sends)
        n, e = self.send_calls, self.edges
        send_key = json.dumps([request.path, body], sort_keys=True)
        if e.max_faults_per_send is not None and self._faults[send_key] >= e.max_faults_per_send:
            n = 0  # this send had its share of transient faults: it goes through
        elif self._fault_due(n):
            self._faults[send_key] += 1
        if n and e.rate_limit_every and (n - 1) % e.rate_limit_every == 0:
            self.hit("rate_limited")
            return web.json_response(
                {"error": {"code": "TooManyRequests", "message": "slow down"}},
                status=429,
                headers={"Retry-After": str(e.retry_after_s)},
            )
        if (
            n
            and e.server_error_every
            and n >= e.server_error_first
            and (n - e.server_error_first) % e.server_error_every == 0
        ):
            self.hit("server_error")
            status = (502, 503, 504)[self.hits["server_error"] % 3]
            return web.json_response({"error": {"code": "ServiceError", "message": "try again"}}, status=status)
        activity_id = str(next(self._ids))
        conversation_id = request.match_info["conversation_id"]
        sent = {
            **body,
            "id": activity_id,
            "conversation_id": conversation_id,
            "reply_to_id": request.match_info.get("reply_to_id"),
        }
        await self.record("activity", sent)
        if e.delete_bot_messages_every and len(self.sent()) % e.delete_bot_messages_every == 0:
            self._to_delete.append(sent)  # deleted once the turn that sent it has been answered
        return web.json_response({"id": activity_id})

    def _fault_due(self, n: int) -> bool:
        e = self.edges
        return bool(
            (e.rate_limit_every and (n - 1) % e.rate_limit_every == 0)
            or (
                e.server_error_every
                and n >= e.server_error_first
                and (n - e.server_error_first) % e.server_error_every == 0
            )
        )

    def _delete_due(self) -> None:
        """Delete the bot messages marked for deletion (an owner's "Delete" in Teams, after the
        turn that sent them was answered); the bot hears messageDelete for each."""
        while self._to_delete:
            sent = self._to_delete.pop(0)
            self.deleted.add(sent["id"])
            self.hit("bot_message_deleted")
            self.spawn(self._deliver_quietly(self.delete_activity(sent["id"], conversation_id=sent["conversation_id"])))

    async def _update(self, request: web.Request) -> web.Response:
        self._authorized(request)
        body = await request.json()
        activity_id = request.match_info["activity_id"]
        await self.record(
            "update", {**body, "id": activity_id, "conversation_id": request.match_info["conversation_id"]}
        )
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

    def edit_activity(self, original: dict[str, Any], text: str) -> dict[str, Any]:
        """The `messageUpdate` Teams sends when a user edits `original`: same id, new text."""
        edited = copy.deepcopy(original)
        edited.update(type="messageUpdate", text=text)
        edited.setdefault("channelData", {})["eventType"] = "editMessage"
        return edited

    def delete_activity(self, message_id: str, *, conversation_id: str) -> dict[str, Any]:
        """The `messageDelete` Teams sends when message `message_id` is (soft-)deleted."""
        activity = self.activity("message_mention", conversation_id=conversation_id)
        for k in ("text", "entities", "attachments", "textFormat"):
            activity.pop(k, None)
        activity.update(type="messageDelete", id=message_id)
        activity.setdefault("channelData", {})["eventType"] = "softDeleteMessage"
        return activity

    async def deliver(self, activity: dict[str, Any], *, token: str | None = "") -> int:
        """POST `activity` to the gateway's /api/messages; returns the HTTP status.

        `token=""` signs a valid token; None sends no Authorization header; any other string is
        sent as the bearer. The gateway answers after the turn, so when this returns every reply
        the bot made to this activity is already in `records`. With a valid token this is one
        user action under `edges`: it may go out twice (duplicate, redelivery of a slow turn),
        be redelivered after a failure, and be followed by an edit (in the background).
        Raises aiohttp.ClientError when no attempt reached the gateway.
        """
        if token != "":
            return await self._post(activity, token=token)
        self.user_actions += 1
        e = self.edges
        if e.edits and activity.get("type") == "message":
            self.hit("edit")
            self.spawn(self._deliver_quietly(self.edit_activity(activity, f"{activity.get('text', '')} (edited)")))
        try:
            if e.duplicate_every and (self.user_actions - 1) % e.duplicate_every == 0:
                self.hit("duplicate")
                first, _second = await asyncio.gather(self._deliver_action(activity), self._deliver_action(activity))
                return first
            return await self._deliver_action(activity)
        finally:
            self._delete_due()

    async def _deliver_quietly(self, activity: dict[str, Any]) -> None:
        try:
            await self._deliver_action(activity)
        except aiohttp.ClientError:
            pass  # the channel gives up on a gateway that is gone
        finally:
            self._delete_due()

    async def _deliver_action(self, activity: dict[str, Any]) -> int:
        """One activity as the channel delivers it: again if the bot is slow, and (with
        `retries`) again after a failure, on RETRY_SCHEDULE_S."""
        e = self.edges
        attempts = 1 + (len(RETRY_SCHEDULE_S) if e.retries else 0)
        error: aiohttp.ClientError | None = None
        status = 0
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(RETRY_SCHEDULE_S[attempt - 1] * e.schedule_scale)
                await self.redeliver.wait()
                self.hit("retry")
            try:
                status = await self._post_watched(activity)
                error = None
            except aiohttp.ClientError as exc:
                error = exc
                continue
            if status < 500:
                return status
        if error is not None:
            raise error
        return status

    async def _post_watched(self, activity: dict[str, Any]) -> int:
        """POST once; if no answer within `redeliver_after_s`, POST the same activity again
        (the first stays open); the first answer wins."""
        first = asyncio.ensure_future(self._post(activity))
        if self.edges.redeliver_after_s is None:
            return await first
        done, _ = await asyncio.wait({first}, timeout=self.edges.redeliver_after_s)
        if done:
            return first.result()
        self.hit("redelivered")
        again = asyncio.ensure_future(self._post(activity))
        done, pending = await asyncio.wait({first, again}, return_when=asyncio.FIRST_COMPLETED)
        winner = done.pop()
        for task in pending:
            self.spawn(task)  # the slower copy still finishes (or fails) on its own
        return winner.result()

    async def _post(self, activity: dict[str, Any], *, token: str | None = "") -> int:
        gateway_url = self.gateway_url  # read once, before the first await (balancers)
        if gateway_url is None:
            raise RuntimeError("teams simulator: gateway_url is not set (start the gateway first)")
        url = gateway_url + "/api/messages"
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token()}"
        self.open_deliveries += 1
        outcome = "connection_failed"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(url, json=activity, headers=headers) as resp:
                    await resp.read()
                    outcome = str(resp.status)
                    return resp.status
        finally:
            self.open_deliveries -= 1
            fields = activity if isinstance(activity, dict) else {}  # tests also send junk bodies
            await self.record(
                "delivery",
                {"id": fields.get("id"), "type": fields.get("type"), "outcome": outcome, "at": time.monotonic()},
            )
