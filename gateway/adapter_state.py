"""The migration pattern every adapter (and the core's approvals and echo) uses, written once.

It lives in the gateway package so the gateway can use it without importing adapters; the
exactly-once gate built on it is `gateway/gate.py`. `AdapterState` keeps a TTL'd, capped dict
as a hot cache in front of the keyed store, and
- every write is awaited on the keyed store before the caller reports its action done, so a
  SIGKILL right after the bot's reply loses nothing;
- a read goes to memory, then the store, and caches the *stored* expiry (a hit never restarts
  the TTL window);
- claims (`register_if_absent`) and single-use takes (`consume`) go to the store, because only
  it is atomic across processes;
- a store failure degrades to memory (reported by `health()`, shown in /healthz), keeps the
  failed writes, and replays them on the next call that finds the store working again; except
  that no claim is decided in memory while a shared store fails over (`failing_over`).
`legacy=True` is the "before": memory only, same TTL and cap, for side-by-side demos. Keys and
values are checked by the store's own rules in both modes (a string key, trimmed, 1..512 bytes;
plain JSON values), so a plugin that passes in legacy mode passes in store mode: a list or tuple
key is `StateStoreError` INVALID_INPUT in both, never a 500 from `unhashable type`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatstate.gateway import metrics
from chatstate.gateway.clock import Clock, now_ms
from chatstate.gateway.memory import MemoryMap
from chatstate.state import Entry, StateStoreError, _spec  # _spec: the store's key and value rules

if TYPE_CHECKING:
    from chatstate.gateway.plugin import PluginRuntime
    from chatstate.state import AsyncKeyedStore, StagedWrite

# Store refusals of the key or value itself: raised to the caller (the gateway answers 400), never
# a reason to degrade to memory, since the store is fine (health degrades on faults only).
CALLER_ERRORS = ("INVALID_INPUT", "LIMIT_EXCEEDED")
SHARED_OUTAGE_WAIT_MS = 10_000  # longer than a Sentinel election or a Cluster failover takes
log = logging.getLogger("chatstate.adapters")


@dataclass(frozen=True)
class Staged:
    """One write held for the gate's done transaction (`AdapterState.stage`); `entry` None is a
    delete, `write` None means memory only (legacy)."""

    state: AdapterState
    key: str
    entry: Entry | None
    write: StagedWrite | None


@dataclass(frozen=True)
class StateSpec:
    """What an adapter keeps for one namespace: a row of the table in docs/migrating-an-adapter.md."""

    namespace: str
    ttl_ms: int | None  # default TTL of a row; None = until deleted
    max_entries: int
    core_id: str | None = None  # set (e.g. "core:approvals") for a core-owned store


class AdapterState:
    """One namespace of one adapter: memory in front, the keyed store behind."""

    def __init__(self, spec: StateSpec, *, legacy: bool, clock: Clock = now_ms) -> None:
        self.spec = spec
        self.legacy = legacy
        self._clock = clock
        self.memory = MemoryMap(max_entries=spec.max_entries, clock=clock)
        self._store: AsyncKeyedStore | None = None
        self._pending: OrderedDict[str, Entry | None] = OrderedDict()  # None = a failed delete
        self.last_error: str | None = None
        self.failing_since: int | None = None  # first failure of the store's latest outage (ms)
        self._failed_at = 0  # its latest failure: a failure within SHARED_OUTAGE_WAIT_MS of it is the same outage
        self.plugin_id: str | None = None  # set by open(); labels metrics and log lines
        self._logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log

    async def open(self, runtime: PluginRuntime) -> None:
        """Open the keyed store (not in legacy mode); a spec with `core_id` opens the core-owned
        store through `runtime.open_core_store`. Raises what `open_keyed_store` raises."""
        self.plugin_id = runtime.plugin_id
        self._logger = runtime.log
        metrics.track_adapter_state(self)  # mode and pending writes at /metrics
        if self.legacy:
            return
        spec = self.spec
        if spec.core_id is None:
            opening = runtime.open_keyed_store(spec.namespace, max_entries=spec.max_entries, default_ttl_ms=spec.ttl_ms)
        else:
            opening = runtime.open_core_store(
                spec.core_id, spec.namespace, max_entries=spec.max_entries, default_ttl_ms=spec.ttl_ms
            )
        self._store = await opening

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- health ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        if self.legacy:
            return "legacy"
        return "degraded" if self.last_error else "store"

    @property
    def shared(self) -> bool:
        """Do other gateways use this store too (Redis), so that memory alone cannot decide a claim?"""
        return getattr(getattr(self._store, "sync", None), "backend_kind", None) == "redis"

    @property
    def failing_over(self) -> bool:
        """Is the store shared and failing for less than SHARED_OUTAGE_WAIT_MS (a failover's
        length)? Then no claim is decided in this process's memory: another gateway would decide
        the same claim in its own memory, and both would act. The caller's retry (or the
        platform's) goes to the store once it is back; past that, memory decides again, so the
        bot keeps answering through a long outage."""
        young = self.failing_since is not None and self._clock() - self.failing_since < SHARED_OUTAGE_WAIT_MS
        return young and self.last_error is not None and self.shared

    def _in_memory(self, op: str) -> None:
        """Refuse to decide `op` in memory while `failing_over`: StateStoreError (the store's code)."""
        if self.failing_over:
            raise StateStoreError(self.last_error or "UNAVAILABLE", op, "a shared store is failing over: try again")

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @property
    def pending_writes(self) -> int:
        """Writes (and deletes) kept while the store failed, waiting to be replayed."""
        return len(self._pending)

    def health(self) -> dict[str, Any]:
        return {
            "namespace": self.spec.namespace,
            "mode": self.mode,
            "last_error": self.last_error,
            "pending_writes": len(self._pending),
            "cached": len(self.memory),
        }

    @contextlib.contextmanager
    def _degrading(self) -> Iterator[None]:
        """Around a store call: a fault degrades the state and is swallowed (the caller falls back
        to memory); INVALID_INPUT / LIMIT_EXCEEDED are the caller's error (400) and raised."""
        try:
            yield
        except StateStoreError as exc:
            if exc.code in CALLER_ERRORS:
                raise
            self.degrade(exc)

    def degrade(self, exc: StateStoreError) -> None:
        now = self._clock()
        if self.failing_since is None or now - self._failed_at >= SHARED_OUTAGE_WAIT_MS:
            self.failing_since = now
        self._failed_at = now
        if self.last_error is None:
            self._logger.warning("adapter_state_degraded", extra={"namespace": self.namespace, "code": str(exc.code)})
        self.last_error = str(exc.code)

    async def recover(self) -> bool:
        """Try the store again now, replaying writes kept while degraded: True when it is usable.
        Reads served from memory never touch the store, so a caller that must not act on memory
        alone while degraded (echo's counters) calls this first."""
        if self._store is None:
            return False
        replayed = 0
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            try:
                if entry is None:
                    await self._store.delete(key)
                else:
                    ttl = None if entry.expires_at is None else entry.expires_at - self._clock()
                    if ttl is None or ttl > 0:
                        await self._store.register(key, entry.value, ttl_ms=ttl)
            except StateStoreError as exc:
                self.degrade(exc)
                return False
            self._pending.pop(key, None)
            replayed += 1
        if self.last_error is not None:
            self._logger.info("adapter_state_recovered", extra={"namespace": self.spec.namespace, "replayed": replayed})
        self.last_error = None
        return True

    def remember(self, key: str, entry: Entry | None) -> None:
        """Queue a write (or, with None, a delete) for replay; bounded like the namespace itself,
        since rows past max_entries would be evicted on replay anyway."""
        self._pending.pop(key, None)
        self._pending[key] = entry
        while len(self._pending) > self.spec.max_entries:
            self._pending.popitem(last=False)

    def _entry(self, key: str, value: Any, ttl_ms: int | None) -> Entry:
        now = self._clock()
        ttl = self.spec.ttl_ms if ttl_ms is None else ttl_ms
        return Entry(key, value, now, None if ttl is None else now + ttl)

    # -- the operations adapters call -----------------------------------------------------
    # Keys and values are checked as the store checks them, up front in both modes: memory never
    # holds a row the store would refuse (a degraded store replays memory's rows later). The store
    # is handed them checked (`_spec.Key`, `_spec.Json`) and takes them as they are.
    async def record(self, key: str, value: Any, *, ttl_ms: int | None = None, or_raise: bool = False) -> None:
        """Remember `value` under `key`, durably unless legacy; returns once it is on disk.
        A store failure does not raise: the row stays in memory, is replayed later, and the
        adapter shows as degraded. With `or_raise` (a write that must reach the store or not
        happen at all, like echo's counter) it does: the state shows as degraded, nothing is kept,
        and the StateStoreError is raised. INVALID_INPUT/LIMIT_EXCEEDED (a programming error)
        always raise, in legacy mode too, and leave nothing behind."""
        key = _spec.check_key(key, "register")
        text = _spec.Json(_spec.serialize_value(value, "register"))
        entry = self._entry(key, value, ttl_ms)
        previous = self.memory.get(key)
        self.memory.put(entry)
        store = self._store
        if store is None:
            return
        try:
            # a healthy state has nothing to replay: no await for recover() on every write
            if (self.last_error is not None or self._pending) and not await self.recover():
                raise StateStoreError(self.last_error or "UNAVAILABLE", "register", "the store is failing")
            await store.register(_spec.Key(key), text, ttl_ms=ttl_ms)
        except StateStoreError as exc:
            if exc.code not in CALLER_ERRORS:
                self.degrade(exc)
                if not or_raise:
                    self.remember(key, entry)  # kept in memory, replayed once the store is back
                    return
            self.memory.drop(key)
            if previous is not None and exc.code not in CALLER_ERRORS:
                self.memory.put(previous)  # or_raise: the write did not happen, the old row stands
            raise

    def stage(self, key: str, value: Any = None, *, ttl_ms: int | None = None, delete: bool = False) -> Staged:
        """Check a write (or delete) now and hold it for one transaction (`writes.Writes.commit`).
        Memory shows it at once, so this process's next read (a quota count) sees it; a
        discarded stage drops the key from memory and the next read goes to the store.
        Raises StateStoreError INVALID_INPUT / LIMIT_EXCEEDED, in both modes alike."""
        if delete:
            key = _spec.check_key(key, "delete")
            self.memory.drop(key)
            return Staged(self, key, None, None if self._store is None else self._store.stage_delete(_spec.Key(key)))
        key = _spec.check_key(key, "register")
        text = _spec.Json(_spec.serialize_value(value, "register"))
        entry = self._entry(key, value, ttl_ms)
        write = None if self._store is None else self._store.stage_register(_spec.Key(key), text, ttl_ms=ttl_ms)
        self.memory.put(entry)
        return Staged(self, key, entry, write)

    def stage_claim(self, key: str, value: Any, *, version: int | None = None, ttl_ms: int | None = None) -> Staged:
        """Check a claim of `key` for one transaction (`writes.Claim`): it holds only if no live row
        is under `key` (as `claim`), or with `version` only if the row is still at that version (as
        `take_over`); memory shows it once it holds. Raises as `stage`."""
        key = _spec.check_key(key, "register_if_absent")
        text = _spec.Json(_spec.serialize_value(value, "register_if_absent"))
        store, entry, checked = self._store, self._entry(key, value, ttl_ms), _spec.Key(key)
        if store is None:
            return Staged(self, key, entry, None)
        if version is None:
            return Staged(self, key, entry, store.stage_register_if_absent(checked, text, ttl_ms=ttl_ms))
        return Staged(self, key, entry, store.stage_compare_and_set(checked, text, version=version, ttl_ms=ttl_ms))

    async def take_over(self, key: str, value: Any, *, version: int, ttl_ms: int | None = None) -> bool:
        """Replace the row at `version` (a lease whose owner died) if nobody changed it since.
        Raises StateStoreError while the store is `failing_over`."""
        if self._store is not None and await self.recover():
            with self._degrading():
                won = await self._store.compare_and_set(key, value, version=version, ttl_ms=ttl_ms)
                if won:
                    self.memory.put(self._entry(key, value, ttl_ms))
                return won
            return False
        self._in_memory("compare_and_set")
        self.memory.put(self._entry(key, value, ttl_ms))
        return True

    async def get_entry(self, key: str, *, fresh: bool = False) -> Entry | None:
        """Return the live row: memory first (unless `fresh`: another process may have changed
        it, as with a lease), then the store (cached with its stored expiry)."""
        key = _spec.check_key(key, "lookup")
        entry = None if fresh and self._store is not None else self.memory.get(key)
        if entry is not None or self._store is None:
            return entry
        with self._degrading():
            entry = await self._store.lookup_entry(key)
            if entry is not None:
                self.memory.put(entry)
            return entry
        return None

    async def get(self, key: str) -> Any | None:
        entry = await self.get_entry(key)
        return None if entry is None else entry.value

    async def claim(self, key: str, value: Any, *, ttl_ms: int | None = None) -> bool:
        """Atomically take `key` if no live row holds it (across processes when not legacy).
        Raises StateStoreError while the store is `failing_over`."""
        key = _spec.check_key(key, "register_if_absent")
        _spec.serialize_value(value, "register_if_absent")  # checked up front, in both modes
        entry = self._entry(key, value, ttl_ms)
        if self._store is not None and await self.recover():
            with self._degrading():
                won = await self._store.register_if_absent(key, value, ttl_ms=ttl_ms)
                if won:
                    self.memory.put(entry)
                return won
        self._in_memory("register_if_absent")
        return self.memory.claim(entry)

    async def take(self, key: str) -> Any | None:
        """Read and remove the live row in one atomic step (exactly one of racing callers wins).
        Raises StateStoreError while the store is `failing_over` (memory forgets the row)."""
        key = _spec.check_key(key, "consume")
        cached = self.memory.take(key)
        if self._store is not None and await self.recover():
            with self._degrading():
                return await self._store.consume(key)
        self._in_memory("consume")
        if cached is not None and self._store is not None:
            self.remember(key, None)  # the store still holds it: delete once it is back
        return None if cached is None else cached.value

    async def entries(self) -> list[Entry]:
        """Live rows, oldest first: the store's when it is reachable (every process's rows),
        else this process's memory."""
        if self._store is not None and await self.recover():
            with self._degrading():
                return await self._store.entries()
        return self.memory.live()

    async def forget(self, key: str) -> bool:
        """Delete `key` everywhere; True if a live row was removed."""
        key = _spec.check_key(key, "delete")
        removed = self.memory.drop(key)
        if self._store is not None and await self.recover():
            with self._degrading():
                return await self._store.delete(key) or removed
        if self._store is not None:
            self.remember(key, None)
        return removed
