"""Matrix I/O through matrix-nio: log in with an access token, parse commands, send events.

Each event the bot sends has a transaction id derived from what it answers (`txn_id("prompt",
request_event_id)`, ...), so a retried send is recognisably the same send: hygiene, not our
exactly-once (the homeserver forgets txn ids after a while and never shares them across
devices); the gate's claim (`sdk.InboundGate`) decides whether an event is acted on at all. All
the bot says because of an event references it (`m.reference`), so after a takeover the bot can
ask the homeserver whether it already answered (`said_about`). Refusals raise `MatrixError`
(`errcode`, and `retry_after_ms` for `M_LIMIT_EXCEEDED`); nio retries a 429 (honouring
`retry_after_ms`) only `MAX_429_RETRIES` times, so one throttled event cannot hold the loop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import ClientResponse
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedRoomsResponse,
    JoinResponse,
    MessageDirection,
    RoomGetEventResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
    WhoamiResponse,
)
from nio.api import RelationshipType

from chatstate.gateway.sdk import DECISIONS, Approval, CredentialRefused, Decision

EMOJI: Mapping[Decision, str] = {"allow-once": "✅", "allow-always": "♾️", "deny": "❌"}
LABEL: Mapping[Decision, str] = {"allow-once": "allow once", "allow-always": "allow always", "deny": "deny"}
OUTCOME: Mapping[Decision, str] = {"allow-once": "approved once", "allow-always": "approved always", "deny": "denied"}
_VS16 = "\ufe0f"  # clients send ♾ with or without the emoji presentation selector
_BY_EMOJI: Mapping[str, Decision] = {e.replace(_VS16, ""): d for d, e in EMOJI.items()}
APPROVAL_FIELD = "org.chatstate.approval"  # namespaced custom content on the prompt event
EXPIRED_TEXT = "this approval has expired"
REFUSED_TEXT = "too many pending approvals"  # start of the answer to a request over the quota
COMMANDS: Mapping[str, tuple[Decision, ...]] = {
    "!approve": DECISIONS,  # allow once, allow always, deny
    "!approve-once": ("allow-once", "deny"),  # no "always" for this action
}
EVENT_ID = re.compile(r"\$[!-~]{1,254}")  # the spec's event id: "$", opaque printable ASCII, 255 bytes at most
MAX_ACTION_CHARS = 2_000  # a longer `!approve` action is refused: its prompt and row must stay far below 64 KiB
MAX_429_RETRIES = 2  # nio sleeps retry_after_ms and retries a 429 this often, then we see it
REFERENCE = RelationshipType.reference.value  # what the bot says points at the event it answers
ANNOTATION = RelationshipType.annotation.value  # a reaction
REPLACE = RelationshipType.replacement.value  # an edit of an earlier message
R = TypeVar("R")


class MatrixError(RuntimeError):
    """The homeserver refused or failed a call (nio returned an ErrorResponse)."""

    def __init__(self, message: str, *, errcode: str | None = None, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.errcode, self.retry_after_ms = errcode, retry_after_ms

    @classmethod
    def of(cls, what: str, resp: object) -> MatrixError:
        """Build from a nio ErrorResponse (or anything else nio returned)."""
        errcode, retry = getattr(resp, "status_code", None), getattr(resp, "retry_after_ms", None)
        return cls(
            f"{what} failed: {errcode or ''} {getattr(resp, 'message', resp)}".replace("  ", " "),
            errcode=errcode if isinstance(errcode, str) else None,
            retry_after_ms=retry if isinstance(retry, int) else None,
        )


def _ok(what: str, resp: object, expected: type[R]) -> R:
    """`resp` if nio answered with `expected`, else MatrixError with the homeserver's reason."""
    if not isinstance(resp, expected):
        raise MatrixError.of(what, resp)
    return resp


def parse_command(body: str) -> tuple[str, tuple[Decision, ...]] | None:
    """`(action, decisions)` of an approval request (`!approve <action>`), else None."""
    word, _, rest = body.strip().partition(" ")
    decisions, action = COMMANDS.get(word), " ".join(rest.split())
    return (action, decisions) if decisions is not None and action else None


def is_event_id(value: object) -> bool:
    """True for a string of an event id's shape: a reaction naming anything else names no event,
    and is ignored before any lookup (a lookup the homeserver refuses would be retried)."""
    return isinstance(value, str) and EVENT_ID.fullmatch(value) is not None


def is_edit(event: Mapping[str, Any]) -> bool:
    """True for an edit (`m.replace`): its message was answered, or not, when it was sent."""
    content = event.get("content")
    relates = content.get("m.relates_to") if isinstance(content, dict) else None
    return isinstance(relates, dict) and relates.get("rel_type") == REPLACE


def decision_for(key: str) -> Decision | None:
    """The decision a reaction key stands for, or None for any other emoji."""
    return _BY_EMOJI.get(key.replace(_VS16, ""))


