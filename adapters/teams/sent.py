"""Which activities did this bot send? One recording function, one question.

The reference system recorded in each send helper and one of them forgot. Here
`SentMessages.record` is the only writer, and `adapters.teams.connector.TeamsCloudAdapter`
calls it from the two adapter methods every botbuilder send path ends in (`send_activities`
and `update_activity`), after the Bot Connector returned the id and before the caller's
`await` returns. (botbuilder-python's `TurnContext.on_send_activities` hooks run *before* the
send and never see the returned ids, so they cannot be the recording point.)
"""

from __future__ import annotations

from collections.abc import Sequence

from chatstate.adapters.common import AdapterState, Clock, now_ms
from chatstate.adapters.teams.state import sent_key, sent_value


class SentMessages:
    """Which activities did this bot send? Backed by the `msteams.sent-messages` state."""

    def __init__(self, state: AdapterState, *, clock: Clock = now_ms) -> None:
        self.state = state
        self._clock = clock

    async def record(self, conversation_id: str, activity_ids: Sequence[str | None]) -> None:
        """Remember each id the Bot Connector returned in `conversation_id`; the one recording
        function. Returns once the rows are durable (or queued, if the store is degraded)."""
        sent_at = self._clock()
        for activity_id in activity_ids:
            if activity_id:
                await self.state.record(sent_key(conversation_id, activity_id), sent_value(sent_at))

    async def forget(self, conversation_id: str, activity_id: str) -> bool:
        """Drop a bot message Teams deleted (`messageDelete`); True if it was ours."""
        return await self.state.forget(sent_key(conversation_id, activity_id))

    async def sent_by_bot(self, conversation_id: str, activity_id: str | None) -> bool:
        """True if the bot sent `activity_id` in this conversation within the TTL.

        A hit keeps the stored expiry: the 24 h window counts from the send, never from a read.
        """
        if not activity_id:
            return False
        return await self.state.get_entry(sent_key(conversation_id, activity_id)) is not None
