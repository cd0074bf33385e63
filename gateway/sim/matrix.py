"""A Matrix homeserver, as far as a bot using matrix-nio sees one — including what a real
Synapse does that a naive client gets wrong.

Client-server endpoints (spec v1.x, `/_matrix/client/v3`), access token as `Authorization:
Bearer` or `?access_token=`:
  GET  /_matrix/client/versions
  GET  /account/whoami                              -> the bot's user id and device
  GET  /joined_rooms
  POST /user/{userId}/filter                        -> a filter id (identical JSON: same id)
  GET  /sync?since=&timeout=&filter=&full_state=    -> long-polls until an event or `timeout` ms
  GET  /rooms/{roomId}/messages?from=&to=&dir=b&limit=
  PUT  /rooms/{roomId}/send/{type}/{txnId}          -> idempotent per (access token, txnId)
  GET  /rooms/{roomId}/event/{eventId}
  GET  /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}   -> one page, newest first
  POST /join/{roomId}, /rooms/{roomId}/join
Real-server behaviour it reproduces (`matrix_sync.py` shapes the bodies): limited timelines
with `prev_batch` (timeline limit from the filter, 10 without one); a ~2 minute response cache
for identical non-empty /sync requests per access token (`cache_ignores_filter = True` also
ignores the filter, to test our defences behind the fresh-filter one); redactions that strip the
stored event; `M_LIMIT_EXCEEDED` with `retry_after_ms` (`throttle`); `M_FORBIDDEN` on send in a
room the bot may not post in (`forbid`); invites (`invite`); a second login with its own txn-id
space (`new_device`); answers with nulls or omissions some servers send (`reshape_sync`).

One global stream orders every event; `next_batch` is `s<position>`. Tests and the demo drive it
with `send_message`, `react`, `redact`, `invite` (events built from `fixtures/matrix/`), and read
what the bot sent from the records (`kind="room_send"`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.base import Record, SimulatorServer
from chatstate.gateway.sim.matrix_sync import messages_body, position, room_state, sync_body, timeline_limit

API = "/_matrix/client/v3"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "matrix"
RESPONSE_CACHE_S = 120.0  # Synapse keeps a non-empty /sync answer this long
MAX_SYNC_TIMEOUT_MS = 30_000  # a longer requested long-poll is cut to this, like Synapse does
SERVER_NAME = "sim.local"
# Keys a redaction keeps (spec "Redactions", room versions 1-10 for these event types).
_KEPT_ON_REDACTION = ("event_id", "type", "room_id", "sender", "state_key", "origin_server_ts", "redacts")


def fixture(name: str) -> dict[str, Any]:
    """Load `fixtures/matrix/<name>.json` (a fresh copy each call)."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


