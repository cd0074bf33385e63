"""A local Slack: the Events API sender (v0-signed, with retries) and the Web API methods the
adapter calls (`auth.test`, `chat.postMessage`), recording every message the bot posts.

`SlackEdges` (slack_edges.py) switches on Slack's documented edge behaviours; `hits` counts each
behaviour the simulator actually played. The users' side, the event envelopes a test sends, is
slack_events.py's `SlackEvents`.

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
from typing import Any, ClassVar, TypedDict, Unpack

import aiohttp
from aiohttp import web

from chatstate.gateway.sim.base import Record, SimulatorServer
from chatstate.gateway.sim.slack_edges import RETRY_SCHEDULE_S, SlackEdges, post_fault
from chatstate.gateway.sim.slack_events import SlackEvents

EVENTS_PATH = "/slack/events"
POST_MESSAGE = "chat.postMessage"
DELIVERY = "event_delivery"  # one Events API attempt (first try or retry) and how it ended


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature for `body` sent at `timestamp` (unix seconds)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class Forgery(TypedDict, total=False):
    """How `SlackSimulator.deliver` may send an event unlike Slack (then exactly once)."""

    retry_num: int | None  # adds X-Slack-Retry-Num and X-Slack-Retry-Reason
    retry_reason: str  # default "http_timeout"
    secret: str | None  # signs with this secret instead of the app's
    timestamp: int | None  # signs as sent at this unix time
    signed: bool  # False: no signature headers at all


@dataclass(frozen=True)
class Delivery:
    """The gateway's answer to one Events API request."""

    status: int
    body: str
    headers: dict[str, str]


