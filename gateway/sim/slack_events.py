"""The users' side of the Slack simulator: the Events API envelopes a test sends (messages,
mentions, edits, deletions), shaped as Slack documents them. A mixin of `SlackSimulator`, whose
ids, clock and edge switches it reads."""

from __future__ import annotations

import itertools
import time
from typing import Any

from chatstate.gateway.sim.slack_edges import SlackEdges


class SlackEvents:
    """Builds `event_callback` envelopes for one workspace."""

    team_id: str
    bot_user_id: str
    edges: SlackEdges
    _epoch: int
    _ts: itertools.count[int]
    _event_ids: itertools.count[int]

    def hit(self, behaviour: str) -> None:  # SimulatorServer's: counts a played edge behaviour
        raise NotImplementedError

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
        event: dict[str, Any] = {
            "type": event_type,
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
        }
        if event_type == "message":
            event["channel_type"] = channel_type
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
            if event_type == "message" and self.edges.thread_broadcast:
                event["subtype"] = "thread_broadcast"  # "also send to #channel" ticked
                self.hit("thread_broadcast")
        if parent_user_id is not None:
            event["parent_user_id"] = parent_user_id
        return self.envelope(event)

    def mention_event(self, text: str, **kw: Any) -> dict[str, Any]:
        """An `app_mention` envelope whose text starts with `<@bot>`."""
        return self.message_event(f"<@{self.bot_user_id}> {text}", event_type="app_mention", **kw)

    def envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0SIM",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._event_ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}],
        }

    def edit_event(self, original: dict[str, Any], text: str) -> dict[str, Any]:
        """The `message_changed` envelope Slack sends when `original` (an envelope) is edited."""
        before = original["event"]
        after = {k: v for k, v in before.items() if k not in ("event_ts", "channel_type", "subtype")}
        after.update(text=text, edited={"user": before.get("user"), "ts": self.next_ts()})
        after["type"] = "message"
        return self._hidden("message_changed", before, before.get("channel_type", "channel"), message=after)

    def delete_event(self, original: dict[str, Any]) -> dict[str, Any]:
        """The `message_deleted` envelope Slack sends when the message of `original` is deleted
        (`original` may be an envelope or a message the bot posted)."""
        before = original.get("event", original)
        return self._hidden("message_deleted", before, "channel", deleted_ts=before["ts"])

    def _hidden(self, subtype: str, before: dict[str, Any], channel_type: str, **change: Any) -> dict[str, Any]:
        """The envelope of a hidden `message` event: `subtype` and `change` say what became of the
        message `before` (an edit or a deletion), stamped with a new ts."""
        ts = self.next_ts()
        return self.envelope(
            {
                "type": "message",
                "subtype": subtype,
                "hidden": True,
                "channel": before["channel"],
                "channel_type": channel_type,
                "ts": ts,
                "event_ts": ts,
                **change,
                "previous_message": dict(before),
            }
        )
