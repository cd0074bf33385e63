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

`DiscordEdges` (discord_edges.py, with the rate-limit buckets and token rules it drives) switches
on Discord's documented edge behaviours. `hits` counts what was played.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from nacl.signing import SigningKey

from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.discord_edges import DiscordEdges, RateLimiter, Token, check_token

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "discord"
API_PREFIX = "/api/v10"
INTERACTIONS_PATH = "/discord/interactions"  # the portal's Interactions Endpoint URL, on the gateway
ALICE = "1100000000000000002"
BOB = "1100000000000000003"
EPHEMERAL = 1 << 6  # MessageFlags.ephemeral
DEFERRED_TYPES = (5, 6)  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_UPDATE_MESSAGE


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
        self._limiter = RateLimiter(self.hit)
        self._tokens: dict[str, Token] = {}
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
        app.router.add_get(API_PREFIX + "/users/@me", self._me)

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
    async def _me(self, request: web.Request) -> web.Response:
        """The bot's own user: what discord.py's login (and the adapter's start) checks a token with."""
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        return web.json_response({"id": "1500000000000000001", "username": "chatstate-sim-bot", "bot": True})

    async def _create_message(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        limited, rl_headers = self._limiter.account(
            f"POST /channels/{request.match_info['channel_id']}/messages", self.edges
        )
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
    async def _webhook(self, request: web.Request, kind: str) -> web.Response:
        token = request.match_info["token"]
        limited, rl_headers = self._limiter.account(f"webhook {request.match_info['application_id']}", self.edges)
        if limited is not None:
            return limited
        state, refused = check_token(self._tokens, token, self.edges, self.hit)
        if refused is not None:
            await self.record("webhook_refused", {"kind": kind, "status": refused.status})
            return refused
        assert state is not None
        body = await request.json()
        message = {
            "id": str(next(self._ids)),
            "content": body.get("content", ""),
            "flags": body.get("flags", 0),
            "components": body.get("components", []),
            "interaction_id": state.interaction_id,
        }
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
                    out.append(
                        {
                            "interaction_id": r.payload["request"].get("id"),
                            "content": data.get("content", ""),
                            "ephemeral": bool(data.get("flags", 0) & EPHEMERAL),
                            "via": "response",
                        }
                    )
            elif r.kind in ("edit_original", "followup"):
                req = r.payload["request"]
                out.append(
                    {
                        "interaction_id": r.payload["interaction_id"],
                        "content": req.get("content", ""),
                        "ephemeral": bool(req.get("flags", 0) & EPHEMERAL),
                        "via": r.kind,
                    }
                )
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
        token_state = Token(str(payload.get("id")), time.monotonic())
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
        await self.record(
            "interaction_response", {"request": payload, "status": reply.status, "body": reply.body, "on_time": on_time}
        )
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
            content = next(
                r.payload["request"].get("content", "")
                for r in self.records
                if r.kind == "edit_original" and r.payload["interaction_id"] == payload["id"]
            )
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
                self.deliver(self.click_payload(message, label, user_id=user_id, values=values)),
            )
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
            {
                "type": 1,
                "components": [
                    {"type": 4, "custom_id": c["custom_id"], "value": values.get(c["custom_id"], "")}
                    for c in row["components"]
                ],
            }
            for row in modal["components"]
        ]
        payload = self.interaction(
            "modal_submit", user_id=user_id, data={"custom_id": modal["custom_id"], "components": rows}
        )
        payload["message"] = copy.deepcopy(message)
        payload["channel_id"] = message["channel_id"]
        return await self.deliver(payload)
