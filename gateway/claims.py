"""Exactly-once and fairness on top of `AdapterState`: a per-item claim ledger and a
per-requester quota, shared by the adapters (Slack events, Teams activities, Discord panels...).
"""

from __future__ import annotations

import asyncio

from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.clock import Clock, now_ms


class ClaimLedger:
    """Exactly-once for one kind of inbound item (a Slack event id, a Teams activity id): a
    short lease while one process works on it, then a long-lived done mark, all in one
    namespace. A retry or redelivery never produces a second answer: the claim
    (`register_if_absent`) is atomic across processes, and an expired lease (its owner died
    before answering) counts as absent, so the item is answered instead of lost."""

    def __init__(self, state: AdapterState, *, lease_ms: int, clock: Clock = now_ms) -> None:
        self.state = state
        self.lease_ms = lease_ms
        self._clock = clock

    async def claim(self, key: str, *, received_at: int) -> bool:
        """Take `key` under a lease of `lease_ms`; False if a live lease or done mark holds it."""
        return await self.state.claim(key, {"received_at": received_at}, ttl_ms=self.lease_ms)

    async def mark_done(self, key: str, *, received_at: int) -> None:
        """Replace the lease with the done mark (the namespace's long TTL); durable on return."""
        await self.state.record(key, {"received_at": received_at, "done_at": self._clock()})

    async def is_done(self, key: str) -> bool:
        value = await self.state.get(key)
        return isinstance(value, dict) and "done_at" in value

    async def release(self, key: str) -> None:
        """Drop a lease whose work failed, so the platform's retry can process the item again."""
        await self.state.forget(key)


class RequesterQuota:
    """At most `per_user` live rows created on behalf of one requester (fairness).

    A capped namespace evicts its oldest rows, so without this one user's spam evicts everyone
    else's live state. The quota keeps one row per requester in its own namespace (`state`):
    `{"expires": [ms, ...]}`, one expiry per row they caused, each `ttl_ms` after it was made
    (the lifetime of the rows it guards). Counted under a per-process lock striped by user; two
    processes racing on one user may each admit one over the quota.
    """

    def __init__(self, state: AdapterState, *, per_user: int, ttl_ms: int) -> None:
        self.state = state
        self.per_user = per_user
        self.ttl_ms = ttl_ms
        self._locks = [asyncio.Lock() for _ in range(64)]

    async def admit(self, user_id: str, *, now_ms: int) -> int | None:
        """Count one more row for `user_id` (durable on return): None when admitted, else the
        ms until their oldest row expires (for the refusal's "try again in ...")."""
        async with self._locks[hash(user_id) % len(self._locks)]:
            live = await self._live(user_id, now_ms)
            if len(live) >= self.per_user:
                return max(min(live) - now_ms, 0)
            live.append(now_ms + self.ttl_ms)
            await self.state.record(user_id, {"expires": live}, ttl_ms=self.ttl_ms)
            return None

    async def release(self, user_id: str, *, now_ms: int) -> None:
        """Give back the row just admitted (the action it was for did not happen)."""
        async with self._locks[hash(user_id) % len(self._locks)]:
            live = await self._live(user_id, now_ms)
            if live:
                live.remove(max(live))
                await self.state.record(user_id, {"expires": live}, ttl_ms=self.ttl_ms)

    async def _live(self, user_id: str, now_ms: int) -> list[int]:
        value = await self.state.get(user_id)
        expires = value.get("expires") if isinstance(value, dict) else None
        return [e for e in expires or [] if isinstance(e, int) and e > now_ms]
