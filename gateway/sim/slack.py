"""A local Slack: the Events API sender (v0-signed, with retries) and the Web API methods the
adapter calls (`auth.test`, `chat.postMessage`), recording every message the bot posts.

Signing is written out here (HMAC-SHA256 over `v0:{timestamp}:{body}`) rather than borrowed
from slack-sdk, so the adapter's `SignatureVerifier` is checked against an independent
implementation of Slack's documented scheme.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

from chatstate.gateway.sim.base import Record, SimulatorServer

EVENTS_PATH = "/slack/events"
POST_MESSAGE = "chat.postMessage"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature for `body` sent at `timestamp` (unix seconds)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """The gateway's answer to one Events API request."""

    status: int
    body: str
    headers: dict[str, str]


class SlackSimulator(SimulatorServer):
    """One workspace with one bot user; tests drive users' messages and read the bot's posts."""

    name: ClassVar[str] = "slack"

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        signing_secret: str = "sim-signing-secret",
        bot_token: str = "xoxb-sim-token",
        team_id: str = "T0SIM",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(host)
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.extra_config = dict(extra_config or {})
        self.gateway_url: str | None = None  # set by the harness once the gateway is up
        self._ts = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._epoch = int(time.time())
        # Fault knobs for tests: while `hold_posts` is set, chat.postMessage waits for that
        # future: True posts as usual, False drops the message (Slack never got it). `fail_posts`
        # answers ok=false without posting.
        self.hold_posts: asyncio.Future[bool] | None = None
        self.fail_posts = False
        self.post_arrived = asyncio.Event()  # set when a chat.postMessage reaches the simulator

    # -- SimulatorServer ------------------------------------------------------------------
    def build(self, app: web.Application) -> None:
        app.router.add_post("/api/auth.test", self._auth_test)
        app.router.add_post(f"/api/{POST_MESSAGE}", self._post_message)
        app.router.add_get("/api/conversations.replies", self._replies)

    def gateway_config(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "signing_secret": self.signing_secret,
            "bot_token": self.bot_token,
            "api_base_url": f"{self.base_url}/api/",
            **self.extra_config,
        }

    # -- Web API --------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.bot_token}"

    async def _auth_test(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response({
            "ok": True, "url": "https://sim.slack.test/", "team": "Simulated", "user": "bot",
            "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
        })

    async def _post_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args = await _form_or_json(request)
        if not args.get("channel"):
            return web.json_response({"ok": False, "error": "channel_not_found"})
        self.post_arrived.set()
        if self.hold_posts is not None and not await asyncio.shield(self.hold_posts):
            return web.json_response({"ok": False, "error": "request_timeout"})
        if self.fail_posts:
            return web.json_response({"ok": False, "error": "fatal_error"})
        ts = self.next_ts()
        message = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id,
                   "text": args.get("text", ""), "ts": ts, "thread_ts": args.get("thread_ts"),
                   "channel": args["channel"]}
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        await self.record(POST_MESSAGE, message)
        return web.json_response({"ok": True, "channel": args["channel"], "ts": ts, "message": message})

    async def _replies(self, request: web.Request) -> web.Response:
        """conversations.replies over the bot's posts (the simulator keeps no user messages)."""
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        q = request.query
        if not q.get("channel") or not q.get("ts"):
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        oldest = float(q.get("oldest") or 0)
        messages = [m for m in self.posts(thread_ts=q["ts"])
                    if m["channel"] == q["channel"] and float(m["ts"]) > oldest]
        return web.json_response({"ok": True, "messages": messages, "has_more": False})

    # -- what tests read ------------------------------------------------------------------
    def posts(self, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted, optionally only those in one thread."""
        return [r.payload for r in self.recorded(POST_MESSAGE)
                if thread_ts is None or r.payload.get("thread_ts") == thread_ts]

    async def wait_for_posts(self, count: int, *, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until the bot has posted at least `count` messages in total."""
        await self.wait_for(lambda recs: _count(recs) >= count, timeout=timeout)
        return self.posts()

    # -- Events API -----------------------------------------------------------------------
    def next_ts(self) -> str:
        return f"{self._epoch}.{next(self._ts):06d}"

    def message_event(
        self,
        text: str,
        *,
        channel: str = "C0GENERAL",
        user: str = "U0ALICE",
        thread_ts: str | None = None,
        parent_user_id: str | None = None,
        event_type: str = "message",
        channel_type: str = "channel",
    ) -> dict[str, Any]:
        """An `event_callback` envelope for a user's message, as the Events API sends it."""
        ts = self.next_ts()
        event: dict[str, Any] = {"type": event_type, "user": user, "text": text, "ts": ts,
                                 "channel": channel, "event_ts": ts}
        if event_type == "message":
            event["channel_type"] = channel_type
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if parent_user_id is not None:
            event["parent_user_id"] = parent_user_id
        return self.envelope(event)

    def mention_event(self, text: str, **kw: Any) -> dict[str, Any]:
        """An `app_mention` envelope whose text starts with `<@bot>`."""
        return self.message_event(f"<@{self.bot_user_id}> {text}", event_type="app_mention", **kw)

    def envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token", "team_id": self.team_id, "api_app_id": "A0SIM",
            "event": event, "type": "event_callback", "event_id": f"Ev{next(self._event_ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}],
        }

    async def deliver(
        self,
        payload: dict[str, Any],
        *,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        secret: str | None = None,
        timestamp: int | None = None,
        signed: bool = True,
    ) -> Delivery:
        """POST `payload` to the gateway's Events URL, signed as Slack signs it.

        `retry_num` adds Slack's `X-Slack-Retry-Num`/`-Reason` headers; `secret`/`timestamp`
        forge a bad or stale signature; `signed=False` leaves the headers out.
        """
        if self.gateway_url is None:
            raise RuntimeError("gateway_url is not set (the harness sets it)")
        body = json.dumps(payload).encode()
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Slack-Request-Timestamp"] = ts
            headers["X-Slack-Signature"] = sign(secret or self.signing_secret, ts, body)
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        async with aiohttp.ClientSession() as session:
            async with session.post(self.gateway_url + EVENTS_PATH, data=body, headers=headers) as resp:
                return Delivery(resp.status, await resp.text(), dict(resp.headers))


def _count(records: list[Record]) -> int:
    return sum(1 for r in records if r.kind == POST_MESSAGE)


async def _form_or_json(request: web.Request) -> dict[str, Any]:
    """slack-sdk sends JSON bodies for chat.postMessage and form bodies for some methods."""
    if request.content_type == "application/json":
        data = await request.json()
        return data if isinstance(data, dict) else {}
    return dict(await request.post())
