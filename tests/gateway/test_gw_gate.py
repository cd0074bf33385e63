"""gateway/gate.py, quota.py and sdk.py over a real SQLite file: the claim is one write, a dead
owner's lease is taken over and the check always runs, the work's writes land with the done
mark, a failure releases, stop drains; the per-user quota's row does not grow; keyed locks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer

from chatstate.gateway.adapter_state import SHARED_OUTAGE_WAIT_MS
from chatstate.gateway.sdk import (
    AdapterState,
    Holding,
    InboundGate,
    Job,
    KeyedLocks,
    Outcome,
    Refused,
    StateSpec,
    UserQuota,
    Writes,
)
from chatstate.state import StateStoreError, op_counts, open_async_keyed_store, open_keyed_store

LEASE_MS = 1_000
CLAIMS = StateSpec("test.claims", ttl_ms=3_600_000, max_entries=1_000)
ROWS = StateSpec("test.rows", ttl_ms=None, max_entries=1_000)
HELD = StateSpec("test.held", ttl_ms=3_600_000, max_entries=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


class Runtime:
    plugin_id = "gate"
    log = logging.LoggerAdapter(logging.getLogger("test.gate"))

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stores: list[Any] = []

    async def open_keyed_store(self, namespace: str, **kw: Any) -> Any:
        store = await open_async_keyed_store("gate", namespace, path=self.path, **kw)
        self.stores.append(store)
        return store


class Process:
    """One gateway's gate over the shared file: claims, the work's rows, held items."""

    def __init__(self, path: Path, clock: Clock, *, legacy: bool = False) -> None:
        self.runtime = Runtime(path)
        self.claims = AdapterState(CLAIMS, legacy=legacy, clock=clock)
        self.rows = AdapterState(ROWS, legacy=legacy, clock=clock)
        self.held = AdapterState(HELD, legacy=legacy, clock=clock)
        self.clock = clock
        self.calls: list[str] = []

    async def open(self, **gate: Any) -> InboundGate:
        for st in (self.claims, self.rows, self.held):
            await st.open(self.runtime)
        self.gate = InboundGate(self.claims, lease_ms=LEASE_MS, clock=self.clock, **gate)
        return self.gate

    def job(self, key: str, *, answered: bool = False, fail: bool = False, wait: asyncio.Event | None = None) -> Job:
        async def work(writes: Writes) -> str:
            self.calls.append(f"work {key}")
            if wait is not None:
                await wait.wait()
            writes.put(self.rows, key, {"by": "work"})
            if fail:
                raise ConnectionError("the platform did not answer")
            return "replied"

        async def check(writes: Writes) -> bool:
            self.calls.append(f"check {key}")
            if answered:
                writes.put(self.rows, key, {"by": "check"})
            return answered

        return Job(key, work, check, hold={"key": key})


def rows(path: Path, namespace: str) -> dict[str, Any]:
    spec = next(s for s in (CLAIMS, ROWS, HELD) if s.namespace == namespace)
    store = open_keyed_store("gate", namespace, max_entries=spec.max_entries, default_ttl_ms=spec.ttl_ms, path=path)
    try:
        return {e.key: e.value for e in store.entries()}
    finally:
        store.close()


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[list[Process]]:
    made: list[Process] = []
    yield made
    for p in made:
        await p.gate.stop()
        for store in p.runtime.stores:
            await store.close()


async def new(procs: list[Process], tmp_path: Path, clock: Clock, **gate: Any) -> Process:
    p = Process(tmp_path / "state.sqlite", clock, legacy=gate.pop("legacy", False))
    procs.append(p)
    await p.open(**gate)
    return p


async def test_work_writes_land_with_the_done_mark_and_a_duplicate_is_already_done(
    procs: list[Process], tmp_path: Path
) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    answer = await p.gate.deliver(p.job("e1"))
    assert (answer.outcome, answer.text, answer.response().status) == (Outcome.DONE, "replied", 200)
    db = tmp_path / "state.sqlite"
    assert rows(db, "test.rows") == {"e1": {"by": "work"}}
    assert rows(db, "test.claims")["e1"]["done_at"] == clock.now
    again = await p.gate.deliver(p.job("e1"))
    assert again.outcome is Outcome.ALREADY_DONE and again.taken
    assert p.calls == ["work e1"]  # neither the work nor the check ran again


async def test_a_dead_owners_lease_is_taken_over_and_the_check_always_runs(
    procs: list[Process], tmp_path: Path
) -> None:
    clock = Clock()
    dead, alive = await new(procs, tmp_path, clock), await new(procs, tmp_path, clock)
    assert await dead.claims.claim("e1", {"received_at": clock.now, "lease_until": clock.now + LEASE_MS})
    leased = await alive.gate.deliver(alive.job("e1", answered=True))
    assert leased.outcome is Outcome.LEASED and not leased.taken
    assert (leased.response().status, leased.response().headers["Retry-After"]) == (503, "1")

    clock.now += LEASE_MS + 1  # the owner died: its lease runs out with no done mark
    took = await alive.gate.deliver(alive.job("e1", answered=True))
    assert took.outcome is Outcome.ALREADY_DONE
    assert alive.calls == ["check e1"]  # answered before: the work did not run again
    assert rows(tmp_path / "state.sqlite", "test.rows") == {"e1": {"by": "check"}}  # what the check staged

    assert await dead.claims.claim("e2", {"received_at": clock.now, "lease_until": clock.now + LEASE_MS})
    clock.now += LEASE_MS + 1
    assert (await alive.gate.deliver(alive.job("e2"))).outcome is Outcome.DONE
    assert alive.calls[1:] == ["check e2", "work e2"]  # not answered yet: the work runs once


async def test_a_failed_work_discards_its_writes_and_releases_the_claim(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    failed = await p.gate.deliver(p.job("e1", fail=True))
    assert failed.outcome is Outcome.FAILED and failed.response().status == 503
    assert rows(tmp_path / "state.sqlite", "test.rows") == {} and await p.rows.get("e1") is None
    assert rows(tmp_path / "state.sqlite", "test.claims")["e1"]["lease_until"] == 0  # released: run out
    assert (await p.gate.deliver(p.job("e1"))).outcome is Outcome.DONE
    assert p.calls == ["work e1", "check e1", "work e1"]  # the work may have had an effect: checked first


async def test_in_flight_duplicates_and_draining(procs: list[Process], tmp_path: Path) -> None:
    p = await new(procs, tmp_path, Clock())
    release = asyncio.Event()
    first = asyncio.create_task(p.gate.deliver(p.job("e1", wait=release)))
    await asyncio.sleep(0.05)
    joined = asyncio.create_task(p.gate.deliver(p.job("e1")))  # waits for the first copy
    stopping = asyncio.create_task(p.gate.stop())
    await asyncio.sleep(0)
    draining = await p.gate.deliver(p.job("e2"))
    assert (draining.outcome, draining.response().status, draining.response().headers["Retry-After"]) == (
        Outcome.DRAINING,
        503,
        "1",
    )
    release.set()
    await stopping  # waited for the item in flight
    assert (await first).outcome is Outcome.DONE
    assert (await joined).outcome is Outcome.ALREADY_DONE  # answered as the first copy was
    assert p.calls == ["work e1"]


async def test_a_duplicate_in_flight_is_answered_as_the_first_copy(procs: list[Process], tmp_path: Path) -> None:
    p = await new(procs, tmp_path, Clock(), ack_budget_s=0.05)
    release = asyncio.Event()
    first = asyncio.create_task(p.gate.deliver(p.job("e1", fail=True, wait=release)))
    await asyncio.sleep(0.01)
    assert (await p.gate.deliver(p.job("e1"))).outcome is Outcome.IN_PROGRESS  # past the ack budget
    joined = asyncio.create_task(p.gate.deliver(p.job("e1")))
    release.set()
    failed = await joined  # the first copy failed: a 2xx now would leave the item to nobody
    assert (failed.outcome, failed.response().status) == (Outcome.FAILED, 503)
    assert (await first).outcome is Outcome.ACCEPTED  # acked at the budget; its work failed later


async def test_past_the_ack_budget_an_item_is_held_and_a_dead_owners_hold_is_finished(
    procs: list[Process], tmp_path: Path
) -> None:
    clock = Clock()
    dead = await new(procs, tmp_path, clock)
    slow = asyncio.Event()
    holding = Holding(dead.held, lambda key, value: dead.job(value["key"], wait=slow))
    dead.gate = InboundGate(dead.claims, lease_ms=LEASE_MS, ack_budget_s=0.05, holding=holding, clock=clock)
    accepted = await dead.gate.deliver(dead.job("e1", wait=slow))
    assert accepted.outcome is Outcome.ACCEPTED and accepted.response().status == 200
    assert rows(tmp_path / "state.sqlite", "test.held") == {"e1": {"key": "e1"}}
    for task in list(dead.gate._inflight.values()):  # the process dies mid-work
        task.cancel()

    clock.now += LEASE_MS + 1
    alive = await new(procs, tmp_path, clock)
    alive.gate = InboundGate(
        alive.claims,
        lease_ms=LEASE_MS,
        ack_budget_s=0.05,
        holding=Holding(alive.held, lambda key, value: alive.job(value["key"])),
        clock=clock,
    )
    alive.gate.start()
    while rows(tmp_path / "state.sqlite", "test.held"):
        await asyncio.sleep(0.05)
    assert alive.calls == ["check e1", "work e1"]  # a takeover: checked, then answered once
    assert rows(tmp_path / "state.sqlite", "test.rows") == {"e1": {"by": "work"}}


async def test_a_work_failing_on_the_last_attempt_is_held_and_finished_by_the_recovery_loop(
    procs: list[Process], tmp_path: Path
) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    failing = [True]
    holding = Holding(p.held, lambda key, value: p.job(value["key"], fail=failing[0]))
    p.gate = InboundGate(p.claims, lease_ms=LEASE_MS, holding=holding, clock=clock)
    earlier = await p.gate.deliver(p.job("e1", fail=True))  # the platform will send it again
    assert earlier.outcome is Outcome.FAILED and rows(tmp_path / "state.sqlite", "test.held") == {}

    last = await p.gate.deliver(p.job("e1", fail=True), last_attempt=True)  # nobody sends it again
    assert (last.outcome, last.response().status) == (Outcome.ACCEPTED, 200)
    assert rows(tmp_path / "state.sqlite", "test.held") == {"e1": {"key": "e1"}}
    assert rows(tmp_path / "state.sqlite", "test.claims")["e1"]["lease_until"] == 0  # released with it
    p.gate.start()
    while p.calls.count("check e1") < 2:  # the recovery loop retries while the work fails
        await asyncio.sleep(0.05)
    failing[0] = False
    while rows(tmp_path / "state.sqlite", "test.held"):
        await asyncio.sleep(0.05)
    assert rows(tmp_path / "state.sqlite", "test.rows") == {"e1": {"by": "work"}}
    assert "done_at" in rows(tmp_path / "state.sqlite", "test.claims")["e1"]
    assert p.calls[-2:] == ["check e1", "work e1"] and p.calls.count("work e1") == p.calls.count("check e1") + 1


async def test_legacy_mode_keeps_claims_in_memory_and_never_checks(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock, legacy=True)
    assert await p.claims.claim("e1", {"received_at": clock.now, "lease_until": clock.now + LEASE_MS})
    clock.now += LEASE_MS + 1
    assert (await p.gate.deliver(p.job("e1", answered=True))).outcome is Outcome.DONE
    assert p.calls == ["work e1"]  # the "before" has no check
    assert rows(tmp_path / "state.sqlite", "test.claims") == {}


async def test_the_quota_refuses_past_per_user_and_its_row_does_not_grow(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    quota = UserQuota(p.rows, per_user=500, ttl_ms=24 * 3_600_000, clock=clock)
    sizes = []
    for i in range(500):
        writes = Writes()
        assert await quota.admit("alice", writes) is None
        await writes.commit()
        sizes.append(len(json.dumps(rows(tmp_path / "state.sqlite", "test.rows")["alice"])) if i % 100 == 0 else 0)
        clock.now += 1_000
    assert max(sizes) < 40  # one counter per bucket: the same bytes at 1 item and at 500
    refused = Writes()
    wait_ms = await quota.admit("alice", refused)
    assert wait_ms is not None and 0 < wait_ms <= 24 * 3_600_000 + 3_600_000 and refused.staged == []
    bob = Writes()
    assert await quota.admit("bob", bob) is None  # nobody else is touched by alice's refusal
    clock.now += 26 * 3_600_000  # every item of alice's has expired
    assert await quota.admit("alice", Writes()) is None


async def test_admissions_of_one_user_reading_the_store_count_each_other(procs: list[Process], tmp_path: Path) -> None:
    """Two admissions of a user whose row this process has not read yet (another gateway wrote
    it, or a restart): both read the store, and the second must count the first's item."""
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    quota = UserQuota(p.rows, per_user=2, ttl_ms=24 * 3_600_000, clock=clock)
    first = Writes()
    assert await quota.admit("alice", first) is None
    await first.commit()
    p.rows.memory.drop("alice")  # as another process would see it: in the store only
    a, b = Writes(), Writes()
    answers = await asyncio.gather(quota.admit("alice", a), quota.admit("alice", b))
    assert answers[0] is None and answers[1] is not None  # the second sees the first's count: 2 of 2
    assert b.staged == []


