"""A local Discord: the REST API the bot posts messages to, and the client side of interactions.

It plays both halves a test needs:
- Discord's REST API (`POST /api/v10/channels/{channel_id}/messages`), checking the bot token,
  assigning snowflakes and recording each message with its components;
- a user's client plus Discord's interaction delivery: it builds interaction payloads from
  `fixtures/discord/*.json` (the documented shapes), signs them with the application's Ed25519
  key over `timestamp + body`, POSTs them to the gateway's interactions endpoint (what the
  developer portal calls the Interactions Endpoint URL), and records each response;
- the interaction webhook the bot finishes deferred work through (`PATCH .../messages/@original`,
  `POST /webhooks/{application_id}/{token}` for follow-ups).

`DiscordEdges` switches on Discord's documented edge behaviours (all at once:
`DiscordEdges.hostile()`): the 3-second initial-response deadline (a late answer is discarded,
the user sees "This interaction failed", the token is dead: 10062), interaction tokens that
expire (15 min, compressible: 50027), a second initial response (40060), per-route rate-limit
buckets with `X-RateLimit-*` headers and 429 + JSON `retry_after`, slow message creation, and
double clicks. `hits` counts what was played.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from nacl.signing import SigningKey

from chatstate.gateway.sim.base import SimulatorServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "discord"
API_PREFIX = "/api/v10"
INTERACTIONS_PATH = "/discord/interactions"  # the portal's Interactions Endpoint URL, on the gateway
ALICE = "1100000000000000002"
BOB = "1100000000000000003"
EPHEMERAL = 1 << 6  # MessageFlags.ephemeral
RESPONSE_DEADLINE_S = 3.0  # the initial response must arrive within this
TOKEN_TTL_S = 15 * 60  # an interaction token works for follow-ups this long
UNKNOWN_INTERACTION = 10062
INVALID_WEBHOOK_TOKEN = 50027
ALREADY_ACKNOWLEDGED = 40060
DEFERRED_TYPES = (5, 6)  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_UPDATE_MESSAGE


@dataclass(frozen=True)
class DiscordEdges:
    """Which of Discord's edge behaviours the simulator plays (all off by default)."""

    deadline: bool = False  # an initial response later than deadline_s fails the interaction
    deadline_s: float = RESPONSE_DEADLINE_S
    token_ttl_s: float = TOKEN_TTL_S  # follow-ups after this get 401 / 50027
    rate_limits: bool = False  # per-route buckets: bucket_size calls per bucket_window_s, then 429
    bucket_size: int = 2
    bucket_window_s: float = 1.0
    slow_messages_s: float = 0.0  # message creation takes this long
    double_click: bool = False  # every click arrives twice within milliseconds
    already_acknowledged: bool = False  # webhook calls answer 40060 (another responder was first)

    @classmethod
    def hostile(cls) -> DiscordEdges:
        """Every switch on that a working bot must survive (not `already_acknowledged`, which
        only a misbehaving second responder causes): the demo's `--hostile` profile."""
        return cls(deadline=True, rate_limits=True, slow_messages_s=2.5, double_click=True)


@dataclass
class _Bucket:
    """One rate-limit bucket: calls in the current window."""

    window_start: float = 0.0
    used: int = 0


@dataclass
class _Token:
    """What Discord knows about one interaction token."""

    interaction_id: str
    created: float
    acknowledged: bool = False
    failed: bool = False
    messages: list[str] = field(default_factory=list)


def hashlib_name(route: str) -> str:
    """An opaque bucket id for `route`, as Discord's X-RateLimit-Bucket is."""
    return hashlib.sha1(route.encode()).hexdigest()[:16]


def fixture(name: str) -> dict[str, Any]:
    """A fresh copy of `fixtures/discord/<name>.json`."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


@dataclass(frozen=True)
class Reply:
    """The gateway's HTTP answer to one interaction."""

    status: int
    body: dict[str, Any] | None

    @property
    def type(self) -> int | None:
        return None if self.body is None else self.body.get("type")

    @property
    def data(self) -> dict[str, Any]:
        return (self.body or {}).get("data") or {}

    @property
    def content(self) -> str:
        return str(self.data.get("content", ""))

    @property
    def ephemeral(self) -> bool:
        return bool(self.data.get("flags", 0) & EPHEMERAL)


