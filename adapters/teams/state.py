"""What the Teams adapter keeps: the ids of activities the bot sent (DESIGN.md §3), and the
one question asked of them (`SentMessages`, from sent.py before issue 18).

Before: a process-global dict `{conversation_id:activity_id -> sent_at}` with a 24 h TTL and a
1,000 cap, so after a restart a reply to the bot's earlier message looked like a stranger's
message in a channel and was ignored for lack of an @mention. After: the same rows in the keyed
store; `AdapterState(legacy=True)` is that dict, kept for the before/after demo.

Copy this module when migrating another "did the bot send this?" cache.

## SentMessages

Which activities did this bot send? One recording function, one question.

The reference system recorded in each send helper and one of them forgot. Here
`SentMessages.record` is the only writer, and `adapters.teams.platform.TeamsCloudAdapter`
calls it from the two adapter methods every botbuilder send path ends in (`send_activities`
and `update_activity`), after the Bot Connector returned the id and before the caller's
`await` returns. (botbuilder-python's `TurnContext.on_send_activities` hooks run *before* the
send and never see the returned ids, so they cannot be the recording point.)

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.gateway.claims import ClaimLedger, RequesterQuota
from chatstate.gateway.clock import Clock, now_ms
from chatstate.gateway.ingress import short_id

if TYPE_CHECKING:
    from chatstate.adapters.teams.config import TeamsSettings

NAMESPACE = "msteams.sent-messages"
SENT_TTL_MS = 24 * 60 * 60 * 1000  # 24 h: a reply to an older bot message needs a mention again
SENT_MAX_ENTRIES = 1_000  # the reference system's cap; the oldest send is forgotten first
ID_HASH_CHARS = 200  # a conversation or activity id longer than this is keyed by its SHA-256
THREAD_MARKER = ";messageid="  # Teams channel thread: "<channel conversation id>;messageid=<root>"

SENT_PER_USER = 100  # fairness quota: live sent rows made in answer to one user (10% of the cap)
REQUESTERS_NAMESPACE = "msteams.sent-requesters"  # the quota's counts, key = the user's id
REQUESTERS_MAX_ENTRIES = 5_000  # users counted; evicting one only forgets their count

SENT_MESSAGES = StateSpec(NAMESPACE, ttl_ms=SENT_TTL_MS, max_entries=SENT_MAX_ENTRIES)

# Exactly-once per inbound activity: the channel sends an activity again, same id, when the
# bot was slow to answer (or the delivery failed); the second copy must not be answered.
ACTIVITIES_NAMESPACE = "msteams.activities"
ACTIVITY_TTL_MS = 60 * 60 * 1000  # a done activity id is remembered 1 h
ACTIVITY_MAX_ENTRIES = 10_000  # ~3 activities a second for the hour
# a claimed-but-unanswered activity may be retaken after this: longer than a turn (sends retry
# for at most ~3 x 10 s), shorter than the channel's redelivery window, so the activity of a
# turn killed midway is answered on a later redelivery instead of lost
ACTIVITY_LEASE_MS = 20 * 1000
ANSWERED_TYPES = ("message", "messageReaction")  # the activity types the bot may answer


ACTIVITIES = StateSpec(ACTIVITIES_NAMESPACE, ttl_ms=ACTIVITY_TTL_MS, max_entries=ACTIVITY_MAX_ENTRIES)


def open_activity_claims(config: TeamsSettings, *, legacy: bool) -> ClaimLedger:
    """One claim per inbound activity (`msteams.activities`), leased `activity_lease_ms`."""
    return ClaimLedger(AdapterState(ACTIVITIES, legacy=legacy), lease_ms=config.activity_lease_ms)


def activity_key(conversation_id: str, activity_id: str) -> str:
    """`{conversation_id}:{activity_id}`, the channel's conversation id as in `sent_key`."""
    return sent_key(conversation_id, activity_id)


def spec_from_config(config: TeamsSettings) -> StateSpec:
    """Return the spec with the `sent_ttl_ms` / `sent_max_entries` settings (tests use small ones)."""
    return StateSpec(NAMESPACE, ttl_ms=config.sent_ttl_ms, max_entries=config.sent_max_entries)


def open_sent_messages(config: TeamsSettings, *, legacy: bool) -> AdapterState:
    """The sent-message cache: keyed store behind memory, or memory only when `legacy`."""
    return AdapterState(spec_from_config(config), legacy=legacy)


def open_requester_quota(config: TeamsSettings, *, legacy: bool) -> RequesterQuota:
    """How many live sent rows one user's messages may cause (`sent_per_user`, default 100), so
    one user's mention spam cannot evict the rows other users' replies rely on (issue 15)."""
    ttl = config.sent_ttl_ms
    state = AdapterState(StateSpec(REQUESTERS_NAMESPACE, ttl_ms=ttl, max_entries=REQUESTERS_MAX_ENTRIES), legacy=legacy)
    return RequesterQuota(state, per_user=config.sent_per_user, ttl_ms=ttl)


def sent_key(conversation_id: str, activity_id: str) -> str:
    """`{conversation_id}:{activity_id}`, with the conversation id of the channel, not the thread.

    Teams names a channel thread `<channel>;messageid=<root>`; the bot's root post is sent to the
    channel and a reply to it arrives on the thread. Keying both by the channel id keeps the
    reference system's bug (state under a child id) out.
    """
    channel = conversation_id.split(THREAD_MARKER, 1)[0]
    # Ids past ID_HASH_CHARS are hashed (issue 15): any length the far end sends stays a valid
    # key, and the same id always maps to the same key. Real ids are far shorter.
    return f"{short_id(channel, limit=ID_HASH_CHARS)}:{short_id(activity_id, limit=ID_HASH_CHARS)}"


def sent_value(sent_at_ms: int) -> dict[str, int]:
    """The stored value: when the Bot Connector accepted the activity (ms since epoch)."""
    return {"sent_at": sent_at_ms}


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