async def test_keyed_locks_serialise_one_key_and_forget_it_after() -> None:
    locks, order = KeyedLocks(), []

    async def hold(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag} in")
            await asyncio.sleep(0.01)
            order.append(f"{tag} out")

    await asyncio.gather(hold("a", "1"), hold("a", "2"), hold("b", "3"))
    assert order.index("1 out") < order.index("2 in")  # same key: one at a time
    assert order.index("3 in") < order.index("1 out")  # another key: not blocked
    assert len(locks) == 0


WRITE_OPS = ("register", "register_if_absent", "compare_and_set", "consume", "delete", "delete_if", "commit")


def writes_since(before: dict[str, int]) -> dict[str, int]:
    """Store write operations started since `before` (op_counts), by name."""
    return {op: n - before.get(op, 0) for op, n in op_counts().items() if op in WRITE_OPS and n != before.get(op, 0)}


def preparing(p: Process, *, row: str = "new") -> Callable[[Writes], Awaitable[None]]:
    """A prepare that reads `kept` and `row`, bumps `kept` and creates `row`."""

    async def prepare(writes: Writes) -> None:
        p.calls.append("prepare")
        kept = await p.rows.get("kept")
        assert await p.rows.get(row) is None
        writes.put(p.rows, "kept", {"n": (kept or {"n": 0})["n"] + 1})
        writes.put(p.rows, row, {"by": "prepare"})

    return prepare


