"""The homeserver simulator's /sync and /messages answers, shaped the way Synapse shapes them.

Kept apart from the endpoints (`matrix.py`) because this is where the real server's behaviour
that broke the adapter lives:
- a filter's `room.timeline.limit` (default 10 without a filter, like Synapse): a room with more
  new events answers the newest `limit`, `limited: true`, and a `prev_batch` from which
  `/messages?dir=b` pages back (to `to`, when given);
- invites: an `m.room.member` invite of the bot in the window appears under `rooms.invite`.
Positions: the stream is one list; token `s<n>` means "after the first n events".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

DEFAULT_TIMELINE_LIMIT = 10  # Synapse's timeline limit for a /sync without a filter


def position(token: str) -> int | None:
    """The stream position of `s<n>`, or None for anything else."""
    return int(token[1:]) if token.startswith("s") and token[1:].isdigit() else None


def timeline_limit(flt: dict[str, Any] | None) -> int:
    limit = (flt or {}).get("room", {}).get("timeline", {}).get("limit")
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_TIMELINE_LIMIT


def client_event(event: dict[str, Any]) -> dict[str, Any]:
    """Sync timelines carry events without `room_id` (the room is the enclosing key)."""
    out = copy.deepcopy(event)
    out.pop("room_id", None)
    return out


def sync_body(
    stream: list[dict[str, Any]],
    *,
    since: int | None,
    joined: dict[str, int],
    bot_user: str,
    limit: int,
    room_state: Callable[[str], list[dict[str, Any]]],
) -> dict[str, Any]:
    """The /sync answer for events after `since` (None: an initial sync). `joined` maps each
    joined room to the position the bot joined at; `room_state(room_id)` gives its state."""
    start = since or 0
    window = list(enumerate(stream))[start:]
    join: dict[str, Any] = {}
    for room_id, joined_at in joined.items():
        indexed = [(i, e) for i, e in window if e["room_id"] == room_id and i >= joined_at]
        if since is not None and not indexed:
            continue
        shown = indexed[-limit:]
        first = shown[0][0] if shown else len(stream)
        join[room_id] = {
            "timeline": {
                "events": [client_event(e) for _, e in shown],
                "limited": len(indexed) > limit,
                "prev_batch": f"s{first}",
            },
            "state": {"events": room_state(room_id) if since is None else []},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "unread_notifications": {"highlight_count": 0, "notification_count": 0},
        }
    invite: dict[str, Any] = {}
    for _, e in window:
        if (
            e["type"] == "m.room.member"
            and e.get("state_key") == bot_user
            and e["content"].get("membership") == "invite"
            and e["room_id"] not in joined
        ):
            stripped = {k: e[k] for k in ("type", "state_key", "sender", "content")}
            invite[e["room_id"]] = {"invite_state": {"events": [stripped]}}
    return {
        "next_batch": f"s{len(stream)}",
        "rooms": {"join": join, "invite": invite, "leave": {}},
        "presence": {"events": []},
        "account_data": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }


def messages_body(
    stream: list[dict[str, Any]], room_id: str, *, start: int, stop: int | None, limit: int
) -> dict[str, Any]:
    """`/messages?dir=b`: the room's events before `start` (and at or after `stop`), newest
    first; `end` is where the next page starts, absent when there is nothing older."""
    chunk: list[dict[str, Any]] = []
    end = None
    for i in range(min(start, len(stream)) - 1, (stop or 0) - 1, -1):
        if stream[i]["room_id"] != room_id:
            continue
        if len(chunk) == limit:
            break
        chunk.append(copy.deepcopy(stream[i]))
        end = i
    body: dict[str, Any] = {"chunk": chunk, "start": f"s{start}"}
    if end is not None:
        body["end"] = f"s{end}"
    return body


def room_state(room_id: str, bot_user: str, members: list[str]) -> list[dict[str, Any]]:
    """An initial sync's state for a room: its creation and everyone's membership."""
    ts = 1_700_000_000_000
    creator = members[0] if members else bot_user
    state = [
        {
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "event_id": f"$create-{room_id}",
            "origin_server_ts": ts,
            "content": {"creator": creator, "room_version": "10"},
        }
    ]
    for i, user in enumerate([bot_user, *members]):
        state.append(
            {
                "type": "m.room.member",
                "state_key": user,
                "sender": user,
                "event_id": f"$member-{i}-{room_id}",
                "origin_server_ts": ts + i,
                "content": {"membership": "join", "displayname": user[1:].split(":")[0]},
            }
        )
    return state