class MatrixHomeserver(SimulatorServer):
    """One homeserver with one bot account and a few rooms the bot has joined."""

    name: ClassVar[str] = "matrix"

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        bot_user: str = f"@chatstate-bot:{SERVER_NAME}",
        device_id: str = "CHATSTATEBOT",
        rooms: Iterable[str] = (f"!ops:{SERVER_NAME}",),
        members: Iterable[str] = (f"@alice:{SERVER_NAME}", f"@bob:{SERVER_NAME}", f"@mallory:{SERVER_NAME}"),
        approvers: Iterable[str] = (f"@alice:{SERVER_NAME}", f"@bob:{SERVER_NAME}"),
    ) -> None:
        super().__init__(host)
        self.bot_user = bot_user
        self.device_id = device_id
        self.access_token = "syt_" + secrets.token_urlsafe(24)
        self.rooms = list(rooms)
        self.members = list(members)
        self.approvers = list(approvers)
        self.gateway_url: str | None = None  # set by the harness; the bot is reached via /sync
        self.joined: dict[str, int] = {r: 0 for r in self.rooms}  # room -> position the bot joined at
        self.devices: dict[str, str] = {self.access_token: device_id}  # every live token
        self.events: list[dict[str, Any]] = []  # the stream; position = index + 1
        self._by_id: dict[str, dict[str, Any]] = {}
        self._txns: dict[tuple[str, str], str] = {}  # (access token, txnId) -> event_id
        self.filters: dict[str, dict[str, Any]] = {}
        self.sync_requests = 0
        self.cache_ignores_filter = False
        self._cache: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}
        # a test's change to the next /sync answer with a joined room (the cache keeps it unchanged)
        self.reshape_sync: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.forbidden_rooms: set[str] = set()
        self._throttle: list[int] = []  # retry_after_ms of the next sends to refuse with 429
        # while set, a send waits for this future before it is taken (a test can kill the
        # gateway mid-event); `send_arrived` fires first
        self.hold_sends: asyncio.Future[None] | None = None
        self.send_arrived = asyncio.Event()
        self._stream: asyncio.Condition | None = None
        self._stopping = False  # set by stop(): open long-polls answer at once

    @property
    def room(self) -> str:
        """The first room: where the tests and the demo talk to the bot."""
        return self.rooms[0]

    @property
    def alice(self) -> str:  # an approver
        return self.members[0]

    @property
    def bob(self) -> str:  # an approver
        return self.members[1]

    @property
    def mallory(self) -> str:  # a member who is not an approver
        return self.members[2]

    # -- SimulatorServer hooks ------------------------------------------------------------
    def gateway_config(self) -> dict[str, Any]:
        """The `[adapters.matrix]` table pointing a gateway at this homeserver (the harness
        adds `mode` and any overrides such as `approval_ttl_ms`)."""
        return {
            "enabled": True,
            "homeserver": self.base_url,
            "access_token": self.access_token,
            "approvers": list(self.approvers),
        }

    def build(self, app: web.Application) -> None:
        self._stream = asyncio.Condition()
        self._stopping = False
        app.router.add_get("/_matrix/client/versions", self._versions)
        app.router.add_get(f"{API}/account/whoami", self._whoami)
        app.router.add_get(f"{API}/joined_rooms", self._joined_rooms)
        app.router.add_get(f"{API}/sync", self._sync)
        app.router.add_post(f"{API}/user/{{user_id}}/filter", self._upload_filter)
        app.router.add_get(f"{API}/rooms/{{room_id}}/messages", self._messages)
        app.router.add_post(f"{API}/join/{{room_id}}", self._join)
        app.router.add_post(f"{API}/rooms/{{room_id}}/join", self._join)
        app.router.add_put(f"{API}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}", self._send)
        app.router.add_get(f"{API}/rooms/{{room_id}}/event/{{event_id}}", self._get_event)
        relations = "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}"
        app.router.add_get(relations, self._relations)

    # -- driving it (tests, demo) ---------------------------------------------------------
    async def send_message(self, room_id: str, sender: str, body: str) -> str:
        """Post `body` as `sender` (an m.text message); returns its event id."""
        event = fixture("m.room.message")
        event["content"]["body"] = body
        return await self._append(room_id, sender, event)

    async def react(self, room_id: str, sender: str, target_event_id: str, key: str) -> str:
        """React to `target_event_id` with `key` (an m.annotation); returns the reaction's id."""
        event = fixture("m.reaction")
        event["content"]["m.relates_to"].update(event_id=target_event_id, key=key)
        return await self._append(room_id, sender, event)

    async def redact(self, room_id: str, sender: str, event_id: str) -> str:
        """Redact `event_id` (strip its stored content) and post the m.room.redaction event."""
        event = fixture("m.room.redaction")
        event["redacts"] = event_id
        event["content"]["redacts"] = event_id
        redaction_id = await self._append(room_id, sender, event, notify=False)
        original = self._by_id[event_id]
        stripped = {k: v for k, v in original.items() if k in _KEPT_ON_REDACTION}
        stripped["content"] = {}
        stripped["unsigned"] = {"redacted_because": copy.deepcopy(self._by_id[redaction_id])}
        original.clear()
        original.update(stripped)
        await self._notify()
        return redaction_id

    async def invite(self, room_id: str, inviter: str) -> str:
        """`inviter` invites the bot to `room_id` (a room it has not joined yet)."""
        if room_id not in self.rooms:
            self.rooms.append(room_id)
        event = {"type": "m.room.member", "state_key": self.bot_user, "content": {"membership": "invite"}}
        return await self._append(room_id, inviter, event)

    async def append_raw(self, room_id: str, sender: str, event: dict[str, Any]) -> str:
        """Append `event` as given, malformed or not (hostile-input tests): only its `event_id`,
        `room_id` and `sender` are the server's; returns the event id."""
        fields: dict[str, Any] = {k: event[k] for k in ("origin_server_ts", "unsigned") if k in event}
        event_id = await self._append(room_id, sender, event, notify=False)
        stored = self._by_id[event_id]
        for k in ("origin_server_ts", "unsigned"):
            stored.pop(k)
        stored.update(fields)
        await self._notify()
        return event_id

    def throttle(self, *retry_after_ms: int) -> None:
        """Refuse the bot's next sends with 429 M_LIMIT_EXCEEDED, one per value given."""
        self._throttle.extend(retry_after_ms)

    def forbid(self, room_id: str) -> None:
        """From now on the bot's sends in `room_id` get 403 M_FORBIDDEN."""
        self.forbidden_rooms.add(room_id)

    def new_device(self) -> str:
        """Log the bot in again: a new access token and device, with its own txn-id space."""
        token = "syt_" + secrets.token_urlsafe(24)
        self.devices[token] = f"DEVICE{len(self.devices)}"
        self.access_token = token
        return token

    def sent(self, event_type: str | None = None, room_id: str | None = None) -> list[dict[str, Any]]:
        """What the bot sent (first delivery of each txn), oldest first."""
        return [
            r.payload
            for r in self.recorded("room_send")
            if (event_type is None or r.payload["type"] == event_type)
            and (room_id is None or r.payload["room_id"] == room_id)
        ]

    def event(self, event_id: str) -> dict[str, Any]:
        """The stored event (client format, with room_id). Raises KeyError for an unknown id."""
        return copy.deepcopy(self._by_id[event_id])

    # -- the stream -----------------------------------------------------------------------
    async def _append(self, room_id: str, sender: str, template: dict[str, Any], *, notify: bool = True) -> str:
        if room_id not in self.rooms and room_id not in self.joined:
            raise KeyError(f"unknown room {room_id}")
        event = dict(template)
        event.update(
            event_id=f"${secrets.token_urlsafe(18)}",
            room_id=room_id,
            sender=sender,
            origin_server_ts=now_ms(),
            unsigned={},
        )
        self.events.append(event)
        self._by_id[event["event_id"]] = event
        if notify:
            await self._notify()
        return event["event_id"]

    async def stop(self) -> None:
        # A long-poll outlives the client that sent it (aiohttp does not cancel a handler when
        # its client goes away), and the server's stop waits for open handlers: end them now.
        self._stopping = True
        if self._stream is not None:
            await self._notify()
        await super().stop()

    async def _notify(self) -> None:
        assert self._stream is not None, "start() the simulator first"
        async with self._stream:
            self._stream.notify_all()

    # -- endpoints ------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = (
            header.removeprefix("Bearer ").strip()
            if header.startswith("Bearer ")
            else request.query.get("access_token", "")
        )
        if not token:
            raise _error(401, "M_MISSING_TOKEN", "Missing access token")
        if token not in self.devices:
            raise _error(401, "M_UNKNOWN_TOKEN", "Unrecognised access token")
        return token

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.1", "v1.5", "v1.9"], "unstable_features": {}})

    async def _whoami(self, request: web.Request) -> web.Response:
        token = self._authorize(request)
        return web.json_response({"user_id": self.bot_user, "device_id": self.devices[token], "is_guest": False})

    async def _joined_rooms(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"joined_rooms": list(self.joined)})

    async def _sync(self, request: web.Request) -> web.Response:
        token = self._authorize(request)
        self.sync_requests += 1
        since = request.query.get("since")
        filter_id = request.query.get("filter")
        key = (
            token,
            since,
            request.query.get("timeout"),
            None if self.cache_ignores_filter else filter_id,
            request.query.get("full_state"),
        )
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            await self.record("sync_cached", {"since": since})
            return web.json_response(self._reshaped(cached[1]))
        start = None if since is None else position(since)
        if since is not None and start is None:
            raise _error(400, "M_INVALID_PARAM", "Unknown sync token")
        timeout_ms = min(int(request.query.get("timeout", "0") or 0), MAX_SYNC_TIMEOUT_MS)
        assert self._stream is not None
        if start is not None and timeout_ms > 0 and len(self.events) <= start:
            await self.record("sync_wait", {"since": since, "timeout_ms": timeout_ms})  # tests await this
            async with self._stream:
                try:
                    await asyncio.wait_for(
                        self._stream.wait_for(lambda: self._stopping or len(self.events) > start), timeout_ms / 1000
                    )
                except TimeoutError:
                    pass  # an empty long-poll answer, like a real server
        body = sync_body(
            self.events,
            since=start,
            joined=self.joined,
            bot_user=self.bot_user,
            limit=timeline_limit(self.filters.get(filter_id or "")),
            room_state=lambda room_id: room_state(room_id, self.bot_user, self.members),
        )
        if body["rooms"]["join"] or body["rooms"]["invite"]:  # like Synapse: non-empty answers only
            self._cache[key] = (time.monotonic() + RESPONSE_CACHE_S, body)
        await self.record(
            "sync_answer", {"since": since, "next_batch": body["next_batch"], "rooms": list(body["rooms"]["join"])}
        )
        return web.json_response(self._reshaped(body))

    def _reshaped(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.reshape_sync is None or not body["rooms"]["join"]:
            return body
        reshape, self.reshape_sync = self.reshape_sync, None  # once; a reshape may re-arm itself
        return reshape(copy.deepcopy(body))

    async def _upload_filter(self, request: web.Request) -> web.Response:
        self._authorize(request)
        flt = await request.json()
        for filter_id, known in self.filters.items():  # Synapse returns the id of an identical filter
            if known == flt:
                return web.json_response({"filter_id": filter_id})
        filter_id = str(len(self.filters))
        self.filters[filter_id] = flt
        await self.record("filter_upload", {"filter_id": filter_id, "filter": flt})
        return web.json_response({"filter_id": filter_id})

    async def _messages(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room_id = request.match_info["room_id"]
        if room_id not in self.joined:
            raise _error(403, "M_FORBIDDEN", "You are not in this room")
        start = position(request.query.get("from", "")) or 0
        stop = position(request.query.get("to", ""))
        if request.query.get("dir") != "b":
            raise _error(400, "M_INVALID_PARAM", "the simulator pages backwards only")
        limit = int(request.query.get("limit", "10"))
        await self.record("messages", {"room_id": room_id, "from": start, "to": stop, "limit": limit})
        return web.json_response(messages_body(self.events, room_id, start=start, stop=stop, limit=limit))

    async def _join(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room_id = request.match_info["room_id"]
        if room_id not in self.rooms:
            raise _error(404, "M_NOT_FOUND", "No such room")
        if room_id not in self.joined:
            self.joined[room_id] = len(self.events)
            await self.record("join", {"room_id": room_id})
        return web.json_response({"room_id": room_id})

    async def _send(self, request: web.Request) -> web.Response:
        token = self._authorize(request)
        room_id, event_type, txn_id = (request.match_info[k] for k in ("room_id", "event_type", "txn_id"))
        if room_id not in self.joined or room_id in self.forbidden_rooms:
            await self.record("room_send_forbidden", {"room_id": room_id, "type": event_type, "txn_id": txn_id})
            raise _error(403, "M_FORBIDDEN", "You may not post in this room")
        if self._throttle:
            retry_after_ms = self._throttle.pop(0)
            await self.record(
                "room_send_throttled", {"room_id": room_id, "txn_id": txn_id, "retry_after_ms": retry_after_ms}
            )
            raise _error(429, "M_LIMIT_EXCEEDED", "Too Many Requests", retry_after_ms=retry_after_ms)
        try:
            content = await request.json()
        except ValueError:
            raise _error(400, "M_NOT_JSON", "Content not JSON") from None
        if not isinstance(content, dict):
            raise _error(400, "M_BAD_JSON", "Content must be an object")
        self.send_arrived.set()
        if self.hold_sends is not None:
            await asyncio.shield(self.hold_sends)
        seen = self._txns.get((token, txn_id))
        if seen is not None:  # spec: a retried txnId returns the first event, sends nothing new
            await self.record(
                "room_send_retry", {"room_id": room_id, "type": event_type, "txn_id": txn_id, "event_id": seen}
            )
            return web.json_response({"event_id": seen})
        event_id = await self._append(room_id, self.bot_user, {"type": event_type, "content": content}, notify=False)
        self._txns[(token, txn_id)] = event_id
        await self.record(
            "room_send",
            {"room_id": room_id, "type": event_type, "txn_id": txn_id, "content": content, "event_id": event_id},
        )
        await self._notify()
        return web.json_response({"event_id": event_id})

    async def _get_event(self, request: web.Request) -> web.Response:
        self._authorize(request)
        event = self._by_id.get(request.match_info["event_id"])
        if event is None or event["room_id"] != request.match_info["room_id"]:
            raise _error(404, "M_NOT_FOUND", "Event not found")
        return web.json_response(event)

    async def _relations(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room_id, event_id, rel_type = (request.match_info[k] for k in ("room_id", "event_id", "rel_type"))
        chunk = [
            e
            for e in reversed(self.events)
            if e["room_id"] == room_id
            and e.get("content", {}).get("m.relates_to", {}).get("event_id") == event_id
            and e["content"]["m.relates_to"].get("rel_type") == rel_type
        ]
        await self.record("relations", {"room_id": room_id, "event_id": event_id, "rel_type": rel_type})
        return web.json_response({"chunk": chunk})


def _error(status: int, errcode: str, message: str, **extra: Any) -> web.HTTPException:
    cls = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        429: web.HTTPTooManyRequests,
    }[status]
    return cls(text=json.dumps({"errcode": errcode, "error": message, **extra}), content_type="application/json")


__all__ = ["MatrixHomeserver", "Record", "fixture"]
