"""A local Slack that speaks Socket Mode: `apps.connections.open`, the websocket, envelopes, acks,
disconnect frames and the redelivery of envelopes nobody acknowledged.

It extends the HTTP Slack simulator (same Web API, same recorded posts), so a scenario written
for the Events API runs unchanged over Socket Mode: `deliver` sends the envelope over a socket
and returns once it is acknowledged. The wire, as Slack documents it:
- `apps.connections.open` (app-level token `xapp-...`) returns a `wss://` URL, here `ws://`;
- on connect Slack sends `{"type": "hello", "num_connections": n, ...}`;
- each `events_api` / `slash_commands` / `interactive` envelope carries an `envelope_id`, the
  payload, `retry_attempt` and `retry_reason`; the app answers `{"envelope_id": ...}` (plus a
  `payload` where `accepts_response_payload`) within 3 s;
- `{"type": "disconnect", "reason": "warning" | "refresh_requested" | "link_disabled" |
  "too_many_websockets"}` announces that the connection will close.
What Slack does not document exactly, and this simulator decides (docs/migrations/slack.md):
an envelope goes to one open connection (round robin over at most `max_connections`, 10 as on
Slack); an ack counts from any connection of the app; an envelope not acked within
`ack_timeout_s` is sent again with `retry_attempt + 1` (reason `timeout`, or
`connection_closed` when its connection went away), on an open connection, after the Events
API's retry schedule (`retry_delays_s`: at once, 1 min, 5 min; tests compress it); the same
envelope_id is kept across attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from chatstate.gateway.sim.slack import Delivery, SlackSimulator

SOCKET_PATH = "/socket-mode/link"
MAX_CONNECTIONS = 10  # Slack's limit of concurrent Socket Mode connections per app
ACK_TIMEOUT_S = 3.0  # Slack expects the ack within 3 s
RETRY_DELAYS_S = (0.0, 60.0, 300.0)  # the Events API's schedule: three retries after the first
DISCONNECT_GRACE_S = 10.0  # "warning"/"refresh_requested": the link closes ~10 s later


@dataclass
class Envelope:
    """One envelope Slack owes the app, across all its delivery attempts."""

    envelope_id: str
    type: str  # events_api | slash_commands | interactive
    payload: dict[str, Any]
    accepts_response_payload: bool
    attempt: int = 0
    retry_reason: str = ""
    connection: int | None = None  # the connection the current attempt went to
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    ack_payload: dict[str, Any] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # acked, or Slack gave up

    def frame(self) -> dict[str, Any]:
        return {
            "envelope_id": self.envelope_id,
            "type": self.type,
            "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
            "retry_attempt": self.attempt,
            "retry_reason": self.retry_reason,
        }


class SlackSocketSimulator(SlackSimulator):
    """The Slack simulator plus Socket Mode; the gateway config says `transport = "socket"`."""

    app_token = "xapp-1-A0SIM-sim-token"  # the app-level token apps.connections.open accepts
    max_connections = MAX_CONNECTIONS

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        disconnect_grace_s: float = DISCONNECT_GRACE_S,
        **kw: Any,
    ) -> None:
        super().__init__(host, **kw)
        self.ack_timeout_s = ack_timeout_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.disconnect_grace_s = disconnect_grace_s
        self.link_enabled = True  # False after a link_disabled disconnect, until enable_link()
        self.connections: dict[int, web.WebSocketResponse] = {}
        self.envelopes: dict[str, Envelope] = {}
        self._conn_ids = itertools.count(1)
        self._rr = itertools.count()
        self._waiting: list[Envelope] = []  # attempts waiting for an open connection
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()  # set while at least one connection is open

    # -- SimulatorServer ------------------------------------------------------------------
    def build(self, app: web.Application) -> None:
        super().build(app)
        app.router.add_post("/api/apps.connections.open", self._connections_open)
        app.router.add_get(SOCKET_PATH, self._socket)
        app.on_shutdown.append(self._close_all)

    def gateway_config(self) -> dict[str, Any]:
        return {**super().gateway_config(), "transport": "socket", "app_token": self.app_token, **self.extra_config}

    async def _close_all(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self.connections.values()):
            await ws.close()

    # -- apps.connections.open and the websocket ------------------------------------------
    async def _connections_open(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "") != f"Bearer {self.app_token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if not self.link_enabled:
            return web.json_response({"ok": False, "error": "socket_mode_not_enabled"})
        ticket = uuid.uuid4().hex
        return web.json_response({"ok": True, "url": f"ws://{self.host}:{self.port}{SOCKET_PATH}?ticket={ticket}"})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = next(self._conn_ids)
        if len(self.connections) >= self.max_connections:
            await ws.send_json({"type": "disconnect", "reason": "too_many_websockets"})
            await self.record("socket_refused", {"connection": conn})
            await ws.close()
            return ws
        self.connections[conn] = ws
        self.connected.set()
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self.connections),
                "debug_info": {"host": "sim", "approximate_connection_time": 18060},
                "connection_info": {"app_id": "A0SIM"},
            }
        )
        await self.record("socket_open", {"connection": conn})
        self._flush_waiting()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(conn, msg.data)
        finally:
            self.connections.pop(conn, None)
            if not self.connections:
                self.connected.clear()
            await self.record("socket_closed", {"connection": conn})
        return ws

    async def _on_frame(self, conn: int, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            return
        env = self.envelopes.get(str(frame.get("envelope_id", ""))) if isinstance(frame, dict) else None
        if env is None:
            await self.record("socket_unknown_ack", {"connection": conn, "frame": frame})
            return
        await self.record(
            "socket_ack",
            {
                "connection": conn,
                "envelope_id": env.envelope_id,
                "attempt": env.attempt,
                "payload": frame.get("payload"),
            },
        )
        if not env.acked.is_set():
            env.ack_payload = frame.get("payload")
            env.acked.set()
            env.settled.set()

    # -- sending envelopes ----------------------------------------------------------------
    def send_envelope(self, payload: dict[str, Any], *, type: str = "events_api") -> Envelope:
        """Queue one envelope for the app; it goes out on an open connection (now or later)."""
        env = Envelope(str(uuid.uuid4()), type, payload, accepts_response_payload=type != "events_api")
        self.envelopes[env.envelope_id] = env
        self._dispatch(env)
        return env

    def _dispatch(self, env: Envelope) -> None:
        open_ids = [c for c, ws in self.connections.items() if not ws.closed]
        if not open_ids:
            env.connection = None
            self._waiting.append(env)
            return
        env.connection = open_ids[next(self._rr) % len(open_ids)]
        self._spawn(self._attempt(env, env.connection, env.attempt))

    def _flush_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for env in waiting:
            if not env.acked.is_set():
                self._dispatch(env)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, env: Envelope, conn: int, attempt: int) -> None:
        """Send one attempt; if no ack arrives in time, schedule the next one."""
        ws = self.connections.get(conn)
        sent = False
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json(env.frame())
                sent = True
        await self.record(
            "socket_envelope",
            {
                "connection": conn,
                "envelope_id": env.envelope_id,
                "attempt": attempt,
                "retry_reason": env.retry_reason,
                "sent": sent,
                "type": env.type,
            },
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(env.acked.wait(), self.ack_timeout_s)
            return
        if env.attempt != attempt:
            return
        if attempt >= len(self.retry_delays_s):
            env.settled.set()
            await self.record("socket_given_up", {"envelope_id": env.envelope_id, "attempts": attempt + 1})
            return
        still_open = conn in self.connections and not self.connections[conn].closed
        await asyncio.sleep(self.retry_delays_s[attempt])
        if env.acked.is_set():  # a late ack of the last attempt
            return
        env.attempt = attempt + 1
        env.retry_reason = "timeout" if still_open else "connection_closed"
        self._dispatch(env)

    async def _post_message(self, request: web.Request) -> web.Response:
        """chat.postMessage as the HTTP simulator serves it, counting arrivals first (a test
        holding posts can wait until every reply in flight has reached Slack)."""
        await self.record("post_arrived", {})
        return await super()._post_message(request)

    # -- disconnect frames ----------------------------------------------------------------
    async def disconnect(self, reason: str, *, connection: int | None = None) -> list[int]:
        """Send a `disconnect` frame to one connection (default: every open one).

        `warning` / `refresh_requested` close it `disconnect_grace_s` later unless the app
        closes it first; `link_disabled` closes it now and refuses `apps.connections.open`
        until `enable_link()`. Returns the connection ids told.
        """
        targets = [connection] if connection is not None else list(self.connections)
        for conn in targets:
            ws = self.connections.get(conn)
            if ws is None or ws.closed:
                continue
            await ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "sim"}})
            await self.record("socket_disconnect", {"connection": conn, "reason": reason})
            if reason == "link_disabled":
                self.link_enabled = False
                await ws.close()
            else:
                self._spawn(self._close_later(ws))
        return targets

    async def _close_later(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(self.disconnect_grace_s)
        await ws.close()

    def enable_link(self) -> None:
        self.link_enabled = True

    # -- what tests read ------------------------------------------------------------------
    def attempts(self, envelope_id: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.recorded("socket_envelope") if r.payload["envelope_id"] == envelope_id]

    def redelivered(self) -> list[str]:
        """Envelope ids sent more than once."""
        return [e for e in self.envelopes if len(self.attempts(e)) > 1]

    async def wait_connected(self, count: int = 1, *, timeout: float = 15.0) -> None:
        await self.wait_for(lambda _r: len(self.connections) >= count, timeout=timeout)

    async def wait_acked(self, env: Envelope, *, timeout: float = 15.0) -> dict[str, Any] | None:
        """Wait for the ack of `env` (any attempt); returns its payload. Raises TimeoutError."""
        await asyncio.wait_for(env.acked.wait(), timeout)
        return env.ack_payload

    # -- the Events API entry point, over the socket ---------------------------------------
    async def deliver(self, payload: dict[str, Any], **_ignored: Any) -> Delivery:
        """Send `payload` as an `events_api` envelope; 200 "acked" once acknowledged, 504 when
        Slack gave up on it. HTTP-only arguments (signatures, retry headers) do not apply."""
        env = self.send_envelope(payload)
        with contextlib.suppress(TimeoutError):  # no open connection for that long: not acked
            budget = self.ack_timeout_s * (len(self.retry_delays_s) + 1) + sum(self.retry_delays_s) + 15.0
            await asyncio.wait_for(env.settled.wait(), budget)
        if env.acked.is_set():
            return Delivery(200, "acked", {"envelope_id": env.envelope_id})
        return Delivery(504, "not acknowledged", {"envelope_id": env.envelope_id})