def txn_id(kind: str, source_event_id: str) -> str:
    """A stable transaction id for what the bot sends because of `source_event_id`."""
    return f"chatstate.{kind}." + hashlib.sha256(f"{kind}\n{source_event_id}".encode()).hexdigest()[:32]


def approval_id(room_id: str, request_event_id: str) -> str:
    """The approval id of a request message: stable, so a replayed request reopens nothing."""
    return "matrix-" + hashlib.sha256(f"{room_id}\n{request_event_id}".encode()).hexdigest()[:24]


def notice(body: str, cause: str, **extra: Any) -> dict[str, Any]:
    """An m.notice the bot sends because of event `cause`, which it references."""
    return {"msgtype": "m.notice", "body": body, "m.relates_to": {"rel_type": REFERENCE, "event_id": cause}, **extra}


def prompt_content(approval: Approval, cause: str) -> dict[str, Any]:
    """The m.room.message of a prompt; carries the approval id and expiry for later lookups."""
    choices = ", ".join(f"{EMOJI[d]} {LABEL[d]}" for d in approval.decisions)
    body = f"Approval needed: {approval.action} (requested by {approval.requested_by}). React with {choices}."
    return notice(body, cause, **{APPROVAL_FIELD: {"id": approval.id, "expires_at": approval.expires_at}})


def outcome_content(approval: Approval, decision: Decision, approver: str, cause: str) -> dict[str, Any]:
    body = f"{EMOJI[decision]} {approval.action}: {OUTCOME[decision]} by {approver}"
    return notice(body, cause, **{APPROVAL_FIELD: {"id": approval.id, "decision": decision}})


def refused_content(requester: str, cap: int, cause: str) -> dict[str, Any]:
    return notice(f"{REFUSED_TEXT} for {requester} ({cap} open); wait until one is answered or expires", cause)


def too_long_content(length: int, cause: str) -> dict[str, Any]:
    return notice(f"this action is too long ({length} characters; at most {MAX_ACTION_CHARS})", cause)


def is_redacted(event: Mapping[str, Any]) -> bool:
    """True for an event the homeserver has redacted (content stripped, `redacted_because`)."""
    return bool(event.get("unsigned", {}).get("redacted_because")) or not event.get("content")


def approval_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """The approval fields (`id`, `expires_at` or `decision`) of a prompt or outcome, else {}."""
    meta = event.get("content", {}).get(APPROVAL_FIELD)
    return meta if isinstance(meta, dict) else {}


def prompt_expiry(event: Mapping[str, Any], bot_user: str) -> int | None:
    """`expires_at` of a prompt event the bot sent, or None for any other event."""
    expires_at = approval_of(event).get("expires_at") if event.get("sender") == bot_user else None
    return expires_at if isinstance(expires_at, int) else None


# The fields the spec's ClientEvent requires. nio raises on some events without them (KeyError on
# a message with no `content`), and that fails the whole /sync it came in, again on each retry.
_CLIENT_EVENT: tuple[tuple[str, type], ...] = (
    ("event_id", str), ("type", str), ("sender", str), ("origin_server_ts", int), ("content", dict),
)  # fmt: skip


def well_formed(event: object) -> bool:
    """True for an event with every field the spec's ClientEvent requires, of its type."""
    return isinstance(event, dict) and all(isinstance(event.get(k), t) for k, t in _CLIENT_EVENT)


def _event_lists(body: dict[str, Any]) -> list[list[Any]]:
    """The event lists of a /sync body (joined and left rooms' timelines and state; one left out
    is empty, as a server that omits empty lists means) or of a /messages or /relations page."""
    found = [body["chunk"]] if isinstance(body.get("chunk"), list) else []
    rooms = body.get("rooms")
    for section in (rooms.get("join"), rooms.get("leave")) if isinstance(rooms, dict) else ():
        for room in section.values() if isinstance(section, dict) else ():
            for part in (room.get(p) for p in ("timeline", "state")) if isinstance(room, dict) else ():
                if isinstance(part, dict) and isinstance(part.setdefault("events", []), list):
                    found.append(part["events"])
    return found


def nulls_absent(value: Any) -> Any:
    """`value` with every null member of an object left out: the spec lets a server omit an
    optional field, some send null instead, and nio's schemas refuse the whole answer for it."""
    if isinstance(value, dict):
        return {k: nulls_absent(v) for k, v in value.items() if v is not None}
    return [nulls_absent(v) for v in value] if isinstance(value, list) else value


class _Client(AsyncClient):
    """nio's client, reading null as absent and dropping events without a required field."""

    malformed = 0  # events dropped so far (shown in /healthz as `events_malformed`)

    async def parse_body(self, transport_response: ClientResponse) -> dict[Any, Any]:
        body = nulls_absent(await super().parse_body(transport_response))
        for events in _event_lists(body) if isinstance(body, dict) else ():
            kept = [e for e in events if well_formed(e)]
            self.malformed += len(events) - len(kept)
            events[:] = kept
        return body


