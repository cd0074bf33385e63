"""`InboundGate`: exactly-once for inbound items (a Slack event, a Teams activity, a Discord
interaction), written once for every adapter (DESIGN.md §4).

An adapter hands the gate a `Job`: its key, its work, and its "was this already answered?"
check. The gate does the rest:
1. claim the key under a lease, one write (`register_if_absent`); a duplicate of an item this
   process is working on waits for it (up to the ack budget) and is answered as it was, one
   done before is "already done", one leased by
   another live process is "leased" (503 + Retry-After, the platform retries later);
2. a lease whose owner died (its lease time passed with no done mark) is taken over with a
   compare-and-set, and then the check ALWAYS runs first: a redelivery after a reconnect can
   arrive as a first attempt, so what the delivery says about retries is never trusted. A gate
   given an `owner` (an identity only one live process holds at a time, like a Matrix device
   that one process syncs) also takes over, at once, a lease of that owner that it is not
   working on: its dead predecessor's, so a restart need not wait the lease out;
3. the work stages its state writes into `Writes`; the gate commits them with the done mark
   in one transaction (state recorded ⇔ item done); a failed work commits nothing and releases
   the claim (as a lease already run out), so the platform's retry takes the item over, checks,
   and works;
4. with an ack budget, an item still running when it runs out is held (its `hold` value in
   the `held` namespace) and finishes in the background; every gateway's recovery loop
   finishes held items whose owner died;
5. `stop` refuses new items (503 + Retry-After) and waits for those in flight.
Legacy mode (the "before") keeps claims in memory and never runs the check.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web

from chatstate.gateway import (
    logs,
    metrics,
)
from chatstate.gateway.adapter_state import CALLER_ERRORS, AdapterState, Staged
from chatstate.gateway.clock import Clock, now_ms
from chatstate.state import StateStoreError, commit_staged_async

STOP_TIMEOUT_S = 10.0  # how long stop() waits for items still being worked on
MIN_RECOVERY_INTERVAL_S = 0.2  # the recovery loop looks for orphaned held items every lease/2


class Outcome(Enum):
    """What became of one delivery."""

    DONE = "done"  # the work ran; its writes and the done mark are committed
    ALREADY_DONE = "already_done"  # a duplicate of a finished item (or the check found its answer)
    IN_PROGRESS = "in_progress"  # a duplicate of an item this process still works on after the ack budget
    ACCEPTED = "accepted"  # still running after the ack budget: held, finishes in the background
    LEASED = "leased"  # a live lease of another process holds it
    FAILED = "failed"  # the work raised; the claim is released for the platform's retry
    DRAINING = "draining"  # the gateway is stopping


NOT_TAKEN = (Outcome.LEASED, Outcome.FAILED, Outcome.DRAINING)  # the platform must send it again


@dataclass(frozen=True)
class Answer:
    """The gate's verdict on one delivery: `taken` says whether to ack it (2xx), `text` is the
    work's own word for DONE ("replied"), else the outcome's name."""

    outcome: Outcome
    text: str
    retry_after_s: int = 1

    @property
    def taken(self) -> bool:
        return self.outcome not in NOT_TAKEN

    def response(self) -> web.Response:
        """The HTTP answer: 200, or 503 + Retry-After when the platform must send it again."""
        if self.taken:
            return web.Response(status=200, text=self.text)
        return web.Response(status=503, headers={"Retry-After": str(self.retry_after_s)}, text=self.text)


@dataclass
class Writes:
    """State writes staged by one item's work, committed with its done mark in one transaction."""

    staged: list[Staged] = field(default_factory=list)

    def put(self, state: AdapterState, key: str, value: Any, *, ttl_ms: int | None = None) -> None:
        self.staged.append(state.stage(key, value, ttl_ms=ttl_ms))

    def delete(self, state: AdapterState, key: str) -> None:
        self.staged.append(state.stage(key, delete=True))

    def discard(self) -> None:
        """Forget the staged writes (memory drops the keys; the next read goes to the store)."""
        for s in self.staged:
            s.state.memory.drop(s.key)
        self.staged.clear()

    async def commit(self) -> None:
        """Write everything in one transaction. A store failure does not raise: each state
        degrades to memory and replays its writes once the store is back (AdapterState's rule).
        Raises StateStoreError INVALID_INPUT / LIMIT_EXCEEDED (a programming error)."""
        stored = [s for s in self.staged if s.write is not None]
        states = list({id(s.state): s.state for s in stored}.values())
        if not stored:
            return
        if all([await st.recover() for st in states]):
            try:
                await commit_staged_async([s.write for s in stored if s.write is not None])
                return
            except StateStoreError as exc:
                if exc.code in CALLER_ERRORS:
                    raise
                for st in states:
                    st.degrade(exc)
        for s in stored:
            s.state.remember(s.key, s.entry)


