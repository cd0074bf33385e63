"""The session's Synapse as one test sees it, with the homeserver simulator's test surface
(`send_message`, `react`, `redact`, `sent`, `wait_for`, `gateway_config`...), so the same
helpers drive both.

Per test: a fresh bot device (a new /login, so no txn-id or sync-cache entry of another test
is shared), and a fresh room created by alice with bob and mallory joined. What the bot sent is
read the way a person reads it: alice's own /sync long-poll records the room's timeline, and
`wait_for` re-checks its predicate after each of her batches (an event, not a sleep loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

import aiohttp
from synapse_server import PASSWORD, SynapseServer

from chatstate.gateway.sim.base import Record

API = "/_matrix/client/v3"
OBSERVER_LIMIT = 1000  # alice's timeline limit: far more than any test sends between two syncs


class MatrixCallError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.errcode = body.get("errcode")


class SynapseRoomDriver:
    """One test's view of the session Synapse: one bot device, one room, alice observing."""

    name = "matrix"

    def __init__(self, server: SynapseServer) -> None:
        self.server = server
        self.port = server.port
        self.base_url = server.base_url
        self.gateway_url: str | None = None
        accounts = server.accounts
        self.bot_user = accounts["chatstate-bot"].user_id
        self.alice, self.bob, self.mallory = (accounts[n].user_id for n in ("alice", "bob", "mallory"))
        self.approvers = [self.alice, self.bob]
        self.tokens = {accounts[n].user_id: accounts[n].access_token for n in ("alice", "bob", "mallory")}
        self.access_token = ""  # the bot device's, set by `open`
        self.rooms: list[str] = []
        self.records: list[Record] = []
        self.events: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._http: aiohttp.ClientSession | None = None
        self._changed = asyncio.Condition()
        self._observer: asyncio.Task[None] | None = None

    @property
    def room(self) -> str:
        return self.rooms[0]

    # -- lifecycle (the harness calls start/stop; the fixture calls open/close) ------------
    async def open(self, *, join_bot: bool = True) -> SynapseRoomDriver:
        """Log a fresh bot device in, create this test's room, start observing it."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        await self.new_bot_device()
        await self.create_room(join_bot=join_bot)
        return self

    async def new_bot_device(self) -> str:
        """Log the bot in again (a new device and token; `gateway_config` now gives it)."""
        login = await self.call(
            "POST",
            "/login",
            self.bot_user,
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.bot_user},
                "password": PASSWORD,
                "initial_device_display_name": "chatstate-test",
            },
            token=None,
        )
        self.access_token = login["access_token"]
        self.tokens[self.bot_user] = self.access_token
        return self.access_token

    async def create_room(
        self, *, join_bot: bool = True, bot_may_post: bool = True, invite_bot: bool = True, creator: str | None = None
    ) -> str:
        """`creator` (alice) creates a room, the others join; returns its id and starts observing
        it (alice joins a room she did not create). `invite_bot` invites the bot; `join_bot`
        joins it out of band, else it is left to the bot's auto_join."""
        creator = creator or self.alice
        levels: dict[str, Any] = {}  # room v12: the creator (alice) has unlimited power, unlisted
        if not bot_may_post:  # the bot may read but not post: its sends get M_FORBIDDEN
            levels = {"users": {self.bob: 50, self.mallory: 50}, "events_default": 50}
        people = [u for u in (self.alice, self.bob, self.mallory) if u != creator]
        room = (
            await self.call(
                "POST",
                "/createRoom",
                creator,
                {"preset": "private_chat", "invite": people, "power_level_content_override": levels},
            )
        )["room_id"]
        for user in people:
            await self.call("POST", f"/join/{_q(room)}", user, {})
        self.tokens.setdefault(creator, self.tokens[creator])
        if invite_bot:  # after the people joined: the invite is the room's newest event
            await self.call("POST", f"/rooms/{_q(room)}/invite", creator, {"user_id": self.bot_user})
        if join_bot:
            await self.call("POST", f"/join/{_q(room)}", self.bot_user, {})
        self.rooms.append(room)
        await self._restart_observer()
        return room

    async def stream_position(self) -> str:
        """The bot device's current /sync position (a throwaway filter: no cache entry shared)."""
        flt = {"room": {"rooms": [], "org.chatstate.test": secrets.token_hex(4)}}
        filter_id = (await self.call("POST", f"/user/{_q(self.bot_user)}/filter", self.bot_user, flt))["filter_id"]
        return str((await self.call("GET", f"/sync?filter={filter_id}&timeout=0", self.bot_user))["next_batch"])

    async def start(self) -> str:
        return self.base_url

    async def stop(self) -> None:
        """Stop observing (the harness calls this on exit); the server lives on."""
        if self._observer is not None:
            self._observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._observer
            self._observer = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def gateway_config(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "homeserver": self.base_url,
            "access_token": self.access_token,
            "approvers": list(self.approvers),
        }

    # -- acting as people ------------------------------------------------------------------
    async def call(
        self, method: str, path: str, as_user: str, body: Any = None, *, token: str | None = ""
    ) -> dict[str, Any]:
        """A client-server call as `as_user`. Raises MatrixCallError for a non-2xx answer."""
        assert self._http is not None, "open() first"
        auth = self.tokens[as_user] if token == "" else token
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        async with self._http.request(method, self.base_url + API + path, json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise MatrixCallError(resp.status, data)
            return data

    async def _send(self, room_id: str, sender: str, event_type: str, content: dict[str, Any]) -> str:
        txn = secrets.token_hex(8)
        return (await self.call("PUT", f"/rooms/{_q(room_id)}/send/{event_type}/{txn}", sender, content))["event_id"]

    async def send_message(self, room_id: str, sender: str, body: str) -> str:
        return await self._send(room_id, sender, "m.room.message", {"msgtype": "m.text", "body": body})

    async def react(self, room_id: str, sender: str, target_event_id: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target_event_id, "key": key}}
        return await self._send(room_id, sender, "m.reaction", content)

    async def redact(self, room_id: str, sender: str, event_id: str) -> str:
        path = f"/rooms/{_q(room_id)}/redact/{_q(event_id)}/{secrets.token_hex(8)}"
        return (await self.call("PUT", path, sender, {}))["event_id"]

    # -- what the bot did, as alice sees it ----------------------------------------------
    def sent(self, event_type: str | None = None, room_id: str | None = None) -> list[dict[str, Any]]:
        return [
            r.payload
            for r in self.records
            if (event_type is None or r.payload["type"] == event_type)
            and (room_id is None or r.payload["room_id"] == room_id)
        ]

    def recorded(self, kind: str | None = None) -> list[Record]:
        return [r for r in self.records if kind is None or r.kind == kind]

    async def wait_for(self, predicate: Callable[[list[Record]], bool], *, timeout: float = 30.0) -> list[Record]:
        """Wait until `predicate(records)` holds; re-raises what stopped alice's observer."""

        def done() -> bool:
            if self._observer is not None and self._observer.done() and not self._observer.cancelled():
                self._observer.result()  # raises the observer's error here, not as a timeout
            return predicate(self.records)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), timeout)
        return self.records

    async def _restart_observer(self) -> None:
        if self._observer is not None:
            self._observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._observer
        # a filter naming this test's rooms: never answered from another test's cached sync
        flt = {
            "room": {"rooms": list(self.rooms), "timeline": {"limit": OBSERVER_LIMIT}},
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        }
        filter_id = (await self.call("POST", f"/user/{_q(self.alice)}/filter", self.alice, flt))["filter_id"]
        first = await self._sync(filter_id, None, 0)
        self._observer = asyncio.create_task(self._observe(filter_id, first), name="alice-observer")

    async def _observe(self, filter_id: str, since: str) -> None:
        try:
            while True:
                since = await self._sync(filter_id, since, 30_000)
        finally:  # wake waiters so they see why the observer stopped
            async with self._changed:
                self._changed.notify_all()

    async def _sync(self, filter_id: str, since: str | None, timeout_ms: int) -> str:
        query = {"filter": filter_id, "timeout": str(timeout_ms)} | ({"since": since} if since else {})
        body = await self.call("GET", "/sync?" + urllib.parse.urlencode(query), self.alice)
        for room_id, room in body.get("rooms", {}).get("join", {}).items():
            if room.get("timeline", {}).get("limited") and since is not None:
                raise AssertionError(f"observer timeline limited in {room_id}: raise OBSERVER_LIMIT")
            for event in room.get("timeline", {}).get("events", []):
                if event["event_id"] in self._seen:
                    continue
                self._seen.add(event["event_id"])
                event = {**event, "room_id": room_id}
                self.events.append(event)
                if event["sender"] == self.bot_user:
                    self.records.append(
                        Record(
                            "room_send",
                            {
                                "room_id": room_id,
                                "type": event["type"],
                                "content": event.get("content", {}),
                                "event_id": event["event_id"],
                            },
                        )
                    )
        async with self._changed:
            self._changed.notify_all()
        return str(body["next_batch"])


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