class MatrixIO:
    """The bot's nio client: connect, send and fetch; raises MatrixError on refusals."""

    def __init__(self, homeserver: str, access_token: str) -> None:
        config = AsyncClientConfig(
            encryption_enabled=False,
            store_sync_tokens=False,  # our store keeps the token
            request_timeout=30.0,  # one HTTP call to the homeserver, long-polls excluded
            max_timeouts=3,  # nio retries a timed-out call this often, then raises
            max_limit_exceeded=MAX_429_RETRIES,
        )
        self.client = _Client(homeserver, config=config)
        self.client.access_token = access_token
        self.user_id = self.device_id = self.filter_id = ""
        self.rooms: list[str] = []
        self.malformed_syncs = 0  # answered 200 with what nio could not read (e.g. no `next_batch`)

    async def connect(self) -> str:
        """Check the token with /account/whoami, learn the joined rooms; returns the user id."""
        answer = await self.client.whoami()
        if getattr(answer, "status_code", None) in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
            raise CredentialRefused("matrix", "access_token", str(MatrixError.of("whoami", answer)))  # e.g. revoked
        who = _ok("whoami", answer, WhoamiResponse)
        self.client.restore_login(who.user_id, who.device_id or "", self.client.access_token)
        joined = _ok("joined_rooms", await self.client.joined_rooms(), JoinedRoomsResponse)
        self.user_id, self.device_id, self.rooms = who.user_id, who.device_id or "", list(joined.rooms)
        return self.user_id

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], *, txn: str) -> str:
        """Send one event with `room_send`; returns its event id (the first one for a repeated txn)."""
        resp = await self.client.room_send(room_id, event_type, content, tx_id=txn)
        return _ok(f"room_send {event_type}", resp, RoomSendResponse).event_id

    async def say(
        self, room_id: str, content: dict[str, Any], *, kind: str, cause: str, event_type: str = "m.room.message"
    ) -> str:
        """Send `content` because of event `cause`, as the `kind` send for it (its txn id)."""
        return await self.send(room_id, event_type, content, txn=txn_id(kind, cause))

    async def fetch_event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        """The event's JSON as the homeserver has it, or None when it has no such event."""
        resp = await self.client.room_get_event(room_id, event_id)
        if isinstance(resp, RoomGetEventResponse):
            return resp.event.source
        if getattr(resp, "status_code", None) == "M_NOT_FOUND":
            return None
        raise MatrixError.of("get event", resp)

    async def said_about(self, room_id: str, event_id: str, rel_type: str = REFERENCE) -> list[dict[str, Any]]:
        """The bot's own events relating to `event_id` by `rel_type` (its answers to it, or with
        ANNOTATION its reactions), as the homeserver has them. Raises MatrixError."""
        related = self.client.room_get_event_relations(room_id, event_id, RelationshipType(rel_type))
        try:
            return [e.source async for e in related if e.sender == self.user_id]
        except AttributeError:  # nio reads a refused page as a page and trips over it
            raise MatrixError(f"relations of {event_id} failed") from None

    async def upload_filter(self, *, timeline_limit: int, nonce: str) -> None:
        """Upload the filter `sync` uses (the bot reads timelines only: lazy-loaded members, no
        presence or account data). `nonce` makes it a new filter (see sync.py)."""
        none = {"not_types": ["*"]}
        room: dict[str, Any] = {"timeline": {"limit": timeline_limit}, "state": {"lazy_load_members": True}}
        room |= {"account_data": none, "ephemeral": none, "org.chatstate.start": nonce}  # unknown keys are kept
        resp = await self.client.upload_filter(presence=none, account_data=none, room=room)
        self.filter_id = _ok("upload filter", resp, UploadFilterResponse).filter_id

    async def sync(self, *, since: str | None, timeout_ms: int) -> SyncResponse:
        resp = await self.client.sync(timeout=timeout_ms, since=since, sync_filter=self.filter_id)
        self.malformed_syncs += not isinstance(resp, SyncResponse) and resp.transport_response.status == 200
        return _ok("sync", resp, SyncResponse)

    async def messages_before(self, room_id: str, start: str, *, to: str | None, limit: int) -> RoomMessagesResponse:
        """One page of /messages backwards from `start` (down to `to`, when given)."""
        resp = await self.client.room_messages(room_id, start, end=to, direction=MessageDirection.back, limit=limit)
        return _ok("messages", resp, RoomMessagesResponse)

    async def join(self, room_id: str) -> None:
        _ok("join", await self.client.join(room_id), JoinResponse)
        if room_id not in self.rooms:
            self.rooms.append(room_id)

    async def close(self) -> None:
        await self.client.close()
