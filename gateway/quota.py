"""Fairness and ordering helpers every adapter shares: keyed async locks, and a per-user quota.

A capped namespace evicts its oldest rows, so without a quota one user's spam would evict
everyone else's live state (threads, panels, rows, approvals). `UserQuota` keeps one small row
per user in its own namespace: counters in time buckets, so an admission reads and writes the
same few bytes whether the user holds one item or five hundred, and its write is staged into
the caller's gate transaction (the claim's or the done mark's): counted ⇔ that one commits.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.clock import Clock, now_ms

if TYPE_CHECKING:
    from chatstate.gateway.gate import Writes

BUCKETS = 24  # counters per user row: each item's expiry is rounded up to ttl/24 (1 h of 24 h)


class KeyedLocks:
    """One `asyncio.Lock` per key, alive only while someone holds or waits for it, so memory is
    bounded by the keys in use, not by every key ever seen. `async with locks.hold(key):`."""

    def __init__(self) -> None:
        self._locks: dict[str, list[Any]] = {}  # key -> [its lock, tasks holding or waiting]

    def hold(self, key: str) -> _Held:
        return _Held(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    """One `hold`: a plain async context manager, not a generator one, since it runs on every
    request that writes (echo's counters) and the generator machinery cost more than the lock."""

    __slots__ = ("_key", "_locks", "_slot")

    def __init__(self, locks: dict[str, list[Any]], key: str) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        slot = self._slot = self._locks.setdefault(self._key, [None, 0])
        if slot[0] is None:
            slot[0] = asyncio.Lock()
        slot[1] += 1
        try:
            await slot[0].acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._slot[0].release()
        self._leave()

    def _leave(self) -> None:
        self._slot[1] -= 1
        if self._slot[1] == 0:
            del self._locks[self._key]


class UserQuota:
    """At most `per_user` items live per user, each counted for `ttl_ms` (rounded up to a bucket
    of ttl/BUCKETS). Over the quota the user is refused and nobody else's state is touched.

    The row is `{"b": {"<bucket index>": count, ...}}`; at most BUCKETS + 1 buckets are live.
    Admissions of one user are serialised in this process (`KeyedLocks`) and the staged count
    is visible to this process at once; two gateways racing on one user may each admit one
    over the quota. While the store fails the quota reads as empty (fail open: an outage is
    not the time to refuse answers).
    """

    def __init__(self, state: AdapterState, *, per_user: int, ttl_ms: int, clock: Clock = now_ms) -> None:
        self.state = state
        self.per_user = per_user
        self.ttl_ms = ttl_ms
        self._bucket_ms = max(1, -(-ttl_ms // BUCKETS))
        self._clock = clock
        self._locks = KeyedLocks()

    async def admit(self, user: str, writes: Writes) -> int | None:
        """Count one more item for `user` into `writes` (counted once they commit): None
        when admitted, else the ms until their oldest item expires (for "try again in ...")."""
        async with self._locks.hold(user):
            now = self._clock()
            live = self._live(await self.state.get(user), now)
            if sum(live.values()) >= self.per_user:
                return max(min(self._expiry(int(b)) for b in live) - now, 0)
            bucket = str(now // self._bucket_ms)
            live[bucket] = live.get(bucket, 0) + 1
            writes.put(self.state, user, {"b": live}, ttl_ms=self.ttl_ms + self._bucket_ms)
            return None

    async def release(self, user: str, writes: Writes) -> None:
        """Give back one item of `user` (it ended before its time, e.g. an approval answered),
        into `writes`. The oldest bucket gives it back: the counts left then never expire before
        the items they stand for, so the quota is never exceeded."""
        async with self._locks.hold(user):
            live = self._live(await self.state.get(user), self._clock())
            if live:
                oldest = min(live, key=int)
                live[oldest] -= 1
                live = {b: n for b, n in live.items() if n > 0}
                writes.put(self.state, user, {"b": live}, ttl_ms=self.ttl_ms + self._bucket_ms)

    def _expiry(self, bucket: int) -> int:
        return (bucket + 1) * self._bucket_ms + self.ttl_ms

    def _live(self, value: object, now: int) -> dict[str, int]:
        buckets = value.get("b") if isinstance(value, dict) else None
        if not isinstance(buckets, dict):
            return {}
        return {b: n for b, n in buckets.items() if b.isdigit() and isinstance(n, int) and self._expiry(int(b)) > now}
