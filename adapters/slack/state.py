"""The state the Slack adapter keeps: its rows of DESIGN.md §3's table, and nothing else.

| namespace                    | key                                               | value                         | ttl / max |
|------------------------------|---------------------------------------------------|-------------------------------|-----------|
| `slack.thread-participation` | `{team_id}:{account_id}:{channel_id}:{thread_ts}` | `{agent_id, replied_at}`      | 24 h / 5,000 |
| `slack.events`               | `{team_id}:{event_id}`                            | `{received_at, lease_until}`, then `{received_at, done_at}` | 1 h / 50,000 |
| `slack.pending`              | `{team_id}:{event_id}`                            | the message (`SlackMessage` fields) | 1 h / 1,000 |
| `slack.thread-starters`      | `{team_id}:{user_id}`                             | `{b: {bucket: count}}` (`sdk.UserQuota`) | 24 h / 2,000 |

`slack.events` is the gate's claim; `slack.pending` holds an event acked before its reply was
done (at Slack's 3 s deadline), for whichever process finishes it if this one dies. Each is an
`sdk.AdapterState`, also the legacy in-memory twin (`legacy=True`: same TTL and cap, memory only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatstate.adapters.slack.config import SlackSettings
from chatstate.gateway.sdk import AdapterState, Clock, StateSpec, Writes, now_ms

THREADS_NAMESPACE = "slack.thread-participation"
EVENTS_NAMESPACE = "slack.events"
PENDING_NAMESPACE = "slack.pending"
PENDING_MAX_ENTRIES = 1_000  # events acked before their reply, at once; each row lives seconds
STARTERS_NAMESPACE = "slack.thread-starters"
STARTERS_MAX_ENTRIES = 2_000  # users counted; evicting one only forgets what they started


@dataclass(frozen=True)
class ThreadRef:
    """One thread the bot may have replied in; `thread_ts` is always the thread root's ts."""

    team_id: str
    account_id: str
    channel_id: str
    thread_ts: str

    @property
    def key(self) -> str:
        return f"{self.team_id}:{self.account_id}:{self.channel_id}:{self.thread_ts}"


class ThreadParticipation:
    """Which threads the bot replied in, and when (`slack.thread-participation`)."""

    def __init__(self, state: AdapterState, *, clock: Clock = now_ms) -> None:
        self.state = state
        self._clock = clock

    def record_participation(self, writes: Writes, thread: ThreadRef, *, agent_id: str) -> None:
        """Stage "`agent_id` replies in `thread`" into `writes`: each reply restarts the thread's
        24 h window (the window runs from the *last* reply)."""
        writes.put(self.state, thread.key, {"agent_id": agent_id, "replied_at": self._clock()})

    async def replied_in(self, thread: ThreadRef) -> dict[str, Any] | None:
        """The live participation row of `thread`, or None. Reads memory, then the store; a row
        read back keeps its stored expiry, so a lookup (say, after a restart) never extends the
        window."""
        value = await self.state.get(thread.key)
        return value if isinstance(value, dict) else None


def thread_spec(settings: SlackSettings) -> StateSpec:
    return StateSpec(THREADS_NAMESPACE, settings.thread_ttl_ms, settings.thread_max_entries)


def specs(settings: SlackSettings) -> list[StateSpec]:
    """The four namespaces, in the order the plugin opens them (the table above)."""
    return [
        thread_spec(settings),
        StateSpec(EVENTS_NAMESPACE, settings.event_ttl_ms, settings.event_max_entries),
        StateSpec(PENDING_NAMESPACE, settings.event_ttl_ms, PENDING_MAX_ENTRIES),
        StateSpec(STARTERS_NAMESPACE, settings.thread_ttl_ms, STARTERS_MAX_ENTRIES),
    ]
