"""Matrix I/O through matrix-nio: log in with an access token, parse commands, send events.

Every event the bot sends carries a transaction id derived from the event that caused it
(`txn_id("prompt", request_event_id)`, ...). The homeserver answers a repeated txn id with the
first event instead of sending a new one (client-server spec, "Transaction identifiers"), so
when a batch of events is handled again after a crash, nothing the bot already said is said
twice. That, plus the persisted sync token, makes replay safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedRoomsResponse,
    RoomGetEventResponse,
    RoomSendResponse,
    WhoamiResponse,
)

from chatstate.gateway.approvals import DECISIONS, Approval, Decision

EMOJI: Mapping[Decision, str] = {"allow-once": "✅", "allow-always": "♾️", "deny": "❌"}
LABEL: Mapping[Decision, str] = {"allow-once": "allow once", "allow-always": "allow always", "deny": "deny"}
OUTCOME: Mapping[Decision, str] = {"allow-once": "approved once", "allow-always": "approved always", "deny": "denied"}
_VS16 = "\ufe0f"  # clients send ♾ with or without the emoji presentation selector
_BY_EMOJI: Mapping[str, Decision] = {e.replace(_VS16, ""): d for d, e in EMOJI.items()}
APPROVAL_FIELD = "org.chatstate.approval"  # namespaced custom content on the prompt event
EXPIRED_TEXT = "this approval has expired"
COMMANDS: Mapping[str, tuple[Decision, ...]] = {
    "!approve": DECISIONS,  # allow once, allow always, deny
    "!approve-once": ("allow-once", "deny"),  # no "always" for this action
}
REQUEST_TIMEOUT_S = 30.0  # one HTTP call to the homeserver, long-polls excluded
MAX_TIMEOUTS = 3  # nio retries a timed-out call this often, then raises


class MatrixError(RuntimeError):
    """The homeserver refused or failed a call (nio returned an ErrorResponse)."""


@dataclass(frozen=True)
class Command:
    """A parsed approval request: `!approve <action>` or `!approve-once <action>`."""

    action: str
    decisions: tuple[Decision, ...]


def parse_command(body: str) -> Command | None:
    """Parse a message body; None if it is not an approval request with an action."""
    word, _, rest = body.strip().partition(" ")
    decisions = COMMANDS.get(word)
    action = " ".join(rest.split())
    if decisions is None or not action:
        return None
    return Command(action, decisions)


def decision_for(key: str) -> Decision | None:
    """The decision a reaction key stands for, or None for any other emoji."""
    return _BY_EMOJI.get(key.replace(_VS16, ""))


def txn_id(kind: str, source_event_id: str) -> str:
    """A stable transaction id for what the bot sends because of `source_event_id`."""
    digest = hashlib.sha256(f"{kind}\n{source_event_id}".encode()).hexdigest()[:32]
    return f"chatstate.{kind}.{digest}"


def approval_id(room_id: str, request_event_id: str) -> str:
    """The approval id of a request message: stable, so a replayed request reopens nothing."""
    return "matrix-" + hashlib.sha256(f"{room_id}\n{request_event_id}".encode()).hexdigest()[:24]


def prompt_content(approval: Approval) -> dict[str, Any]:
    """The m.room.message of a prompt; carries the approval id and expiry for later lookups."""
    choices = ", ".join(f"{EMOJI[d]} {LABEL[d]}" for d in approval.decisions)
    body = f"Approval needed: {approval.action} (requested by {approval.requested_by}). React with {choices}."
    return {
        "msgtype": "m.notice",
        "body": body,
        APPROVAL_FIELD: {"id": approval.id, "expires_at": approval.expires_at},
    }


def outcome_content(approval: Approval, decision: Decision, approver: str) -> dict[str, Any]:
    body = f"{EMOJI[decision]} {approval.action}: {OUTCOME[decision]} by {approver}"
    return {"msgtype": "m.notice", "body": body, APPROVAL_FIELD: {"id": approval.id, "decision": decision}}


def expired_content() -> dict[str, Any]:
    return {"msgtype": "m.notice", "body": EXPIRED_TEXT}


def reaction_content(event_id: str, key: str) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}


def prompt_expiry(event: Mapping[str, Any], bot_user: str) -> int | None:
    """`expires_at` of a prompt event the bot sent, or None for any other event."""
    if event.get("sender") != bot_user:
        return None
    meta = event.get("content", {}).get(APPROVAL_FIELD)
    expires_at = meta.get("expires_at") if isinstance(meta, dict) else None
    return expires_at if isinstance(expires_at, int) else None


class MatrixIO:
    """The bot's nio client: connect, send and fetch; raises MatrixError on refusals."""

    def __init__(self, homeserver: str, access_token: str) -> None:
        config = AsyncClientConfig(
            encryption_enabled=False, store_sync_tokens=False,  # our store keeps the token
            request_timeout=REQUEST_TIMEOUT_S, max_timeouts=MAX_TIMEOUTS,
        )
        self.client = AsyncClient(homeserver, config=config)
        self.client.access_token = access_token
        self.user_id = ""
        self.rooms: list[str] = []

    async def connect(self) -> str:
        """Check the token with /account/whoami, learn the joined rooms; returns the user id."""
        who = await self.client.whoami()
        if not isinstance(who, WhoamiResponse):
            raise MatrixError(f"whoami failed: {getattr(who, 'status_code', '')} {getattr(who, 'message', who)}")
        self.client.restore_login(who.user_id, who.device_id or "", self.client.access_token)
        joined = await self.client.joined_rooms()
        if not isinstance(joined, JoinedRoomsResponse):
            raise MatrixError(f"joined_rooms failed: {getattr(joined, 'message', joined)}")
        self.user_id, self.rooms = who.user_id, list(joined.rooms)
        return self.user_id

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], *, txn: str) -> str:
        """Send one event with `room_send`; returns its event id (the first one for a repeated txn)."""
        resp = await self.client.room_send(room_id, event_type, content, tx_id=txn)
        if not isinstance(resp, RoomSendResponse):
            raise MatrixError(f"room_send {event_type} failed: {getattr(resp, 'message', resp)}")
        return resp.event_id

    async def fetch_event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        """The event's JSON as the homeserver has it, or None when it has no such event."""
        resp = await self.client.room_get_event(room_id, event_id)
        if isinstance(resp, RoomGetEventResponse):
            return resp.event.source
        if getattr(resp, "status_code", None) == "M_NOT_FOUND":
            return None
        raise MatrixError(f"get event failed: {getattr(resp, 'message', resp)}")

    async def close(self) -> None:
        await self.client.close()
