"""`InboundGate`: exactly-once for inbound items (a Slack event, a Teams activity, a Discord
interaction), written once for every adapter (DESIGN.md §4).

An adapter hands the gate a `Job`: its key, its work, its "was this already answered?" check
and, if it needs one, its prepare. The gate does the rest, in two durable writes an item:
1. the prepare reads what the work needs and stages what must be durable before the work's
   effect (say, the thread a reply makes the bot follow); the gate commits that with the
   claim (a lease on the key) in one conditional write, so nothing is written for a claim it
   loses. A duplicate of an item this process is working on waits for it (up to the ack
   budget) and is answered as it was, one done before is "already done", one leased by
   another live process is "leased" (503 + Retry-After, the platform retries later);
2. a lease whose owner died (its lease time passed with no done mark) is taken over with a
   compare-and-set (and the prepared writes: a prepare that skipped reading what only such an
   earlier attempt could have written runs again first), then the check ALWAYS runs first: a
   redelivery after a reconnect can arrive as a first attempt, so what the delivery says about
   retries is never trusted. A gate given an `owner` (an identity only one live process holds
   at a time, like a Matrix device that one process syncs) also takes over, at once, a lease
   of that owner that it is not working on: its dead predecessor's;
3. the work stages its state writes; the gate commits them with the done mark in one
   transaction (state recorded ⇔ item done). A failed work releases the claim (as a lease
   already run out) and puts the prepared rows back, in one write, so the platform's retry
   takes the item over, checks, and works. A job without work is its prepared writes alone:
   its claim row is written already done, with them, in one conditional write. A running
   work's lease is renewed every third of a lease: only the lease of an owner that died runs
   out, never that of a slow work (a platform answering 429s) that may still answer. A work
   the platform refused for good (`Refused`: say, the bot is not in the channel) is marked
   done with the prepared rows put back, and answered 2xx: a retry could only be refused again;
4. with an ack budget, an item still running when it runs out is held (its `hold` value in
   the `held` namespace) and finishes in the background; so is one whose work failed on the
   platform's last attempt (`deliver(..., last_attempt=True)`: nobody would send it again).
   Every gateway's recovery loop finishes held items whose owner died or whose work failed;
5. `stop` refuses new items (503 + Retry-After) and waits for those in flight.
Legacy mode (the "before") keeps claims in memory and never runs the check; while the store
fails, claims are decided in memory and writes replayed later (AdapterState's rule), except while
a shared store fails over (`AdapterState.failing_over`): there a delivery is not taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from typing import Any

from chatstate.gateway import logs, metrics
from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.clock import Clock, now_ms
from chatstate.gateway.writes import Answer, Claim, Holding, Job, Outcome, Refused, Writes
from chatstate.state import StateStoreError

__all__ = ["Answer", "Holding", "InboundGate", "Job", "Outcome", "Refused", "Writes"]

STOP_TIMEOUT_S = 10.0  # how long stop() waits for items still being worked on
MIN_RECOVERY_INTERVAL_S = 0.2  # the recovery loop looks for orphaned held items every lease/2
RENEWALS_PER_LEASE = 3  # a running work's lease is renewed once a third of it has passed


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
        self.claims, self.lease_ms, self.owner, self.ack_budget_s = claims, lease_ms, owner, ack_budget_s
        self._holding, self._clock = holding, clock
        self._retry_after_s = math.ceil(lease_ms / 1000)  # a leased item's Retry-After
        self._inflight: dict[str, asyncio.Task[Answer]] = {}
        self._held: set[str] = set()  # keys this process holds in `held`
        self._recovery: asyncio.Task[None] | None = None
        self._working: dict[str, dict[str, Any]] = {}  # key -> the lease held while its work runs
        self._renewal: asyncio.Task[None] | None = None  # started with the first work (store mode)
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
        if self._renewal is not None:  # after the drain: a work still running keeps its lease till then
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)

    async def deliver(self, job: Job, *, last_attempt: bool = False) -> Answer:
        """Start (or join) the work on `job`; its answer, or ACCEPTED if it is still running
        after the ack budget (then it is held and finishes in the background). `last_attempt`:
        the platform will not send this item again (Slack's third retry), so a work that fails
        is held for the recovery loop instead of released to a retry that never comes."""
        if self._closing:
            return Answer(Outcome.DRAINING, "draining")
        running = self._inflight.get(job.key)
        if running is not None:
            metrics.record_dedupe_hit(self.claims.plugin_id or "", "event")
            return await self._join(running)
        task = self._start(job, last_attempt=last_attempt)
        done, _ = await asyncio.wait({task}, timeout=self.ack_budget_s)
        if done:
            return task.result()
        # the platform gets its 2xx now and will not retry: hold the item first, so a crash
        # before the work lands leaves it to the recovery loop instead of losing it
        await self._hold(job)
        return Answer(Outcome.ACCEPTED, Outcome.ACCEPTED.value)

    async def _hold(self, job: Job) -> bool:
        """Keep `job` in the `held` namespace for the recovery loop (store mode with a holding)."""
        if self._holding is None or self.claims.legacy:
            return False
        self._held.add(job.key)
        await self._holding.state.record(job.key, job.hold)
        return True

    async def _join(self, running: asyncio.Task[Answer]) -> Answer:
        """A duplicate of an item in flight waits for it (up to the ack budget) and is answered
        as it was: a 2xx while the first copy's work may still fail would tell the platform the
        item was handled, and if that work then fails (or the process dies) nobody retries it."""
        done, _ = await asyncio.wait({running}, timeout=self.ack_budget_s)
        if not done:
            return Answer(Outcome.IN_PROGRESS, Outcome.IN_PROGRESS.value)
        if running.cancelled() or running.exception() is not None:
            return Answer(Outcome.FAILED, Outcome.FAILED.value)
        return Answer(Outcome.ALREADY_DONE, Outcome.ALREADY_DONE.value) if running.result().taken else running.result()

    def _start(self, job: Job, *, recovered: bool = False, last_attempt: bool = False) -> asyncio.Task[Answer]:
        run = self._run(job, recovered=recovered, last_attempt=last_attempt)
        task = asyncio.create_task(run, name=f"gate-{job.key}")
        self._inflight[job.key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(job.key, None))
        return task

    async def _run(self, job: Job, *, recovered: bool = False, last_attempt: bool = False) -> Answer:
        received_at = self._clock()
        # a held item may have been worked on by a process whose claim the store never saw
        prepared = Writes(clock=self._clock, earlier_attempt=recovered)
        try:
            await self._prepare(job, prepared)
            claim, lease = await self._claim(job, received_at, prepared, patient=not last_attempt)
        except Exception as exc:
            self._failed(job, exc)
            prepared.discard()
            return Answer(Outcome.FAILED, Outcome.FAILED.value)
        if isinstance(claim, Outcome):
            prepared.discard()
            if claim is Outcome.ALREADY_DONE:
                metrics.record_dedupe_hit(self.claims.plugin_id or "", "event")
                if job.key in self._held and self._holding is not None:
                    self._held.discard(job.key)
                    await self._holding.state.forget(job.key)
            # while a shared store fails over it is retried in a second, not after a lease
            failing = self.claims.last_error is not None
            return Answer(claim, claim.value, self._retry_after_s if claim is Outcome.LEASED and not failing else 1)
        if job.work is None:
            self._held.discard(job.key)
            return Answer(Outcome.DONE, Outcome.DONE.value)
        if self._clock() >= lease["lease_until"]:
            # the claim's write took longer than a lease (a store failing over): another process
            # may already have taken the item over, so working now could answer it twice. Leave
            # it to the platform's retry (or, held, to a recovery loop): both check first
            self._log.warning("gate_claim_too_late", extra={"namespace": self.claims.namespace, "key": job.key})
            if last_attempt and job.key not in self._held and await self._hold(job):
                return Answer(Outcome.ACCEPTED, Outcome.ACCEPTED.value)  # no retry will come: held
            return Answer(Outcome.LEASED, Outcome.LEASED.value, self._retry_after_s)
        writes = Writes(clock=self._clock)
        self._keep_leased(job.key, lease)
        try:
            # a held item was acked and maybe worked on by a process whose claim the store may
            # never have seen (claimed in memory while degraded): "won" proves nothing, check
            check = job.answered if (claim == "takeover" or recovered) and not self.claims.legacy else None
            if check is not None and await check(writes):
                answer = Answer(Outcome.ALREADY_DONE, Outcome.ALREADY_DONE.value)
            else:
                answer = Answer(Outcome.DONE, await job.work(writes))
        except Exception as exc:
            self._failed(job, exc)
            writes.discard()
            # released as a lease already run out, not deleted: the work may have had an effect
            # before it failed (a post whose answer was lost), so the retry takes it over and
            # runs the check first. The prepared rows are put back in the same write: a thread
            # recorded for a post that failed must not stay followed
            release = Writes(clock=self._clock)
            prepared.undo(release)
            if isinstance(exc, Refused):  # every retry would be refused too: done, with nothing of it kept
                self._mark_done(release, job, received_at)
                await release.commit()
                return Answer(Outcome.REFUSED, Outcome.REFUSED.value)
            release.put(self.claims, job.key, {"received_at": received_at, "lease_until": 0})
            # nobody sends it again: released and held in one write, for the recovery loop
            holding = self._holding if last_attempt and not self.claims.legacy and job.key not in self._held else None
            if holding is not None:
                release.put(holding.state, job.key, job.hold)
            await release.commit()
            if holding is None:
                return Answer(Outcome.FAILED, Outcome.FAILED.value)
            self._held.add(job.key)
            return Answer(Outcome.ACCEPTED, Outcome.ACCEPTED.value)
        finally:
            self._working.pop(job.key, None)
        self._mark_done(writes, job, received_at)
        await writes.commit()
        return answer

    def _mark_done(self, writes: Writes, job: Job, received_at: int) -> None:
        """Stage `job`'s done mark, and the end of its holding if it was held."""
        writes.put(self.claims, job.key, {"received_at": received_at, "done_at": self._clock()})
        if job.key in self._held and self._holding is not None:
            self._held.discard(job.key)
            writes.delete(self._holding.state, job.key)

    def _failed(self, job: Job, exc: Exception) -> None:
        extra = {"namespace": self.claims.namespace, "key": job.key, "error": type(exc).__name__}
        if isinstance(exc, Refused):  # the platform's reason: what an operator fixes (a bot not in a channel)
            self._log.error("gate_work_refused", extra={**extra, "reason": str(exc)})
            return
        self._log.warning("gate_work_failed", extra=extra)

    def _lease(self, received_at: int, *, done: bool) -> dict[str, Any]:
        """The claim row: a lease running from now, not from `received_at` (a prepare whose reads
        stalled through a failover must not write a lease another process may take over at
        once); with `done`, the done mark."""
        now = self._clock()
        if done:
            return {"received_at": received_at, "done_at": now}
        owner = {} if self.owner is None else {"owner": self.owner}
        # the token tells this lease from another process's, written for the same item at the same ms
        return {"received_at": received_at, "lease_until": now + self.lease_ms, "token": secrets.token_hex(8), **owner}

    async def _prepare(self, job: Job, prepared: Writes) -> None:
        if job.prepare is not None:
            await job.prepare(prepared)
        if job.work is None and job.key in self._held and self._holding is not None:
            prepared.delete(self._holding.state, job.key)  # with the claim: the job is done then

    async def _claim(
        self, job: Job, received_at: int, prepared: Writes, *, patient: bool = True
    ) -> tuple[str | Outcome, dict[str, Any]]:
        """ "won", "takeover" (a dead owner's lease), or why not; and the claim row. One write
        when uncontended: the claim row and the prepared writes, together. A prepare that
        skipped reading what an earlier attempt could have written runs again before a takeover.
        `patient`: the platform will retry, so a shared store's failover may be waited out."""
        now, key = self._clock(), job.key
        lease = self._lease(received_at, done=job.work is None)
        if await prepared.commit(Claim(self.claims.stage_claim(key, lease), patient=patient)):
            return "won", lease
        if self.claims.failing_over:  # the platform retries, the store decides; unless it did already
            return "won" if await self._applied(key, lease) else Outcome.LEASED, lease
        entry = await self.claims.get_entry(key, fresh=True)
        if entry is None:  # released (or expired) in between
            won = await prepared.commit(Claim(self.claims.stage_claim(key, lease), patient=patient))
            return "won" if won else Outcome.LEASED, lease
        value = entry.value if isinstance(entry.value, dict) else {}
        if "done_at" in value:
            return Outcome.ALREADY_DONE, lease
        lease_until = value.get("lease_until")
        mine = self.owner is not None and value.get("owner") == self.owner  # and not in flight here
        if isinstance(lease_until, int) and lease_until > now and not mine:
            return Outcome.LEASED, lease
        if prepared.skipped_reads:
            prepared.discard()
            prepared.earlier_attempt, prepared.skipped_reads = True, False
            await self._prepare(job, prepared)
            lease = self._lease(received_at, done=job.work is None)
        took = Claim(self.claims.stage_claim(key, lease, version=entry.version), entry.version, patient)
        return "takeover" if await prepared.commit(took) else Outcome.LEASED, lease

    async def _applied(self, key: str, lease: dict[str, Any]) -> bool:
        """Did the store apply the claim whose write failed? With `min_replicas_acked` a write
        the primary applied but no replica acknowledged in time fails, and its row is then this
        very lease (its token): the store decided for us, with the prepared writes in the same
        transaction. Leaving it would leave the item to a retry that finds a live lease, or, from
        Discord, to nobody."""
        entry = await self.claims.get_entry(key, fresh=True)
        return entry is not None and entry.value == lease

    def _keep_leased(self, key: str, lease: dict[str, Any]) -> None:
        """Renew `lease` while the work on `key` runs (one loop for all: a fast work costs nothing)."""
        if self.claims.legacy:
            return  # claims in this process's memory only: nobody else to take them over
        self._working[key] = lease
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew_leases(), name=f"gate-lease-{self.claims.namespace}")

    async def _renew_leases(self) -> None:
        interval_ms = self.lease_ms / RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(interval_ms / 1000)
            for key, lease in list(self._working.items()):
                if lease["lease_until"] - self._clock() < self.lease_ms - interval_ms:
                    with contextlib.suppress(StateStoreError):  # a failing store: the next round tries again
                        await self._renew(key, lease)

    async def _renew(self, key: str, lease: dict[str, Any]) -> None:
        """Extend `lease` if the claim row is still it (a compare-and-set on its version), in the
        store only: a row done, released or taken over meanwhile is left alone, and while the
        store fails there is nothing to renew (claims are decided in memory then)."""
        if self.claims.last_error is not None:
            return
        entry = await self.claims.get_entry(key, fresh=True)
        value = entry.value if entry is not None and isinstance(entry.value, dict) else {}
        if entry is None or self._working.get(key) is not lease or value.get("lease_until") != lease["lease_until"]:
            return
        renewed = {**lease, "lease_until": self._clock() + self.lease_ms}
        if await self.claims.take_over(key, renewed, version=entry.version) and self._working.get(key) is lease:
            self._working[key] = renewed

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
