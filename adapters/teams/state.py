"""What the Teams adapter keeps: its rows of DESIGN.md §3's table, and nothing else.

| namespace                 | key                               | value                           | ttl / max      |
|---------------------------|-----------------------------------|---------------------------------|----------------|
| `msteams.sent-messages`   | `{conversation_id}:{activity_id}` | `{sent_at}`                     | 24 h / 1,000   |
| `msteams.activities`      | `{conversation_id}:{activity_id}` | the gate's claim (`sdk.InboundGate`) | 1 h / 10,000 |
| `msteams.sent-requesters` | the user's id                     | `{b: {bucket: count}}` (`sdk.UserQuota`) | 24 h / 5,000 |

Before, the sent ids were a process-global dict: after a restart a reply to the bot's message
looked like a stranger's (no @mention) and was ignored. `AdapterState(legacy=True)` is that dict,
for the before/after demo. No Bot Framework import here: another Teams SDK leaves this as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatstate.gateway.sdk import AdapterState, Clock, StateSpec, Writes, ingress, now_ms

if TYPE_CHECKING:
    from chatstate.adapters.teams.config import TeamsSettings

NAMESPACE = "msteams.sent-messages"
SENT_TTL_MS = 24 * 60 * 60 * 1000  # 24 h: a reply to an older bot message needs a mention again
SENT_MAX_ENTRIES = 1_000  # the reference system's cap; the oldest send is forgotten first
SENT_PER_USER = 100  # fairness quota: live sent rows made in answer to one user (10% of the cap)
REQUESTERS_MAX_ENTRIES = 5_000  # users counted; evicting one only forgets their count
# a claimed, unanswered activity may be taken over after this: longer than a turn (sends retry
# for at most ~3 x 10 s), shorter than the channel's redelivery window
ACTIVITY_LEASE_MS = 20 * 1000
ID_HASH_CHARS = 200  # a conversation, activity or user id longer than this is keyed by its SHA-256
THREAD_MARKER = ";messageid="  # Teams channel thread: "<channel conversation id>;messageid=<root>"

SENT_MESSAGES = StateSpec(NAMESPACE, ttl_ms=SENT_TTL_MS, max_entries=SENT_MAX_ENTRIES)
# a done activity id is remembered 1 h; ~3 activities a second for the hour
ACTIVITIES = StateSpec("msteams.activities", ttl_ms=60 * 60 * 1000, max_entries=10_000)


def spec_from_config(config: TeamsSettings) -> StateSpec:
    """The sent-message spec with `sent_ttl_ms` / `sent_max_entries` (tests use small ones)."""
    return StateSpec(NAMESPACE, ttl_ms=config.sent_ttl_ms, max_entries=config.sent_max_entries)


def requesters_spec(config: TeamsSettings) -> StateSpec:
    """The quota's rows live as long as the sent rows they count."""
    return StateSpec("msteams.sent-requesters", ttl_ms=config.sent_ttl_ms, max_entries=REQUESTERS_MAX_ENTRIES)


def sent_key(conversation_id: str, activity_id: str) -> str:
    """`{conversation_id}:{activity_id}`, with the conversation id of the channel, not the thread.

    Teams names a channel thread `<channel>;messageid=<root>`; the bot's root post is sent to the
    channel and a reply to it arrives on the thread. Keying both by the channel id keeps the
    reference system's bug (state under a child id) out. Ids past ID_HASH_CHARS are hashed, so
    any length the far end sends stays a valid key (real ids are far shorter).
    """
    channel = conversation_id.split(THREAD_MARKER, 1)[0]
    return f"{ingress.short_id(channel, limit=ID_HASH_CHARS)}:{ingress.short_id(activity_id, limit=ID_HASH_CHARS)}"


def sent_value(sent_at_ms: int) -> dict[str, int]:
    """The stored value: when the Bot Connector accepted the activity (ms since epoch)."""
    return {"sent_at": sent_at_ms}


@dataclass(frozen=True)
class SentMessages:
    """Which activities did this bot send? The reference system recorded in each send helper and
    one of them forgot; here `record` is the only writer, called where every botbuilder send path
    ends (platform.py), after the Bot Connector returned the id."""

    state: AdapterState
    clock: Clock = now_ms

    def record(self, writes: Writes, conversation_id: str, activity_id: str | None) -> None:
        """Stage "the bot sent `activity_id`" into the turn's writes (committed with its done mark)."""
        if activity_id:
            writes.put(self.state, sent_key(conversation_id, activity_id), sent_value(self.clock()))

    async def forget(self, writes: Writes, conversation_id: str, activity_id: str) -> bool:
        """Stage the removal of a bot message Teams deleted (`messageDelete`); True if it was ours."""
        ours = await self.sent_by_bot(conversation_id, activity_id)
        if ours:
            writes.delete(self.state, sent_key(conversation_id, activity_id))
        return ours

    async def sent_by_bot(self, conversation_id: str, activity_id: str | None) -> bool:
        """True if the bot sent `activity_id` in this conversation within the TTL. A hit keeps
        the stored expiry: the 24 h window counts from the send, never from a read."""
        if not activity_id:
            return False
        return await self.state.get_entry(sent_key(conversation_id, activity_id)) is not None