class DiscordSimulator(SimulatorServer):
    """Discord for one application, one guild and one channel."""

    name = "discord"

    def __init__(self, host: str = "127.0.0.1", *, edges: DiscordEdges | None = None, **config: Any) -> None:
        super().__init__(host)
        self.edges = edges or DiscordEdges()
        self._buckets: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Token] = {}
        self.signing_key = SigningKey.generate()
        self.bot_token = "sim." + secrets.token_urlsafe(24)
        self.extra_config = dict(config)  # more `[adapters.discord]` keys, e.g. ttl_ms
        self.gateway_url: str | None = None  # set by the harness once the gateway is up
        self.messages: dict[str, dict[str, Any]] = {}
        # called with each message as it arrives, before the bot hears back (tests inspect
        # what the gateway has already written at that moment)
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self._ids = itertools.count(1_500_000_000_000_000_100)
        self._session: aiohttp.ClientSession | None = None

    # -- SimulatorServer hooks --------------------------------------------------------------
    def build(self, app: web.Application) -> None:
        app.router.add_post(API_PREFIX + "/channels/{channel_id}/messages", self._create_message)
        app.router.add_patch(API_PREFIX + "/webhooks/{application_id}/{token}/messages/@original", self._edit_original)
        app.router.add_post(API_PREFIX + "/webhooks/{application_id}/{token}", self._followup)

    def gateway_config(self) -> dict[str, Any]:
        return {
            "enabled": True,  # `mode` is the harness's to set
            "public_key": self.signing_key.verify_key.encode().hex(),
            "bot_token": self.bot_token,
            "api_base_url": self.base_url + API_PREFIX,
            **self.extra_config,
        }

    async def start(self) -> str:
        url = await super().start()
        self._session = aiohttp.ClientSession()
        return url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    # -- Discord's REST API -----------------------------------------------------------------
    def _rate_limit(self, route: str) -> tuple[web.Response | None, dict[str, str]]:
        """Account one call to `route`'s bucket: (a 429 to send, or None) and the headers."""
        if not self.edges.rate_limits:
            return None, {}
        now = time.monotonic()
        bucket = self._buckets.setdefault(route, _Bucket(now))
        if now - bucket.window_start >= self.edges.bucket_window_s:
            bucket.window_start, bucket.used = now, 0
        reset_after = round(bucket.window_start + self.edges.bucket_window_s - now, 3)
        headers = {
            "X-RateLimit-Limit": str(self.edges.bucket_size),
            "X-RateLimit-Bucket": hashlib_name(route),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        }
        if bucket.used >= self.edges.bucket_size:
            self.hit("rate_limited")
            headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "user", "Retry-After": str(math.ceil(reset_after))})
            body = {"message": "You are being rate limited.", "retry_after": reset_after, "global": False}
            return web.json_response(body, status=429, headers=headers), headers
        bucket.used += 1
        headers["X-RateLimit-Remaining"] = str(self.edges.bucket_size - bucket.used)
        return None, headers

    async def _create_message(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        limited, rl_headers = self._rate_limit(f"POST /channels/{request.match_info['channel_id']}/messages")
        if limited is not None:
            return limited
        if self.edges.slow_messages_s:
            self.hit("slow_message")
            await asyncio.sleep(self.edges.slow_messages_s)
        body = await request.json()
        bot = fixture("component_button")["message"]["author"]
        message = {
            "id": str(next(self._ids)),
            "channel_id": request.match_info["channel_id"],
            "type": 0,
            "author": bot,
            "content": body.get("content", ""),
            "components": body.get("components", []),
            "flags": body.get("flags", 0),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime()),
        }
        self.messages[message["id"]] = message
        if self.on_message is not None:
            self.on_message(message)
        await self.record("message_create", {"request": body, "message": message})
        return web.json_response(message, headers=rl_headers)

    # -- the interaction webhook (deferred answers, follow-ups) -------------------------------
    def _token_state(self, token: str) -> tuple[_Token | None, web.Response | None]:
        state = self._tokens.get(token)
        if state is None or state.failed or not state.acknowledged:
            self.hit("unknown_interaction")
            return None, web.json_response({"message": "Unknown interaction", "code": UNKNOWN_INTERACTION}, status=404)
        if time.monotonic() - state.created > self.edges.token_ttl_s:
            self.hit("token_expired")
            return None, web.json_response({"message": "Invalid Webhook Token", "code": INVALID_WEBHOOK_TOKEN}, status=401)
        if self.edges.already_acknowledged:
            self.hit("already_acknowledged")
            return None, web.json_response(
                {"message": "Interaction has already been acknowledged.", "code": ALREADY_ACKNOWLEDGED}, status=400)
        return state, None

    async def _webhook(self, request: web.Request, kind: str) -> web.Response:
        token = request.match_info["token"]
        limited, rl_headers = self._rate_limit(f"webhook {request.match_info['application_id']}")
        if limited is not None:
            return limited
        state, refused = self._token_state(token)
        if refused is not None:
            await self.record("webhook_refused", {"kind": kind, "status": refused.status})
            return refused
        assert state is not None
        body = await request.json()
        message = {"id": str(next(self._ids)), "content": body.get("content", ""), "flags": body.get("flags", 0),
                   "components": body.get("components", []), "interaction_id": state.interaction_id}
        await self.record(kind, {"interaction_id": state.interaction_id, "request": body, "message": message})
        return web.json_response(message, headers=rl_headers)

    async def _edit_original(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "edit_original")

    async def _followup(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "followup")

    def answers(self) -> list[dict[str, Any]]:
        """What users saw in answer to interactions, in order: each initial response that made
        the deadline (not the deferral placeholders) and each webhook edit or follow-up, as
        {interaction_id, content, ephemeral, via}."""
        out = []
        for r in self.records:
            if r.kind == "interaction_response" and r.payload.get("on_time", True) and r.payload["body"]:
                body = r.payload["body"]
                if body.get("type") in (4, 7):
                    data = body.get("data") or {}
                    out.append({"interaction_id": r.payload["request"].get("id"), "content": data.get("content", ""),
                                "ephemeral": bool(data.get("flags", 0) & EPHEMERAL), "via": "response"})
            elif r.kind in ("edit_original", "followup"):
                req = r.payload["request"]
                out.append({"interaction_id": r.payload["interaction_id"], "content": req.get("content", ""),
                            "ephemeral": bool(req.get("flags", 0) & EPHEMERAL), "via": r.kind})
        return out

    # -- a user's client: build, sign and deliver interactions ---------------------------------
    def sign(self, body: bytes, timestamp: str) -> str:
        return self.signing_key.sign(timestamp.encode() + body).signature.hex()

    async def deliver(
        self, payload: dict[str, Any], *, signature: str | None = None, timestamp: str | None = None
    ) -> Reply:
        """POST `payload` to the gateway as Discord does; a given `signature` replaces the real one."""
        gateway_url = self.gateway_url  # read once, before the first await (balancers)
        assert self._session is not None and gateway_url, "start() and set gateway_url first"
        body = json.dumps(payload).encode()
        timestamp = timestamp or str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Signature-Ed25519": signature if signature is not None else self.sign(body, timestamp),
            "X-Signature-Timestamp": timestamp,
        }
        url = gateway_url + INTERACTIONS_PATH
        token_state = _Token(str(payload.get("id")), time.monotonic())
        if isinstance(payload.get("token"), str):
            self._tokens[payload["token"]] = token_state
        started = time.monotonic()
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                parsed = await resp.json() if resp.content_type == "application/json" else None
                reply = Reply(resp.status, parsed)
        except aiohttp.ClientError:
            token_state.failed = True  # the user sees "This interaction failed"
            self.hit("interaction_failed")
            await self.record("interaction_failed", {"request": payload, "reason": "no answer"})
            raise
        on_time = not self.edges.deadline or time.monotonic() - started <= self.edges.deadline_s
        if not on_time:
            token_state.failed = True
            self.hit("deadline_missed")
            await self.record("interaction_failed", {"request": payload, "reason": "deadline"})
        elif reply.status == 200 and reply.body is not None:
            token_state.acknowledged = True
            if reply.type in DEFERRED_TYPES:
                self.hit("deferred")
        await self.record("interaction_response", {"request": payload, "status": reply.status, "body": reply.body,
                                                   "on_time": on_time})
        return reply

    def interaction(self, name: str, *, user_id: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """A payload from fixture `name` with a fresh id and token, sent by `user_id`."""
        payload = fixture(name)
        payload["id"] = str(next(self._ids))
        payload["token"] = secrets.token_urlsafe(32)
        if "member" in payload:
            payload["member"]["user"]["id"] = user_id
        if data is not None:
            payload["data"] = data
        return payload

    async def ping(self) -> Reply:
        return await self.deliver(fixture("ping"))

    async def post_panel(self, *, user_id: str = ALICE, restrict_to: str | None = None) -> dict[str, Any]:
        """Run `/panel` and return the message the bot posted because of it.

        Raises AssertionError when the command was not answered with a posted panel.
        """
        data = fixture("application_command")["data"]
        data["options"] = [] if restrict_to is None else [{"name": "restrict_to", "type": 6, "value": restrict_to}]
        payload = self.interaction("application_command", user_id=user_id, data=data)
        reply = await self.deliver(payload)
        content = reply.content
        if reply.status == 200 and reply.type == 5:  # deferred: the answer comes as an edit
            def edited(records: list[Any]) -> bool:
                return any(r.kind == "edit_original" and r.payload["interaction_id"] == payload["id"] for r in records)
            await self.wait_for(edited)
            content = next(r.payload["request"].get("content", "") for r in self.records
                           if r.kind == "edit_original" and r.payload["interaction_id"] == payload["id"])
        assert reply.status == 200 and "Panel posted" in content, (reply, content)
        # the bot posts before it answers, so the message is already recorded
        message_id = content.split("message ", 1)[1].rstrip(").")
        return self.messages[message_id]

    def component(self, message: dict[str, Any], label_or_placeholder: str) -> dict[str, Any]:
        """The component on `message` with this label (button) or placeholder (select)."""
        for row in message["components"]:
            for c in row["components"]:
                if label_or_placeholder in (c.get("label"), c.get("placeholder")):
                    return c
        raise KeyError(f"no component {label_or_placeholder!r} on message {message['id']}")

    def click_payload(
        self, message: dict[str, Any], label: str, *, user_id: str, values: list[str] | None = None
    ) -> dict[str, Any]:
        comp = self.component(message, label)
        data: dict[str, Any] = {"custom_id": comp["custom_id"], "component_type": comp["type"]}
        name = "component_button"
        if values is not None:
            data["values"] = values
            name = "component_select"
        payload = self.interaction(name, user_id=user_id, data=data)
        payload["message"] = copy.deepcopy(message)
        payload["channel_id"] = message["channel_id"]
        return payload

    async def click(
        self, message: dict[str, Any], label: str, *, user_id: str = ALICE, values: list[str] | None = None
    ) -> Reply:
        """Click the button labelled `label` (or choose `values` in the select with that placeholder).

        With `edges.double_click` the click goes out twice within milliseconds (two
        interactions); both replies are recorded, and the one the channel saw (not ephemeral)
        is returned if there is one, else the first.
        """
        if self.edges.double_click:
            self.hit("double_click")
            replies = await asyncio.gather(
                self.deliver(self.click_payload(message, label, user_id=user_id, values=values)),
                self.deliver(self.click_payload(message, label, user_id=user_id, values=values)))
            return next((r for r in replies if r.body is not None and not r.ephemeral), replies[0])
        return await self.deliver(self.click_payload(message, label, user_id=user_id, values=values))

    async def click_many(self, message: dict[str, Any], label: str, *, user_ids: list[str]) -> list[Reply]:
        """Deliver one click per user id at once, as concurrent users would."""
        payloads = [self.click_payload(message, label, user_id=u) for u in user_ids]
        return list(await asyncio.gather(*(self.deliver(p) for p in payloads)))

    async def submit_modal(
        self, modal: dict[str, Any], values: dict[str, str], *, message: dict[str, Any], user_id: str = ALICE
    ) -> Reply:
        """Submit the modal a MODAL response opened (`modal` is that response's `data`)."""
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": c["custom_id"], "value": values.get(c["custom_id"], "")}
                                        for c in row["components"]]}
            for row in modal["components"]
        ]
        payload = self.interaction("modal_submit", user_id=user_id, data={"custom_id": modal["custom_id"], "components": rows})
        payload["message"] = copy.deepcopy(message)
        payload["channel_id"] = message["channel_id"]
        return await self.deliver(payload)
