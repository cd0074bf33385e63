"""A Matrix homeserver, as far as a bot using matrix-nio sees one.

Client-server endpoints (spec v1.x, `/_matrix/client/v3`), access token as `Authorization:
Bearer` or `?access_token=`:
  GET  /_matrix/client/versions
  GET  /account/whoami                              -> the bot's user id and device
  GET  /joined_rooms
  GET  /sync?since=&timeout=                        -> long-polls until an event or `timeout` ms
  PUT  /rooms/{roomId}/send/{type}/{txnId}          -> idempotent per (access token, txnId)
  GET  /rooms/{roomId}/event/{eventId}
One global stream orders every event; `next_batch` is `s<position>`, so a client that sends an
old `since` gets everything after it again (that is what makes a persisted token matter). A
sync without `since` is an initial sync: room state plus the last `INITIAL_TIMELINE_LIMIT`
events, `limited` when there were more.

Tests and the demo drive it with `send_message`, `react` and `redact` (events built from
`fixtures/matrix/`), and read what the bot sent from the records (`kind="room_send"`). A
redaction strips the stored original's content, as a real server does, so a reaction redacted
before the bot synced reaches it as a redacted event.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from chatstate.gateway.sim.base import Record, SimulatorServer

API = "/_matrix/client/v3"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "matrix"
INITIAL_TIMELINE_LIMIT = 20  # events an initial sync returns per room
MAX_SYNC_TIMEOUT_MS = 30_000  # a longer requested long-poll is cut to this, like Synapse does
SERVER_NAME = "sim.local"
# Keys a redaction keeps (spec "Redactions", room versions 1-10 for these event types).
_KEPT_ON_REDACTION = ("event_id", "type", "room_id", "sender", "state_key", "origin_server_ts", "redacts")


def fixture(name: str) -> dict[str, Any]:
    """Load `fixtures/matrix/<name>.json` (a fresh copy each call)."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.events: list[dict[str, Any]] = []  # the stream; position = index + 1
        self._by_id: dict[str, dict[str, Any]] = {}
        self._txns: dict[tuple[str, str], str] = {}  # (access token, txnId) -> event_id
        self.sync_requests = 0
        self._stream: asyncio.Condition | None = None

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
        app.router.add_get("/_matrix/client/versions", self._versions)
        app.router.add_get(f"{API}/account/whoami", self._whoami)
        app.router.add_get(f"{API}/joined_rooms", self._joined_rooms)
        app.router.add_get(f"{API}/sync", self._sync)
        app.router.add_put(f"{API}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}", self._send)
        app.router.add_get(f"{API}/rooms/{{room_id}}/event/{{event_id}}", self._get_event)

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

    def sent(self, event_type: str | None = None, room_id: str | None = None) -> list[dict[str, Any]]:
        """What the bot sent (first delivery of each txn), oldest first."""
        return [
            r.payload for r in self.recorded("room_send")
            if (event_type is None or r.payload["type"] == event_type)
            and (room_id is None or r.payload["room_id"] == room_id)
        ]

    def event(self, event_id: str) -> dict[str, Any]:
        """The stored event (client format, with room_id). Raises KeyError for an unknown id."""
        return copy.deepcopy(self._by_id[event_id])

    # -- the stream -----------------------------------------------------------------------
    async def _append(self, room_id: str, sender: str, template: dict[str, Any], *, notify: bool = True) -> str:
        if room_id not in self.rooms:
            raise KeyError(f"unknown room {room_id}")
        event = dict(template)
        event.update(
            event_id=f"${secrets.token_urlsafe(18)}", room_id=room_id, sender=sender,
            origin_server_ts=_now_ms(), unsigned={},
        )
        self.events.append(event)
        self._by_id[event["event_id"]] = event
        if notify:
            await self._notify()
        return event["event_id"]

    async def _notify(self) -> None:
        assert self._stream is not None, "start() the simulator first"
        async with self._stream:
            self._stream.notify_all()

    # -- endpoints ------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else request.query.get("access_token", "")
        if not token:
            raise _error(401, "M_MISSING_TOKEN", "Missing access token")
        if token != self.access_token:
            raise _error(401, "M_UNKNOWN_TOKEN", "Unrecognised access token")
        return token

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.1", "v1.5", "v1.9"], "unstable_features": {}})

    async def _whoami(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"user_id": self.bot_user, "device_id": self.device_id, "is_guest": False})

    async def _joined_rooms(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"joined_rooms": list(self.rooms)})

    async def _sync(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self.sync_requests += 1
        since = request.query.get("since")
        if since is None:
            return web.json_response(self._initial_sync())
        position = _position(since)
        timeout_ms = min(int(request.query.get("timeout", "0") or 0), MAX_SYNC_TIMEOUT_MS)
        assert self._stream is not None
        if timeout_ms > 0 and len(self.events) <= position:
            await self.record("sync_wait", {"since": since, "timeout_ms": timeout_ms})  # tests await this
            async with self._stream:
                try:
                    await asyncio.wait_for(
                        self._stream.wait_for(lambda: len(self.events) > position), timeout_ms / 1000
                    )
                except TimeoutError:
                    pass  # an empty long-poll answer, like a real server
        return web.json_response(self._sync_body(self.events[position:], since=position))

    async def _send(self, request: web.Request) -> web.Response:
        token = self._authorize(request)
        room_id, event_type, txn_id = (request.match_info[k] for k in ("room_id", "event_type", "txn_id"))
        if room_id not in self.rooms:
            raise _error(403, "M_FORBIDDEN", "You are not in this room")
        try:
            content = await request.json()
        except ValueError:
            raise _error(400, "M_NOT_JSON", "Content not JSON") from None
        if not isinstance(content, dict):
            raise _error(400, "M_BAD_JSON", "Content must be an object")
        seen = self._txns.get((token, txn_id))
        if seen is not None:  # spec: a retried txnId returns the first event, sends nothing new
            await self.record("room_send_retry", {"room_id": room_id, "type": event_type, "txn_id": txn_id, "event_id": seen})
            return web.json_response({"event_id": seen})
        event_id = await self._append(room_id, self.bot_user, {"type": event_type, "content": content}, notify=False)
        self._txns[(token, txn_id)] = event_id
        await self.record(
            "room_send", {"room_id": room_id, "type": event_type, "txn_id": txn_id, "content": content, "event_id": event_id}
        )
        await self._notify()
        return web.json_response({"event_id": event_id})

    async def _get_event(self, request: web.Request) -> web.Response:
        self._authorize(request)
        event = self._by_id.get(request.match_info["event_id"])
        if event is None or event["room_id"] != request.match_info["room_id"]:
            raise _error(404, "M_NOT_FOUND", "Event not found")
        return web.json_response(event)

    # -- sync bodies ----------------------------------------------------------------------
    def _initial_sync(self) -> dict[str, Any]:
        body = self._sync_body(self.events[-INITIAL_TIMELINE_LIMIT:], since=None)
        for room_id, room in body["rooms"]["join"].items():
            room["state"]["events"] = self._room_state(room_id)
            room["timeline"]["limited"] = len(self.events) > INITIAL_TIMELINE_LIMIT
        return body

    def _sync_body(self, events: list[dict[str, Any]], *, since: int | None) -> dict[str, Any]:
        join: dict[str, Any] = {}
        for room_id in self.rooms:
            timeline = [_without_room(e) for e in events if e["room_id"] == room_id]
            if timeline or since is None:
                join[room_id] = {
                    "timeline": {"events": timeline, "limited": False, "prev_batch": f"s{since or 0}"},
                    "state": {"events": []},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                    "unread_notifications": {"highlight_count": 0, "notification_count": 0},
                }
        return {
            "next_batch": f"s{len(self.events)}",
            "rooms": {"join": join, "invite": {}, "leave": {}},
            "presence": {"events": []},
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }

    def _room_state(self, room_id: str) -> list[dict[str, Any]]:
        ts = 1_700_000_000_000
        creator = self.members[0] if self.members else self.bot_user
        state = [
            {"type": "m.room.create", "state_key": "", "sender": creator, "event_id": f"$create-{room_id}",
             "origin_server_ts": ts, "content": {"creator": creator, "room_version": "10"}},
        ]
        for i, user in enumerate([self.bot_user, *self.members]):
            state.append(
                {"type": "m.room.member", "state_key": user, "sender": user, "event_id": f"$member-{i}-{room_id}",
                 "origin_server_ts": ts + i, "content": {"membership": "join", "displayname": user[1:].split(":")[0]}}
            )
        return state


def _position(since: str) -> int:
    if not since.startswith("s") or not since[1:].isdigit():
        raise _error(400, "M_INVALID_PARAM", "Unknown sync token")
    return int(since[1:])


def _without_room(event: dict[str, Any]) -> dict[str, Any]:
    """Sync timelines carry events without `room_id` (the room is the enclosing key)."""
    out = copy.deepcopy(event)
    out.pop("room_id", None)
    return out


def _error(status: int, errcode: str, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(text=json.dumps({"errcode": errcode, "error": message}), content_type="application/json")


__all__ = ["MatrixHomeserver", "Record", "fixture"]
