"""The state the Slack adapter keeps: two rows of DESIGN.md §3's table, and nothing else.

| namespace                   | key                                             | value                   | ttl / max    |
|-----------------------------|-------------------------------------------------|-------------------------|--------------|
| `slack.thread-participation`| `{team_id}:{account_id}:{channel_id}:{thread_ts}` | `{agent_id, replied_at}`| 24 h / 5,000 |
| `slack.events`              | `{team_id}:{event_id}`                          | `{received_at[, done_at]}` | 1 h / 50,000 (lease while processing) |
| `slack.pending`             | `{team_id}:{event_id}`                          | the message (`SlackMessage` fields) | 1 h / 1,000 |
| `slack.thread-starters`     | `{team_id}:{user_id}`                           | `{threads: {hash: expires_at}}` | 24 h / 2,000 (fairness quota) |

`slack.pending` holds an event Slack was told "accepted" (acked at the 3 s deadline) before
its reply was done: Slack will not send it again, so if the process dies, another one (or this
one restarted) finishes it from this row.

Both go through `gateway.adapter_state.AdapterState`, which is also the legacy in-memory twin
(`legacy=True`: the same TTL and cap, memory only), so this module is the whole migration.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.platform import SlackMessage
from chatstate.gateway.adapter_state import AdapterState, StateSpec
from chatstate.gateway.claims import ClaimLedger
from chatstate.gateway.clock import Clock, now_ms

STARTERS_NAMESPACE = "slack.thread-starters"
STARTERS_MAX_ENTRIES = 2_000  # users counted; evicting one only forgets what they started
THREADS_NAMESPACE = "slack.thread-participation"
EVENTS_NAMESPACE = "slack.events"
PENDING_NAMESPACE = "slack.pending"
PENDING_MAX_ENTRIES = 1_000  # events acked before their reply, at once; each row lives seconds


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

    async def record_participation(self, thread: ThreadRef, *, agent_id: str) -> None:
        """Remember that `agent_id` just replied in `thread`; returns once it is durable.

        Each reply restarts the thread's 24 h window (the window runs from the *last* reply).
        Never raises for a store failure: AdapterState degrades to memory and replays later.
        """
        await self.state.record(thread.key, {"agent_id": agent_id, "replied_at": self._clock()})

    async def replied_in(self, thread: ThreadRef) -> dict[str, Any] | None:
        """The live participation row of `thread`, or None.

        Reads memory, then the store; a row read back from the store keeps its stored expiry,
        so looking it up (e.g. after a restart) never extends the 24 h window.
        """
        value = await self.state.get(thread.key)
        return value if isinstance(value, dict) else None

    async def forget(self, thread: ThreadRef) -> None:
        """Drop `thread`'s row: a reply recorded ahead of a send that then failed."""
        await self.state.forget(thread.key)


class EventLedger(ClaimLedger):
    """Slack event ids already taken (`slack.events`): a short lease while the bot works on
    one, then a long-lived done mark, so a retry never produces a second reply."""

    @staticmethod
    def key(team_id: str, event_id: str) -> str:
        return f"{team_id}:{event_id}"


class PendingWork:
    """Events acked before their reply was done (`slack.pending`), so no crash loses them."""

    def __init__(self, state: AdapterState) -> None:
        self.state = state

    async def hold(self, key: str, message: SlackMessage) -> None:
        """Keep `message` until `finish`; durable on return (written before Slack's 200)."""
        await self.state.record(key, asdict(message))

    async def finish(self, key: str) -> None:
        await self.state.forget(key)

    async def held(self) -> list[tuple[str, SlackMessage]]:
        """Every held event (all processes'), oldest first; rows of another shape are dropped."""
        out = []
        for entry in await self.state.entries():
            try:
                out.append((entry.key, SlackMessage(**entry.value)))
            except TypeError:
                await self.state.forget(entry.key)
        return out


def pending_spec(settings: SlackSettings) -> StateSpec:
    return StateSpec(PENDING_NAMESPACE, settings.event_ttl_ms, PENDING_MAX_ENTRIES)


def thread_spec(settings: SlackSettings) -> StateSpec:
    return StateSpec(THREADS_NAMESPACE, settings.thread_ttl_ms, settings.thread_max_entries)


def events_spec(settings: SlackSettings) -> StateSpec:
    return StateSpec(EVENTS_NAMESPACE, settings.event_ttl_ms, settings.event_max_entries)


class ThreadQuota:
    """Threads each user made the bot reply in (`slack.thread-starters`): at most `per_user` per
    user within the thread TTL, so one user's mention spam can never push the participation
    namespace past its cap and evict other users' threads (issue 15).

    A thread counts once against each user whose message made the bot reply in it, from the
    first such reply, for the thread TTL (a retry of the same event counts nothing new). A user
    at the quota still gets answers in threads the bot already follows. Counted under a
    per-process lock (two gateways racing on one user may admit one thread each over it).
    """

    def __init__(self, state: AdapterState, *, per_user: int, ttl_ms: int, clock: Clock = now_ms) -> None:
        self.state = state
        self.per_user = per_user
        self.ttl_ms = ttl_ms
        self._clock = clock
        self._locks = [asyncio.Lock() for _ in range(64)]  # striped by user: bounded memory

    async def admit(self, thread: ThreadRef, *, user_id: str) -> bool | None:
        """Count `thread` for `user_id` (durable on return): True when counted (or already
        counted), False when they are at the quota, None when the quota cannot be read (the
        store is failing: fail open, an outage is not the time to refuse answers)."""
        key = f"{thread.team_id}:{user_id}"
        tag = hashlib.sha256(thread.key.encode()).hexdigest()[:16]
        async with self._locks[hash(key) % len(self._locks)]:
            now = self._clock()
            value = await self.state.get(key)
            if self.state.last_error is not None:
                return None
            threads = value.get("threads") if isinstance(value, dict) else None
            live = {t: e for t, e in (threads or {}).items() if isinstance(e, int) and e > now}
            if tag in live:
                return True
            if len(live) >= self.per_user:
                return False
            live[tag] = now + self.ttl_ms
            await self.state.record(key, {"threads": live}, ttl_ms=self.ttl_ms)
            return True


def starters_spec(settings: SlackSettings) -> StateSpec:
    return StateSpec(STARTERS_NAMESPACE, settings.thread_ttl_ms, STARTERS_MAX_ENTRIES)
