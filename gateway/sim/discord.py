"""A local Discord: the REST API the bot posts messages to, and the client side of interactions.

It plays both halves a test needs:
- Discord's REST API (`POST /api/v10/channels/{channel_id}/messages`), checking the bot token,
  assigning snowflakes and recording each message with its components;
- a user's client plus Discord's interaction delivery: it builds interaction payloads from
  `fixtures/discord/*.json` (the documented shapes), signs them with the application's Ed25519
  key over `timestamp + body`, POSTs them to the gateway's interactions endpoint (what the
  developer portal calls the Interactions Endpoint URL), and records each response.
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

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "discord"
API_PREFIX = "/api/v10"
INTERACTIONS_PATH = "/discord/interactions"  # the portal's Interactions Endpoint URL, on the gateway
ALICE = "1100000000000000002"
BOB = "1100000000000000003"
EPHEMERAL = 1 << 6  # MessageFlags.ephemeral


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

    def __init__(self, host: str = "127.0.0.1", **config: Any) -> None:
        super().__init__(host)
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
    async def _create_message(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
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
        return web.json_response(message)

    # -- a user's client: build, sign and deliver interactions ---------------------------------
    def sign(self, body: bytes, timestamp: str) -> str:
        return self.signing_key.sign(timestamp.encode() + body).signature.hex()

    async def deliver(
        self, payload: dict[str, Any], *, signature: str | None = None, timestamp: str | None = None
    ) -> Reply:
        """POST `payload` to the gateway as Discord does; a given `signature` replaces the real one."""
        assert self._session is not None and self.gateway_url, "start() and set gateway_url first"
        body = json.dumps(payload).encode()
        timestamp = timestamp or str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Signature-Ed25519": signature if signature is not None else self.sign(body, timestamp),
            "X-Signature-Timestamp": timestamp,
        }
        async with self._session.post(self.gateway_url + INTERACTIONS_PATH, data=body, headers=headers) as resp:
            parsed = await resp.json() if resp.content_type == "application/json" else None
            reply = Reply(resp.status, parsed)
        await self.record("interaction_response", {"request": payload, "status": reply.status, "body": reply.body})
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
        before = len(self.recorded("message_create"))
        reply = await self.deliver(self.interaction("application_command", user_id=user_id, data=data))
        assert reply.status == 200 and "Panel posted" in reply.content, reply
        # the bot posts before it answers, so the message is already recorded
        return self.recorded("message_create")[before].payload["message"]

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
        """Click the button labelled `label` (or choose `values` in the select with that placeholder)."""
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
