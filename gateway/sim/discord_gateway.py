"""A local Discord Gateway: the websocket a bot connects to, with sessions it can RESUME.

It extends the HTTP Discord simulator (same REST API, same interaction fixtures), so a scenario
written for HTTP interactions runs unchanged over the Gateway: `deliver` dispatches the
interaction as an INTERACTION_CREATE and returns the answer the bot POSTs to the interaction
callback. The wire follows https://discord.com/developers/docs/events/gateway:
- `GET /api/v10/gateway/bot` gives the URL; on connect the server sends HELLO (op 10) with
  `heartbeat_interval`; the bot heartbeats (op 1, `d` = last sequence) and gets HEARTBEAT_ACK
  (op 11); it sends IDENTIFY (op 2) and gets READY (op 0) with `session_id` and
  `resume_gateway_url`, or RESUME (op 6) and gets the dispatches it missed, then RESUMED;
- every dispatch (op 0) carries the session's next sequence number `s`;
- RECONNECT (op 7) asks the bot to reconnect and resume; INVALID_SESSION (op 9) with `d` false
  means the session is gone and the bot must IDENTIFY afresh;
- a client close with 1000/1001 ends the session; any other close (or a dropped TCP link)
  keeps it resumable for `resume_window_s`, buffering what is dispatched meanwhile;
- a connection that sends no heartbeat for 1.5 intervals is closed (code 4000, resumable);
- an interaction's initial callback is accepted only within `callback_window_s` of its
  dispatch (Discord: 3 s; error 10062 after) and only once (error 40060); an accepted one
  opens the interaction webhook (deferred answers, follow-ups) as the HTTP simulator's does;
- `rate_limit_callbacks` answers the next N callbacks 429 with a JSON `retry_after`
  (https://discord.com/developers/docs/topics/rate-limits): not processed, so the interaction
  stays unanswered until a retry lands within its window;
- hostile far-end behaviour a test switches on: `send_raw` puts any text frame on the link (a
  frame that is not JSON, not an object, a dispatch without `s`), `refuse_links` answers new
  connections 503 (the link cannot come back).
Timings are constructor arguments so tests can compress them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from chatstate.gateway.sim.discord import API_PREFIX, DEFERRED_TYPES, DiscordSimulator, Reply
from chatstate.gateway.sim.discord_edges import Token

GATEWAY_PATH = "/gateway"
RESUME_PATH = "/gateway-resume"  # READY's resume_gateway_url, so a RESUME visibly uses it
HEARTBEAT_INTERVAL_MS = 41_250  # what Discord sends today
RESUME_WINDOW_S = 120.0  # undocumented on Discord; observed to be minutes
CALLBACK_WINDOW_S = 3.0  # Discord: the initial response within 3 s of the interaction
BUFFER_MAX = 1_000  # dispatches a disconnected session keeps for its RESUME
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 7, 9, 10, 11


@dataclass
class Session:
    """One gateway session: its sequence, its link (if connected) and what it was sent."""

    session_id: str
    shard: list[int]
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    disconnected_at: float | None = None
    ended: bool = False  # closed with 1000/1001, invalidated, or past the resume window
    buffer: list[dict[str, Any]] = field(default_factory=list)

    def resumable(self, window_s: float) -> bool:
        if self.ended:
            return False
        return self.disconnected_at is None or time.monotonic() - self.disconnected_at <= window_s


@dataclass
class Pending:
    """An interaction dispatched to the bot, waiting for its callback."""

    payload: dict[str, Any]
    dispatched_at: float
    answered: asyncio.Future[Reply]


class DiscordGatewaySimulator(DiscordSimulator):
    """The Discord simulator plus the Gateway; the gateway config says `transport = "gateway"`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        resume_window_s: float = RESUME_WINDOW_S,
        callback_window_s: float = CALLBACK_WINDOW_S,
        **config: Any,
    ) -> None:
        super().__init__(host, **config)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.resume_window_s = resume_window_s
        self.callback_window_s = callback_window_s
        self.ack_heartbeats = True  # False: swallow heartbeats (a zombied link, seen from the bot)
        self.refuse_links = False  # True: new connections are answered 503
        self.resume_gateway_url: str | None = None  # READY's, when not this server's own resume path
        self.rate_limit_callbacks = 0  # the next N interaction callbacks are answered 429
        self.callback_retry_after_s = 0.5  # the `retry_after` those 429s carry
        # while set, an interaction callback waits for this future before Discord takes it (a
        # test can kill the gateway with an answer in flight); `callback_arrived` fires first
        self.hold_callbacks: asyncio.Future[None] | None = None
        self.callback_arrived = asyncio.Event()
        self.sessions: dict[str, Session] = {}
        self.pending: dict[str, Pending] = {}
        self._links = itertools.count(1)

    # -- SimulatorServer ------------------------------------------------------------------
    def build(self, app: web.Application) -> None:
        super().build(app)
        app.router.add_get(API_PREFIX + "/gateway/bot", self._gateway_bot)
        app.router.add_get(GATEWAY_PATH, self._gateway)
        app.router.add_get(RESUME_PATH, self._gateway)
        app.router.add_post(API_PREFIX + "/interactions/{id}/{token}/callback", self._callback)
        app.on_shutdown.append(self._close_links)

    def gateway_config(self) -> dict[str, Any]:
        return {**super().gateway_config(), "transport": "gateway"}

    async def _close_links(self, _app: web.Application) -> None:
        for s in self.sessions.values():
            if s.ws is not None:
                await s.ws.close()

    def _ws_url(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        return web.json_response(
            {
                "url": self._ws_url(GATEWAY_PATH),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    # -- the websocket ----------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_links:
            await self.record("gateway_refused", {"path": request.path})
            return web.Response(status=503, text="upstream connect error")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        link = next(self._links)
        await self.record("gateway_open", {"link": link, "path": request.path, "query": dict(request.query)})
        await ws.send_json({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
        session: Session | None = None
        client_close: int | None = None  # the code of a close the bot started
        last_beat = time.monotonic()
        timeout_s = self.heartbeat_interval_ms / 1000 * 1.5
        try:
            while True:
                wait = max(0.0, last_beat + timeout_s - time.monotonic())
                try:
                    msg = await ws.receive(timeout=wait)
                except TimeoutError:
                    await self.record("gateway_heartbeat_timeout", {"link": link})
                    await ws.close(code=4000, message=b"heartbeat timeout")
                    break
                if msg.type != WSMsgType.TEXT:
                    client_close = msg.data if msg.type == WSMsgType.CLOSE else None
                    break
                frame = msg.json()
                op, d = frame.get("op"), frame.get("d")
                if op == HEARTBEAT:
                    last_beat = time.monotonic()
                    await self.record("gateway_heartbeat", {"link": link, "d": d, "acked": self.ack_heartbeats})
                    if self.ack_heartbeats:
                        await ws.send_json({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op == IDENTIFY:
                    session = await self._identify(ws, link, d or {})
                elif op == RESUME:
                    session = await self._resume(ws, link, d or {})
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                session.disconnected_at = time.monotonic()
                if client_close in (1000, 1001):
                    session.ended = True
            await self.record(
                "gateway_closed",
                {
                    "link": link,
                    "code": client_close or ws.close_code,
                    "session_id": session.session_id if session else None,
                },
            )
        return ws

    async def _identify(self, ws: web.WebSocketResponse, link: int, d: dict[str, Any]) -> Session | None:
        if d.get("token") != self.bot_token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        session = Session(secrets.token_hex(16), list(d.get("shard") or [0, 1]))
        session.ws = ws
        self.sessions[session.session_id] = session
        await self.record(
            "gateway_identify", {"link": link, "session_id": session.session_id, "intents": d.get("intents")}
        )
        bot = {"id": "1200000000000000001", "username": "chatstate", "discriminator": "0", "bot": True, "avatar": None}
        await self._send(
            session,
            "READY",
            {
                "v": 10,
                "user": bot,
                "guilds": [],
                "session_id": session.session_id,
                "resume_gateway_url": self.resume_gateway_url or self._ws_url(RESUME_PATH),
                "shard": session.shard,
                "application": {"id": "1200000000000000001", "flags": 0},
            },
        )
        return session

    async def _resume(self, ws: web.WebSocketResponse, link: int, d: dict[str, Any]) -> Session | None:
        session = self.sessions.get(str(d.get("session_id")))
        ok = d.get("token") == self.bot_token and session is not None and session.resumable(self.resume_window_s)
        if not ok or session is None:
            if session is not None:
                session.ended = True  # past its window, its buffered dispatches are lost
            await self.record("gateway_resume_refused", {"link": link, "session_id": d.get("session_id")})
            await ws.send_json({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if session.ws is not None and session.ws is not ws:
            old, session.ws = session.ws, None
            await old.close(code=4000)
        session.ws, session.disconnected_at = ws, None
        since = int(d.get("seq") or 0)
        missed = [f for f in session.buffer if f["s"] > since]
        await self.record(
            "gateway_resume", {"link": link, "session_id": session.session_id, "seq": since, "replayed": len(missed)}
        )
        for frame in missed:
            await ws.send_json(frame)
        await self._send(session, "RESUMED", None)
        return session

    async def _send(self, session: Session, event: str, data: Any) -> bool:
        """Give `session` its next sequence number for a dispatch; send it if connected."""
        session.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.buffer.append(frame)
        del session.buffer[:-BUFFER_MAX]
        if session.ws is None or session.ws.closed:
            return False
        with contextlib.suppress(ConnectionError, RuntimeError):
            await session.ws.send_json(frame)
            return True
        return False

    # -- driving it from a test -------------------------------------------------------------
    def current_session(self) -> Session | None:
        """The session dispatches go to: the newest one not ended."""
        live = [s for s in self.sessions.values() if not s.ended]
        return live[-1] if live else None

    async def dispatch_interaction(self, payload: dict[str, Any]) -> Pending:
        """Send INTERACTION_CREATE to the current session (buffered if it is disconnected)."""
        pending = Pending(payload, time.monotonic(), asyncio.get_running_loop().create_future())
        self.pending[str(payload["id"])] = pending
        session = self.current_session()
        sent = False
        if session is not None:
            sent = await self._send(session, "INTERACTION_CREATE", payload)
        await self.record(
            "gateway_dispatch",
            {
                "id": payload["id"],
                "sent": sent,
                "session_id": session.session_id if session else None,
                "seq": session.seq if session else None,
            },
        )
        return pending

    async def deliver(
        self, payload: dict[str, Any], *, signature: str | None = None, timestamp: str | None = None
    ) -> Reply:
        """Dispatch `payload` over the Gateway and return the bot's callback (503 if none came)."""
        pending = await self.dispatch_interaction(payload)
        try:
            reply = await asyncio.wait_for(asyncio.shield(pending.answered), 15.0)
        except TimeoutError:
            reply = Reply(503, None)
        await self.record("interaction_response", {"request": payload, "status": reply.status, "body": reply.body})
        return reply

    async def reconnect(self) -> None:
        """Send RECONNECT (op 7) on the current session's link."""
        session = self.current_session()
        assert session is not None and session.ws is not None, "no connected session"
        await session.ws.send_json({"op": RECONNECT, "d": None, "s": None, "t": None})
        await self.record("gateway_reconnect_sent", {"session_id": session.session_id})

    async def send_raw(self, text: str) -> None:
        """Put `text` on the current session's link as one text frame, whatever it holds."""
        session = self.current_session()
        assert session is not None and session.ws is not None, "no connected session"
        await session.ws.send_str(text)
        await self.record("gateway_raw_sent", {"session_id": session.session_id, "text": text[:200]})

    async def invalidate(self, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION (op 9); with `resumable` false the session is gone."""
        session = self.current_session()
        assert session is not None and session.ws is not None, "no connected session"
        if not resumable:
            session.ended = True
        await session.ws.send_json({"op": INVALID_SESSION, "d": resumable, "s": None, "t": None})
        await self.record("gateway_invalidated", {"session_id": session.session_id, "resumable": resumable})

    # -- the interaction callback (REST) ----------------------------------------------------
    async def _callback(self, request: web.Request) -> web.Response:
        pending = self.pending.get(request.match_info["id"])
        body = await request.json()
        if pending is None or pending.payload.get("token") != request.match_info["token"]:
            return web.json_response({"message": "Unknown interaction", "code": 10062}, status=404)
        if self.rate_limit_callbacks > 0:
            self.rate_limit_callbacks -= 1
            self.hit("rate_limited")
            await self.record("callback_rate_limited", {"id": request.match_info["id"]})
            retry_after = self.callback_retry_after_s
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
            headers = {"Retry-After": str(math.ceil(retry_after)), "X-RateLimit-Scope": "shared"}
            return web.json_response(body, status=429, headers=headers)
        self.callback_arrived.set()
        if self.hold_callbacks is not None:
            await asyncio.shield(self.hold_callbacks)
        age = time.monotonic() - pending.dispatched_at
        await self.record("interaction_callback", {"id": request.match_info["id"], "body": body, "age_s": age})
        if pending.answered.done():
            return web.json_response(
                {"message": "Interaction has already been acknowledged.", "code": 40060}, status=400
            )
        token = Token(request.match_info["id"], pending.dispatched_at)  # what the webhook checks
        self._tokens[request.match_info["token"]] = token
        if age > self.callback_window_s:
            token.failed = True
            self.hit("deadline_missed")
            pending.answered.set_result(Reply(404, None))
            return web.json_response({"message": "Unknown interaction", "code": 10062}, status=404)
        token.acknowledged = True
        if body.get("type") in DEFERRED_TYPES:
            self.hit("deferred")
        pending.answered.set_result(Reply(200, body))
        return web.Response(status=204)

    # -- what tests read --------------------------------------------------------------------
    def callbacks(self, interaction_id: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.recorded("interaction_callback") if r.payload["id"] == interaction_id]

    async def wait_ready(self, *, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until `count` IDENTIFY or RESUME handshakes have completed in total."""
        await self.wait_for(
            lambda recs: sum(r.kind in ("gateway_identify", "gateway_resume") for r in recs) >= count, timeout=timeout
        )
