"""The gate's vocabulary: an inbound item as an adapter hands it to the gate (`Job`; `Holding`:
where one acked before its work is done is kept), what the gate answers (`Outcome`, `Answer`;
`Refused`, raised by a work the platform refused for good), and the item's writes, each set committed in one transaction: what its
prepare stages (with the gate's claim, one conditional write), and what its work stages (with
the done mark).

Each write goes through `AdapterState.stage`, so memory shows it at once and a store failure
degrades to memory and replays (AdapterState's rule). A staged row remembers the row this
process saw before it, so a prepare whose work then fails can be put back (`undo`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web

from chatstate.gateway.adapter_state import CALLER_ERRORS, AdapterState, Staged
from chatstate.gateway.clock import Clock, now_ms
from chatstate.state import Entry, StateStoreError, commit_staged_async


@dataclass
class Writes:
    """State writes staged by one item's prepare or work, committed in one transaction."""

    staged: list[Staged] = field(default_factory=list)
    clock: Clock = now_ms
    # for a prepare: may an earlier attempt at this item have written rows (the gate takes over
    # a dead owner's lease, or finishes a held item)? If not, the prepare may skip reading such
    # rows, saying so (`skipped_reads`): the gate then prepares again should the claim meet one
    earlier_attempt: bool = False
    skipped_reads: bool = False
    _before: list[Entry | None] = field(default_factory=list)  # each row as this process saw it before

    def put(self, state: AdapterState, key: str, value: Any, *, ttl_ms: int | None = None) -> None:
        before = state.memory.get(key)
        self.staged.append(state.stage(key, value, ttl_ms=ttl_ms))
        self._before.append(before)

    def delete(self, state: AdapterState, key: str) -> None:
        before = state.memory.get(key)
        self.staged.append(state.stage(key, delete=True))
        self._before.append(before)

    def discard(self) -> None:
        """Forget the staged writes (memory drops the keys; the next read goes to the store)."""
        for s in self.staged:
            s.state.memory.drop(s.key)
        self.staged.clear()
        self._before.clear()

    def undo(self, into: Writes) -> None:
        """Stage into `into` the writes that put these rows back as this process saw them
        before they were staged (a row that was absent is deleted). A row written again since
        (memory holds a newer value: another item's) is left as it is. The undo knows only what
        was read: stage a row after reading it (`AdapterState.get`), as a prepare does."""
        now = self.clock()
        for s, before in zip(self.staged, self._before, strict=True):
            if s.state.memory.get(s.key) is not s.entry:
                continue
            if before is None or (before.expires_at is not None and before.expires_at <= now):
                into.delete(s.state, s.key)
            else:
                ttl = None if before.expires_at is None else before.expires_at - now
                into.put(s.state, s.key, before.value, ttl_ms=ttl)

    async def commit(self, claim: Claim | None = None) -> bool:
        """Write everything in one transaction; with `claim`, only if the claim holds (True),
        else nothing is written (False). A store failure does not raise: each state degrades to
        memory and replays its writes once the store is back (AdapterState's rule), and the
        claim is decided in memory. Raises StateStoreError INVALID_INPUT / LIMIT_EXCEEDED (a
        programming error)."""
        stored = [s for s in self.staged if s.write is not None]
        if claim is not None and claim.staged.write is not None:
            stored.insert(0, claim.staged)
        states = list({id(s.state): s.state for s in stored}.values())
        if stored and all([await st.recover() for st in states]):
            try:
                if not await commit_staged_async([s.write for s in stored if s.write is not None]):
                    return False
            except StateStoreError as exc:
                if exc.code in CALLER_ERRORS:
                    raise
                for st in states:
                    st.degrade(exc)
            else:
                if claim is not None:
                    claim.staged.state.memory.put(claim.staged.entry)
                return True
        if claim is not None and not claim.in_memory():
            return False
        for s in stored:
            if s is not getattr(claim, "staged", None):
                s.state.remember(s.key, s.entry)
        return True


@dataclass(frozen=True)
class Claim:
    """A conditional write of the gate's claim row (`AdapterState.stage_claim`): it holds if
    no live row is under its key, or, with `version`, if the row is still at that version
    (a dead owner's lease). While the store fails it is decided in memory, as
    `AdapterState.claim` / `take_over` do."""

    staged: Staged
    version: int | None = None
    patient: bool = True  # the platform retries a refused delivery (not its last attempt)

    def in_memory(self) -> bool:
        """Decide the claim in this process's memory; a patient claim (refused, the platform
        retries it, and the store decides) never while its store is `failing_over`."""
        state, entry = self.staged.state, self.staged.entry
        assert entry is not None  # a claim writes a row
        if self.patient and state.failing_over:
            return False
        if self.version is None:
            return state.memory.claim(entry)
        state.memory.put(entry)
        return True


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
    work: Callable[[Writes], Awaitable[str]] | None = None  # do it, stage state writes; returns a word ("replied")
    # after a takeover: was it already answered? (then stage what is missing)
    answered: Callable[[Writes], Awaitable[bool]] | None = None
    hold: Any = None  # JSON the adapter's `resume` rebuilds this job from, if it outlives the ack budget
    # read what the work needs and stage what must be durable before its effect (committed with
    # the claim, in one transaction); a job without `work` is its prepared writes alone
    prepare: Callable[[Writes], Awaitable[None]] | None = None


class Outcome(Enum):
    """What became of one delivery."""

    DONE = "done"  # the work ran; its writes and the done mark are committed
    ALREADY_DONE = "already_done"  # a duplicate of a finished item (or the check found its answer)
    IN_PROGRESS = "in_progress"  # a duplicate of an item this process still works on after the ack budget
    ACCEPTED = "accepted"  # still running after the ack budget: held, finishes in the background
    LEASED = "leased"  # a live lease of another process holds it
    FAILED = "failed"  # the work raised; the claim is released for the platform's retry
    REFUSED = "refused"  # the platform refused the work's effect for good: done, nothing to retry
    DRAINING = "draining"  # the gateway is stopping


NOT_TAKEN = (Outcome.LEASED, Outcome.FAILED, Outcome.DRAINING)  # the platform must send it again


class Refused(Exception):
    """Raised by a work whose effect the platform refused for good (a documented final error,
    like Slack's `not_in_channel`): the same call would be refused on every retry."""


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
        headers = None if self.taken else {"Retry-After": str(self.retry_after_s)}
        return web.Response(status=200 if self.taken else 503, headers=headers, text=self.text)