class SlackSimulator(SimulatorServer, SlackEvents):
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
        edges: SlackEdges | None = None,
    ) -> None:
        super().__init__(host)
        self.edges = edges or SlackEdges()
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
        # answers ok=false without posting (a transient `fatal_error`); `refuse_posts` names an
        # error that every retry meets too (say "not_in_channel": the bot was removed).
        self.hold_posts: asyncio.Future[bool] | None = None
        self.fail_posts = False
        self.refuse_posts: str | None = None
        self.post_arrived = asyncio.Event()  # set when a chat.postMessage reaches the simulator
        self.post_calls = 0

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
            **self.edges.gateway_config(),
            **self.extra_config,
        }

    # -- Web API --------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.bot_token}"

    async def _auth_test(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response(
            {
                "ok": True,
                "url": "https://sim.slack.test/",
                "team": "Simulated",
                "user": "bot",
                "team_id": self.team_id,
                "user_id": self.bot_user_id,
                "bot_id": self.bot_id,
            }
        )

    async def _post_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args = await _form_or_json(request)
        if not args.get("channel"):
            return web.json_response({"ok": False, "error": "channel_not_found"})
        self.post_arrived.set()
        self.post_calls += 1
        fault = self._post_fault_hit(self.post_calls)
        if fault == "rate_limited":
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(self.edges.retry_after_s)},
            )
        if fault == "server_error":
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        if self.hold_posts is not None and not await asyncio.shield(self.hold_posts):
            return web.json_response({"ok": False, "error": "request_timeout"})
        if self.fail_posts or self.refuse_posts:
            return web.json_response({"ok": False, "error": self.refuse_posts or "fatal_error"})
        ts = self.next_ts()
        message = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": args.get("text", ""),
            "ts": ts,
            "thread_ts": args.get("thread_ts"),
            "channel": args["channel"],
        }
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        await self.record(POST_MESSAGE, message)
        if self.edges.echo_bot_messages:
            self.spawn(self._echo(message))
        if fault == "reset_after_post":
            # Slack posted the message, but the answer never reaches the bot: the ambiguous
            # failure a blind retry turns into a duplicate
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPInternalServerError()
        return web.json_response({"ok": True, "channel": args["channel"], "ts": ts, "message": message})

    def _post_fault_hit(self, n: int) -> str | None:
        fault = post_fault(self.edges, n)
        if fault is not None:
            self.hit(fault)
        return fault

    async def _echo(self, message: dict[str, Any]) -> None:
        """Deliver the bot's own post back as a `message` event, as Slack does: modern apps'
        posts carry `bot_id` and `user`, legacy ones `subtype: bot_message`; alternate both."""
        event = {k: v for k, v in message.items() if v is not None and k != "metadata"}
        event.update(event_ts=message["ts"], channel_type="channel")
        if self.hits["bot_echo"] % 2:
            event["subtype"] = "bot_message"
            event.pop("user", None)
        self.hit("bot_echo")
        await self._deliver_quietly(self.envelope(event))

    async def _deliver_quietly(self, payload: dict[str, Any]) -> None:
        try:
            await self._deliver_action(payload)
        except aiohttp.ClientError:
            pass  # a platform-initiated delivery to a dead gateway: Slack just gives up

    async def _replies(self, request: web.Request) -> web.Response:
        """conversations.replies over the bot's posts (the simulator keeps no user messages)."""
        if not self._authorized(request):
            return web.json_response({"ok": False, "error": "invalid_auth"})
        q = request.query
        if not q.get("channel") or not q.get("ts"):
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        oldest = float(q.get("oldest") or 0)
        messages = [
            m for m in self.posts(thread_ts=q["ts"]) if m["channel"] == q["channel"] and float(m["ts"]) > oldest
        ]
        return web.json_response({"ok": True, "messages": messages, "has_more": False})

    # -- what tests read ------------------------------------------------------------------
    def posts(self, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted, optionally only those in one thread."""
        return [
            r.payload
            for r in self.recorded(POST_MESSAGE)
            if thread_ts is None or r.payload.get("thread_ts") == thread_ts
        ]

    async def wait_for_posts(self, count: int, *, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until the bot has posted at least `count` messages in total."""
        await self.wait_for(lambda recs: _count(recs) >= count, timeout=timeout)
        return self.posts()

    # -- Events API -----------------------------------------------------------------------
    async def deliver(self, payload: dict[str, Any], **forged: Unpack[Forgery]) -> Delivery:
        """POST `payload` to the gateway's Events URL, signed as Slack signs it.

        `retry_num` adds Slack's `X-Slack-Retry-Num`/`-Reason` headers and sends exactly once;
        `secret`/`timestamp` forge a bad or stale signature; `signed=False` leaves the headers
        out (`Forgery`). Without those, this is one user action as Slack delivers it under
        `edges`: the `message` twin of a channel mention and the edit go out alongside (in the
        background), and with `retries` a failed attempt is retried on Slack's schedule; the
        answer of the last attempt is returned. Raises aiohttp.ClientError when no attempt
        reached the gateway.
        """
        as_slack_would = forged.get("signed", True) and all(
            forged.get(name) is None for name in ("retry_num", "secret", "timestamp")
        )
        if not as_slack_would:
            return await self._send(payload, **forged)
        event = payload.get("event") or {}
        if (
            self.edges.double_mention
            and event.get("type") == "app_mention"
            and not str(event.get("channel", "")).startswith("D")
        ):
            self.hit("double_mention")  # Slack's `message` event for the same post, its own event_id
            twin = dict(event, type="message", channel_type="channel")
            self.spawn(self._deliver_quietly(self.envelope(twin)))
        if self.edges.edits and event.get("user") and not event.get("subtype"):
            self.hit("edit")
            self.spawn(self._deliver_quietly(self.edit_event(payload, f"{event.get('text', '')} (edited)")))
        delivery = await self._deliver_action(payload)
        if self.edges.deletions and event.get("user") and event.get("type") == "message":
            self.hit("deletion")
            self.spawn(self._deliver_quietly(self.delete_event(payload)))
        return delivery

    async def _deliver_action(self, payload: dict[str, Any]) -> Delivery:
        """One event as Slack's sender handles it: once, or with retries on Slack's schedule."""
        if not self.edges.retries:
            return await self._send(payload)
        reason: str | None = None
        last: Delivery | None = None
        error: aiohttp.ClientError | None = None
        for attempt in range(len(RETRY_SCHEDULE_S) + 1):
            if attempt:
                await asyncio.sleep(RETRY_SCHEDULE_S[attempt - 1] * self.edges.schedule_scale)
                await self.redeliver.wait()
                self.hit(f"retry:{reason}")
            outcome: str
            try:
                last = await self._send(
                    payload, retry_num=attempt or None, retry_reason=reason or "", timeout_s=self.edges.ack_deadline_s
                )
                error = None
                outcome = str(last.status)
            except TimeoutError:
                reason, outcome = "http_timeout", "timeout"
            except aiohttp.ClientError as exc:
                error = exc
                reason, outcome = "connection_failed", "connection_failed"
            await self.record(
                DELIVERY,
                {"event_id": payload.get("event_id"), "retry_num": attempt, "outcome": outcome, "at": time.monotonic()},
            )
            if last is not None and error is None and outcome != "timeout":
                if 200 <= last.status < 300 or last.headers.get("X-Slack-No-Retry") == "1":
                    return last
                reason = "http_error"
        self.hit("gave_up")
        if last is not None:
            return last
        assert error is not None or reason == "http_timeout"
        raise error or aiohttp.ServerTimeoutError(f"no answer within {self.edges.ack_deadline_s} s")

    async def _send(
        self, payload: dict[str, Any], *, timeout_s: float | None = None, **forged: Unpack[Forgery]
    ) -> Delivery:
        """One signed POST; raises TimeoutError after `timeout_s`, aiohttp.ClientError."""
        gateway_url = self.gateway_url  # read once, before the first await (tests/multi's balancers)
        if gateway_url is None:
            raise RuntimeError("gateway_url is not set (the harness sets it)")
        url = gateway_url + EVENTS_PATH
        body = json.dumps(payload).encode()
        if forged.get("signed", True):
            headers = self.signed_headers(body, timestamp=forged.get("timestamp"), secret=forged.get("secret"))
        else:
            headers = {"Content-Type": "application/json"}
        if (retry_num := forged.get("retry_num")) is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = forged.get("retry_reason", "http_timeout")
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, data=body, headers=headers) as resp:
                return Delivery(resp.status, await resp.text(), dict(resp.headers))

    def signed_headers(self, body: bytes, *, timestamp: int | None = None, secret: str | None = None) -> dict[str, str]:
        """The headers Slack POSTs `body` with: signed now with the app's signing secret (or as
        sent at `timestamp`, or with another `secret`)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret or self.signing_secret, ts, body),
        }

    def deliveries(self, event_id: str | None = None) -> list[dict[str, Any]]:
        """Every Events API attempt the retrying sender made (first tries and retries)."""
        return [r.payload for r in self.recorded(DELIVERY) if event_id is None or r.payload["event_id"] == event_id]


def _count(records: list[Record]) -> int:
    return sum(1 for r in records if r.kind == POST_MESSAGE)


async def _form_or_json(request: web.Request) -> dict[str, Any]:
    """slack-sdk sends JSON bodies for chat.postMessage and form bodies for some methods."""
    if request.content_type == "application/json":
        data = await request.json()
        return data if isinstance(data, dict) else {}
    return dict(await request.post())