async def test_prepared_writes_land_with_the_claim_in_one_write(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    db = tmp_path / "state.sqlite"
    before = op_counts()
    done = await p.gate.deliver(replace(p.job("e1"), prepare=preparing(p)))
    assert done.outcome is Outcome.DONE
    assert writes_since(before) == {"commit": 2}  # claim + prepared, then the work's rows + done
    assert rows(db, "test.rows") == {"kept": {"n": 1}, "new": {"by": "prepare"}, "e1": {"by": "work"}}

    before = op_counts()
    again = await p.gate.deliver(replace(p.job("e1"), prepare=preparing(p, row="other")))
    assert again.outcome is Outcome.ALREADY_DONE
    assert writes_since(before) == {"commit": 1}  # the claim that lost, and nothing with it
    assert rows(db, "test.rows") == {"kept": {"n": 1}, "new": {"by": "prepare"}, "e1": {"by": "work"}}
    assert await p.rows.get("other") is None and await p.rows.get("kept") == {"n": 1}  # memory forgot too
    assert p.calls == ["prepare", "work e1", "prepare"]


async def test_a_failed_work_puts_the_prepared_rows_back_in_the_release(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    db = tmp_path / "state.sqlite"
    await p.rows.record("kept", {"n": 5}, ttl_ms=60_000)
    before = op_counts()
    failed = await p.gate.deliver(replace(p.job("e1", fail=True), prepare=preparing(p)))
    assert failed.outcome is Outcome.FAILED
    assert writes_since(before) == {"commit": 2}  # claim + prepared, then release + undo
    assert rows(db, "test.rows") == {"kept": {"n": 5}}  # bumped row restored, new row gone
    assert rows(db, "test.claims")["e1"]["lease_until"] == 0
    assert p.rows.memory.get("kept").expires_at == clock.now + 60_000  # restored with the expiry it had
    assert await p.rows.get("new") is None and await p.rows.get("kept") == {"n": 5}

    retried = await p.gate.deliver(replace(p.job("e1"), prepare=preparing(p)))
    assert retried.outcome is Outcome.DONE  # a takeover: prepared again, checked, worked
    assert rows(db, "test.rows") == {"kept": {"n": 6}, "new": {"by": "prepare"}, "e1": {"by": "work"}}
    assert p.calls == ["prepare", "work e1", "prepare", "check e1", "work e1"]


async def test_a_work_refused_for_good_is_done_with_the_prepared_rows_put_back(
    procs: list[Process], tmp_path: Path
) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    p.gate = InboundGate(p.claims, lease_ms=LEASE_MS, holding=Holding(p.held, lambda k, v: None), clock=clock)
    db = tmp_path / "state.sqlite"
    await p.rows.record("kept", {"n": 5}, ttl_ms=60_000)

    async def refused(writes: Writes) -> str:
        writes.put(p.rows, "e1", {"by": "work"})
        raise Refused("not_in_channel")

    before = op_counts()
    job = replace(p.job("e1"), work=refused, prepare=preparing(p))
    answer = await p.gate.deliver(job, last_attempt=True)  # not held: nothing is left to finish
    assert (answer.outcome, answer.text, answer.response().status) == (Outcome.REFUSED, "refused", 200)
    assert writes_since(before) == {"commit": 2}  # claim + prepared, then done + undo
    assert rows(db, "test.rows") == {"kept": {"n": 5}}  # bumped row restored, new rows gone
    assert rows(db, "test.claims")["e1"]["done_at"] == clock.now and rows(db, "test.held") == {}
    clock.now += 2 * LEASE_MS
    again = await p.gate.deliver(replace(p.job("e1"), prepare=preparing(p)))  # the platform's retry
    assert again.outcome is Outcome.ALREADY_DONE and p.calls == ["prepare", "prepare"]  # no check, no work


async def test_a_prepare_that_fails_claims_nothing(procs: list[Process], tmp_path: Path) -> None:
    p = await new(procs, tmp_path, Clock())

    async def broken(writes: Writes) -> None:
        writes.put(p.rows, "half", {"by": "prepare"})
        raise ConnectionError("the platform did not answer")

    failed = await p.gate.deliver(replace(p.job("e1"), prepare=broken))
    assert (failed.outcome, failed.response().status) == (Outcome.FAILED, 503)
    assert rows(tmp_path / "state.sqlite", "test.claims") == {} and await p.rows.get("half") is None
    assert (await p.gate.deliver(p.job("e1"))).outcome is Outcome.DONE  # the retry is a first claim


async def test_a_job_without_work_is_one_conditional_write(procs: list[Process], tmp_path: Path) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    db = tmp_path / "state.sqlite"
    before = op_counts()
    done = await p.gate.deliver(Job("e1", prepare=preparing(p)))
    assert (done.outcome, done.response().status) == (Outcome.DONE, 200)
    assert writes_since(before) == {"commit": 1}
    assert rows(db, "test.claims")["e1"] == {"received_at": clock.now, "done_at": clock.now}
    assert rows(db, "test.rows") == {"kept": {"n": 1}, "new": {"by": "prepare"}}

    before = op_counts()
    duplicate = await p.gate.deliver(Job("e1", prepare=preparing(p, row="other")))
    assert duplicate.outcome is Outcome.ALREADY_DONE and duplicate.taken
    assert writes_since(before) == {"commit": 1}  # the claim that lost; nothing was written
    assert rows(db, "test.rows") == {"kept": {"n": 1}, "new": {"by": "prepare"}}


async def beside_a_dead_owner(procs: list[Process], tmp_path: Path, key: str) -> tuple[Clock, Process]:
    """A live process, and the lease of one that died holding `key` (it runs out after LEASE_MS)."""
    clock = Clock()
    alive = await new(procs, tmp_path, clock)
    path = tmp_path / "state.sqlite"
    store = open_keyed_store("gate", "test.claims", max_entries=1_000, default_ttl_ms=CLAIMS.ttl_ms, path=path)
    try:
        store.register(key, {"received_at": clock.now, "lease_until": clock.now + LEASE_MS})
    finally:
        store.close()
    return clock, alive


async def test_a_takeover_commits_the_prepared_writes_with_its_compare_and_set(
    procs: list[Process], tmp_path: Path
) -> None:
    clock, alive = await beside_a_dead_owner(procs, tmp_path, "e1")
    leased = await alive.gate.deliver(replace(alive.job("e1"), prepare=preparing(alive)))
    assert leased.outcome is Outcome.LEASED and await alive.rows.get("kept") is None  # nothing kept
    clock.now += LEASE_MS + 1
    took = await alive.gate.deliver(replace(alive.job("e1", answered=True), prepare=preparing(alive)))
    assert took.outcome is Outcome.ALREADY_DONE
    assert rows(tmp_path / "state.sqlite", "test.rows") == {
        "kept": {"n": 1},
        "new": {"by": "prepare"},
        "e1": {"by": "check"},
    }


async def test_a_prepare_that_skipped_its_reads_runs_again_before_a_takeover(
    procs: list[Process], tmp_path: Path
) -> None:
    clock, alive = await beside_a_dead_owner(procs, tmp_path, "e1")
    await alive.rows.record("kept", {"n": 1})  # committed with that claim: e1 counted already
    await alive.rows.record("counted e1", {"by": "prepare"})
    passes: list[tuple[str, bool]] = []

    def counting(key: str) -> Callable[[Writes], Awaitable[None]]:
        async def prepare(writes: Writes) -> None:  # counts `key` once; only an earlier attempt could have
            passes.append((key, writes.earlier_attempt))
            if not writes.earlier_attempt:
                writes.skipped_reads = True
            elif await alive.rows.get(f"counted {key}") is not None:
                return
            kept = await alive.rows.get("kept")
            writes.put(alive.rows, "kept", {"n": (kept or {"n": 0})["n"] + 1})
            writes.put(alive.rows, f"counted {key}", {"by": "prepare"})

        return prepare

    clock.now += LEASE_MS + 1
    took = await alive.gate.deliver(replace(alive.job("e1", answered=True), prepare=counting("e1")))
    fresh = await alive.gate.deliver(replace(alive.job("e2"), prepare=counting("e2")))
    assert (took.outcome, fresh.outcome) == (Outcome.ALREADY_DONE, Outcome.DONE)
    assert passes == [("e1", False), ("e1", True), ("e2", False)]  # read again only to take over
    assert rows(tmp_path / "state.sqlite", "test.rows")["kept"] == {"n": 2}  # e1 and e2, each once


async def test_while_the_store_fails_the_claim_is_decided_in_memory_and_the_writes_replayed(
    procs: list[Process], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)

    async def unreachable(writes: Any) -> bool:
        raise StateStoreError("UNAVAILABLE", "commit", "backend unreachable (test)")

    monkeypatch.setattr("chatstate.gateway.writes.commit_staged_async", unreachable)
    done = await p.gate.deliver(replace(p.job("e1"), prepare=preparing(p)))
    assert done.outcome is Outcome.DONE  # worked from memory
    assert (await p.gate.deliver(p.job("e1"))).outcome is Outcome.ALREADY_DONE  # the claim, in memory
    assert p.rows.mode == p.claims.mode == "degraded" and p.rows.pending_writes >= 1
    monkeypatch.undo()
    assert await p.rows.recover() and await p.claims.recover()
    assert rows(tmp_path / "state.sqlite", "test.rows") == {
        "kept": {"n": 1},
        "new": {"by": "prepare"},
        "e1": {"by": "work"},
    }
    assert "done_at" in rows(tmp_path / "state.sqlite", "test.claims")["e1"]


async def test_a_slow_prepare_does_not_write_a_lease_that_has_already_run_out(
    procs: list[Process], tmp_path: Path
) -> None:
    """The lease starts when the claim is written, not when the item arrived: a prepare whose
    reads stalled longer than a lease (a Redis failover) must not hand the item to another
    process while this one goes on to answer it (two answers)."""
    clock = Clock()
    first, second = await new(procs, tmp_path, clock), await new(procs, tmp_path, clock)

    async def stalled_reads(_writes: Writes) -> None:
        clock.now += 2 * LEASE_MS

    release = asyncio.Event()
    running = asyncio.create_task(first.gate.deliver(replace(first.job("e1", wait=release), prepare=stalled_reads)))
    while "work e1" not in first.calls:
        await asyncio.sleep(0.01)
    again = await second.gate.deliver(second.job("e1"))
    assert again.outcome is Outcome.LEASED and second.calls == []
    release.set()
    assert (await running).outcome is Outcome.DONE


def stall_claims(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Any:
    """Make every claim's write take a whole lease (a store failing over); returns the real commit."""
    commit = Writes.commit

    async def stalled(self: Writes, claim: Any = None) -> bool:
        if claim is not None:
            clock.now += LEASE_MS
        return await commit(self, claim)

    monkeypatch.setattr(Writes, "commit", stalled)
    return commit


async def test_a_claim_written_after_its_lease_ran_out_does_not_start_the_work(
    procs: list[Process], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's own write stalled past the lease: another process may hold the item by now,
    so the work does not start; the platform's retry takes it over and checks first."""
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    commit = stall_claims(monkeypatch, clock)
    answer = await p.gate.deliver(p.job("e1"))
    assert (answer.outcome, answer.response().status, p.calls) == (Outcome.LEASED, 503, [])
    monkeypatch.setattr(Writes, "commit", commit)
    clock.now += LEASE_MS
    retried = await p.gate.deliver(p.job("e1"))
    assert retried.outcome is Outcome.DONE and p.calls == ["check e1", "work e1"]


async def test_a_claim_written_too_late_on_the_last_attempt_is_held_for_the_recovery_loop(
    procs: list[Process], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    p = await new(procs, tmp_path, clock)
    p.gate = InboundGate(
        p.claims, lease_ms=LEASE_MS, holding=Holding(p.held, lambda k, v: p.job(v["key"])), clock=clock
    )
    commit = stall_claims(monkeypatch, clock)
    answer = await p.gate.deliver(p.job("e1"), last_attempt=True)  # no retry will come
    assert (answer.outcome, answer.response().status, p.calls) == (Outcome.ACCEPTED, 200, [])
    assert rows(tmp_path / "state.sqlite", "test.held") == {"e1": {"key": "e1"}}
    monkeypatch.setattr(Writes, "commit", commit)
    clock.now += LEASE_MS + 1  # the late claim's lease runs out: the recovery loop takes it over
    p.gate.start()
    while rows(tmp_path / "state.sqlite", "test.held"):
        await asyncio.sleep(0.05)
    assert p.calls == ["check e1", "work e1"]


async def test_a_slow_work_renews_its_lease_and_is_not_taken_over(procs: list[Process], tmp_path: Path) -> None:
    """A work that outlasts its lease (a platform answering 429s for a while) renews the lease
    while it runs, so another gateway meets a live lease, not a dead owner's: one answer."""
    clock = Clock()
    first, second = await new(procs, tmp_path, clock), await new(procs, tmp_path, clock)
    release = asyncio.Event()
    running = asyncio.create_task(first.gate.deliver(first.job("e1", wait=release)))
    while "work e1" not in first.calls:
        await asyncio.sleep(0.01)
    for _ in range(4):  # two leases pass while the work runs, each renewal seen in the file
        clock.now += LEASE_MS // 2
        for _ in range(200):
            if rows(tmp_path / "state.sqlite", "test.claims")["e1"]["lease_until"] > clock.now + LEASE_MS // 2:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the running work's lease was not renewed")
    again = await second.gate.deliver(second.job("e1"))
    assert again.outcome is Outcome.LEASED and second.calls == []
    release.set()
    assert (await running).outcome is Outcome.DONE and first.calls == ["work e1"]
    assert "done_at" in rows(tmp_path / "state.sqlite", "test.claims")["e1"]


async def test_while_a_shared_store_fails_over_two_gateways_never_both_answer(own_redis: RedisServer) -> None:
    """On Redis other gateways get the same deliveries (a load balancer, a redelivery). While the
    store fails (a failover), a claim decided in one process's memory would be decided in the
    other's too, and both would answer: for the length of a failover the delivery is refused
    with a short Retry-After instead, and once the store is back exactly one gateway works on it.
    An outage longer than that falls back to memory, so the bot keeps answering."""
    url = f"{own_redis.url}?prefix=gate&retries=0&socket_connect_timeout_s=0.2"
    clock, calls, gates = Clock(), [], []

    class Shared:
        plugin_id, log = "gate", logging.LoggerAdapter(logging.getLogger("test.gate"))

        async def open_keyed_store(self, namespace: str, **kw: Any) -> Any:
            return await open_async_keyed_store("gate", namespace, url=url, **kw)

    for _ in "ab":
        claims = AdapterState(CLAIMS, legacy=False, clock=clock)
        await claims.open(Shared())
        gates.append(InboundGate(claims, lease_ms=LEASE_MS, clock=clock))

    def job(name: str, key: str) -> Job:
        async def work(writes: Writes) -> str:
            calls.append(name)
            return "answered"

        return Job(key, work=work)

    try:
        own_redis.stop(kill=True)
        during = await asyncio.gather(*(g.deliver(job(n, "k")) for g, n in zip(gates, "ab")))
        assert calls == [] and [(a.outcome, a.retry_after_s) for a in during] == [(Outcome.LEASED, 1)] * 2
        own_redis.start()
        after = await asyncio.gather(*(g.deliver(job(n, "k")) for g, n in zip(gates, "ab")))
        assert len(calls) == 1 and sorted(a.outcome.value for a in after) in (
            ["done", "leased"],
            ["already_done", "done"],
        )

        clock.now += 2 * SHARED_OUTAGE_WAIT_MS
        own_redis.stop(kill=True)  # a long outage: past a failover's length, memory decides
        for _ in range(2):  # retried through the outage, refused while it is younger than a failover
            assert (await gates[0].deliver(job("a", "k2"))).outcome is Outcome.LEASED
            clock.now += SHARED_OUTAGE_WAIT_MS // 2
        assert (await gates[0].deliver(job("a", "k2"))).outcome is Outcome.DONE
        assert calls[-1] == "a" and len(calls) == 2
    finally:
        own_redis.start()
        for g in gates:
            await g.claims.close()


async def test_a_claim_the_primary_applied_but_no_replica_acknowledged_is_worked_on(own_redis: RedisServer) -> None:
    """With `min_replicas_acked`, a claim the primary applied but no replica acknowledged in time
    fails (UNAVAILABLE: "applied on the primary") during a failover. Its row is then this gate's
    own lease: the store decided, so the gate works on the item. Leaving it would leave a live
    lease that refuses the platform's retry, and a Discord interaction (never sent again)
    unanswered. Another gateway's copy of the delivery still finds the row and does nothing."""
    url = f"{own_redis.url}?prefix=acked&min_replicas_acked=1&replica_ack_timeout_ms=10"  # no replica at all
    calls: list[str] = []

    class Shared:
        plugin_id, log = "gate", logging.LoggerAdapter(logging.getLogger("test.gate"))

        async def open_keyed_store(self, namespace: str, **kw: Any) -> Any:
            return await open_async_keyed_store("gate", namespace, url=url, **kw)

    gates = []
    for _ in "ab":
        claims = AdapterState(CLAIMS, legacy=False)
        await claims.open(Shared())
        gates.append(InboundGate(claims, lease_ms=LEASE_MS))

    def job(name: str) -> Job:
        async def work(writes: Writes) -> str:
            calls.append(name)
            return "answered"

        return Job("k", work=work)

    try:
        first = await gates[0].deliver(job("a"))
        assert (first.outcome, calls) == (Outcome.DONE, ["a"]), first
        assert gates[0].claims.mode == "degraded"  # the done mark waits for a replica, kept for replay
        second = await gates[1].deliver(job("b"))
        assert second.outcome in (Outcome.LEASED, Outcome.ALREADY_DONE) and calls == ["a"], second
    finally:
        for g in gates:
            await g.claims.close()