@dataclass(frozen=True)
class Holding:
    """Where items acked before their work is done are kept (`state`), and how the adapter
    rebuilds a `Job` from a held row (`resume`; None for a row it cannot use)."""

    state: AdapterState
    resume: Callable[[str, Any], Job | None]


@dataclass(frozen=True)
class Job:
    """One inbound item, as an adapter hands it to the gate."""

    key: str
    work: Callable[[Writes], Awaitable[str]]  # do it, stage state writes; returns a word ("replied")
    answered: Callable[[Writes], Awaitable[bool]]  # after a takeover: already answered? (stage what's missing)
    hold: Any = None  # JSON the adapter's `resume` rebuilds this job from, if it outlives the ack budget


class InboundGate:
    """Claim, work, done / release for one kind of inbound item; see the module docstring."""

    def __init__(
        self,
        claims: AdapterState,
        *,
        lease_ms: int,
        ack_budget_s: float | None = None,
        holding: Holding | None = None,
        log: logging.LoggerAdapter[logging.Logger] | None = None,
        clock: Clock = now_ms,
        owner: str | None = None,
    ) -> None:
        self.claims = claims
        self.lease_ms = lease_ms
        self.owner = owner
        self.ack_budget_s = ack_budget_s
        self._holding = holding
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[Answer]] = {}
        self._held: set[str] = set()  # keys this process holds in `held`
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._log = log or logs.get("gate")  # the plugin's logger: events carry its id

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        """Start the recovery loop of held items (store mode with a `held` state only)."""
        if self._holding is not None and not self.claims.legacy:
            self._recovery = asyncio.create_task(self._recover(self._holding), name=f"gate-{self.claims.namespace}")

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Refuse new items and let those in flight finish (their writes are what a restart relies on)."""
        self._closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout_s)

    async def deliver(self, job: Job) -> Answer:
        """Start (or join) the work on `job`; its answer, or ACCEPTED if it is still running
        after the ack budget (then it is held and finishes in the background)."""
        if self._closing:
            return Answer(Outcome.DRAINING, "draining")
        running = self._inflight.get(job.key)
        if running is not None:
            metrics.record_dedupe_hit(self.claims.plugin_id or "", "event")
            return await self._join(running)
        task = self._start(job)
        done, _ = await asyncio.wait({task}, timeout=self.ack_budget_s)
        if done:
            return task.result()
        if self._holding is not None and not self.claims.legacy:
            # the platform gets its 2xx now and will not retry: hold the item first, so a crash
            # before the work lands leaves it to the recovery loop instead of losing it
            self._held.add(job.key)
            await self._holding.state.record(job.key, job.hold)
        return Answer(Outcome.ACCEPTED, Outcome.ACCEPTED.value)

    async def _join(self, running: asyncio.Task[Answer]) -> Answer:
        """A duplicate of an item in flight waits for it (up to the ack budget) and is answered
        as it was: a 2xx while the first copy's work may still fail would tell the platform the
        item was handled, and if that work then fails (or the process dies) nobody retries it."""
        done, _ = await asyncio.wait({running}, timeout=self.ack_budget_s)
        if not done:
            return Answer(Outcome.IN_PROGRESS, Outcome.IN_PROGRESS.value)
        if running.cancelled() or running.exception() is not None:
            return Answer(Outcome.FAILED, Outcome.FAILED.value)
        first = running.result()
        return first if not first.taken else Answer(Outcome.ALREADY_DONE, Outcome.ALREADY_DONE.value)

    def _start(self, job: Job, *, recovered: bool = False) -> asyncio.Task[Answer]:
        task = asyncio.create_task(self._run(job, recovered=recovered), name=f"gate-{job.key}")
        self._inflight[job.key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(job.key, None))
        return task

    async def _run(self, job: Job, *, recovered: bool = False) -> Answer:
        received_at = self._clock()
        claim = await self._claim(job.key, received_at)
        if isinstance(claim, Outcome):
            if claim is Outcome.ALREADY_DONE:
                metrics.record_dedupe_hit(self.claims.plugin_id or "", "event")
                if job.key in self._held and self._holding is not None:
                    self._held.discard(job.key)
                    await self._holding.state.forget(job.key)
            retry_after = math.ceil(self.lease_ms / 1000) if claim is Outcome.LEASED else 1
            return Answer(claim, claim.value, retry_after)
        writes = Writes()
        try:
            # a held item was acked and maybe worked on by a process whose claim the store may
            # never have seen (claimed in memory while degraded): "won" proves nothing, check
            check = claim == "takeover" or recovered
            if check and not self.claims.legacy and await job.answered(writes):
                answer = Answer(Outcome.ALREADY_DONE, Outcome.ALREADY_DONE.value)
            else:
                answer = Answer(Outcome.DONE, await job.work(writes))
        except Exception as exc:
            self._log.warning(
                "gate_work_failed",
                extra={"namespace": self.claims.namespace, "key": job.key, "error": type(exc).__name__},
            )
            writes.discard()
            # released as a lease already run out, not deleted: the work may have had an effect
            # before it failed (a post whose answer was lost), so the retry takes it over and
            # runs the check first
            await self.claims.record(job.key, {"received_at": received_at, "lease_until": 0})
            return Answer(Outcome.FAILED, Outcome.FAILED.value)
        writes.put(self.claims, job.key, {"received_at": received_at, "done_at": self._clock()})
        if job.key in self._held and self._holding is not None:
            self._held.discard(job.key)
            writes.delete(self._holding.state, job.key)
        await writes.commit()
        return answer

    async def _claim(self, key: str, now: int) -> str | Outcome:
        """ "won", "takeover" (a dead owner's lease), or why not. One write when uncontended."""
        lease: dict[str, Any] = {"received_at": now, "lease_until": now + self.lease_ms}
        if self.owner is not None:
            lease["owner"] = self.owner
        if await self.claims.claim(key, lease):
            return "won"
        entry = await self.claims.get_entry(key, fresh=True)
        if entry is None:  # released (or expired) in between
            return "won" if await self.claims.claim(key, lease) else Outcome.LEASED
        value = entry.value if isinstance(entry.value, dict) else {}
        if "done_at" in value:
            return Outcome.ALREADY_DONE
        lease_until = value.get("lease_until")
        mine = self.owner is not None and value.get("owner") == self.owner  # and not in flight here
        if isinstance(lease_until, int) and lease_until > now and not mine:
            return Outcome.LEASED
        return "takeover" if await self.claims.take_over(key, lease, version=entry.version) else Outcome.LEASED

    async def _recover(self, holding: Holding) -> None:
        """Finish items held in `held` that no task here works on: those of a process that died
        after acking them. The claim decides who does it (a live owner's lease makes this a
        no-op until it finishes or its lease runs out)."""
        interval = max(MIN_RECOVERY_INTERVAL_S, self.lease_ms / 2000)
        while True:
            if self.claims.last_error is not None:  # nothing else may call it while no item comes
                await self.claims.recover()
            for entry in await holding.state.entries():
                if entry.key in self._inflight:
                    continue
                job = holding.resume(entry.key, entry.value)
                if job is None:  # a row of another shape: nothing to finish
                    await holding.state.forget(entry.key)
                    continue
                self._log.info("gate_held_item_taken", extra={"namespace": self.claims.namespace, "key": entry.key})
                self._held.add(entry.key)
                self._start(job, recovered=True)
            await asyncio.sleep(interval)
