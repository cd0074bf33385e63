"""The sync store: a view of one (plugin_id, namespace) onto an open database. Validation, JSON, versions and
clocks are written here once for both backends; every call is counted and timed on prometheus_client's default
REGISTRY (the metrics: docs/state.md). Each method's errors are docs/state.md's "Errors" table."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Histogram

from ._spec import (
    UPDATE_ATTEMPTS,
    Clock,
    Entry,
    Json,
    Mode,
    NamespaceSpec,
    Row,
    StateStoreError,
    Write,
    check_int,
    check_key,
    check_keys,
    check_page,
    check_ttl,
    check_version,
    new_version,
    serialize_value,
)

if TYPE_CHECKING:
    from ._database import Location

# -- metrics ---------------------------------------------------------------------------------
OPERATIONS = Counter(
    "chatstate_store_operations",
    "Keyed-store operations finished in this process, by outcome (ok or the error code).",
    ["op", "backend", "outcome"],
)
BUCKETS_S = (*(float(f"{m}e{e}") for e in range(-5, 1) for m in (1, 2.5, 5)), 10.0)  # 10 us .. 10 s, 1-2.5-5
SECONDS = Histogram(
    "chatstate_store_operation_seconds",
    "Duration of successful keyed-store operations in this process (the calling thread's wall time).",
    ["op", "backend"],
    buckets=BUCKETS_S,
)
F = TypeVar("F", bound=Callable[..., Any])
_MEASURED: set[str] = set()  # the ops `measured` counts: a store looks their metric children up once


def op_counts() -> dict[str, int]:
    """How many store operations this process has run, by name (all outcomes; none run: left out)."""
    total: Tally[str] = Tally()
    for metric in OPERATIONS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total[sample.labels["op"]] += int(sample.value)
    return {op: n for op, n in total.items() if n}


def measured(op: str) -> Callable[[F], F]:
    """Decorate a store method: count every call by outcome under `op`, time a successful one.
    The labelled children are looked up once per store (`labels()` costs more than the update)."""
    _MEASURED.add(op)

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: KeyedStore, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = fn(self, *args, **kwargs)
            except BaseException as exc:
                code = exc.code.value if isinstance(exc, StateStoreError) else "error"
                OPERATIONS.labels(op, self.backend_kind, code).inc()
                raise
            ok, observe = self._ok[op]
            ok()
            observe(time.perf_counter() - started)
            return result

        return run  # type: ignore[return-value]

    return wrap


_raw_decode = json.JSONDecoder().raw_decode


# -- the store -------------------------------------------------------------------------------
class KeyedStore(AbstractContextManager["KeyedStore"]):
    """A keyed store bound to one (plugin_id, namespace); every call sees only that pair."""

    def __init__(self, database: Location, spec: NamespaceSpec, clock: Clock) -> None:
        self.database = database  # the open database this store is a view onto
        self.spec = spec
        self.plugin_id, self.namespace = spec.plugin_id, spec.namespace
        self.max_entries, self.default_ttl_ms = spec.max_entries, spec.default_ttl_ms
        self.overflow, self.max_value_bytes = spec.overflow, spec.max_value_bytes
        self._backend = database.backend
        self.location = self._backend.location  # the file, or the URL without credentials
        self.backend_kind = kind = self._backend.kind  # the `backend` label of the metrics
        self._ok = {op: (OPERATIONS.labels(op, kind, "ok").inc, SECONDS.labels(op, kind).observe) for op in _MEASURED}
        self._clock, self._closed, self._close_lock = clock, False, threading.Lock()

    def __repr__(self) -> str:
        return f"<KeyedStore {self.plugin_id}/{self.namespace} at {self.location}>"

    def _now(self, op: str) -> int:
        """The clock, read by every operation: refused on a closed store."""
        if self._closed:
            raise StateStoreError("UNAVAILABLE", op, "the store is closed", path=self.location)
        return self._clock()

    def _decode(self, row: Row, op: str = "lookup") -> Any:
        try:  # stored JSON is compact: raw_decode skips json.loads' two whitespace regex matches
            value, end = _raw_decode(row.value)
            if end == len(row.value):
                return value
        except ValueError:
            pass
        try:
            return json.loads(row.value)
        except ValueError:
            message = f"stored JSON for a key of {len(row.key.encode())} bytes is unreadable"
            raise StateStoreError("CORRUPT", op, message, path=self.location) from None

    def _entry(self, row: Row, op: str) -> Entry:
        return Entry(row.key, self._decode(row, op), row.created_at, row.expires_at, row.version)

    def _write(self, mode: Mode, key: str, value: Any, ttl_ms: int | None, expect: int | None = None) -> bool:
        op = mode.value
        key, text, ttl = check_key(key, op), serialize_value(value, op, self.max_value_bytes), check_ttl(ttl_ms, op)
        return self._backend.write(self._prepared(op, mode, key, text, ttl, expect))

    def _prepared(self, op: str, mode: Mode, key: str, text: str | None, ttl: int | None, expect: int | None) -> Write:
        """The Write a backend applies, the clock read now: it expires after `ttl`, else the
        store's default_ttl_ms, else never (a delete: no expiry)."""
        now = self._now(op)
        ttl = self.default_ttl_ms if ttl is None else ttl
        expires_at = None if ttl is None or text is None else now + ttl
        return Write(self.spec, key, text, now, expires_at, new_version(), mode, expect)

    # -- the contract ---------------------------------------------------------------------
    @measured("register")
    def register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> None:
        """Upsert `value` under `key`: a new version, the newest row, TTL `ttl_ms` or default_ttl_ms; then the cap."""
        self._write(Mode.UPSERT, key, value, ttl_ms)

    @measured("register_if_absent")
    def register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> bool:
        """Claim `key` atomically: True if written, False if a live row holds it (of racing claimers, one wins)."""
        return self._write(Mode.CLAIM, key, value, ttl_ms)

    @measured("compare_and_set")
    def compare_and_set(self, key: str, value: Any, *, version: int, ttl_ms: int | None = None) -> bool:
        """Write as `register` only if the live row under `key` still has `version` (an Entry's), else False."""
        return self._write(Mode.MATCH, key, value, ttl_ms, check_version(version, "compare_and_set"))

    @measured("update")
    def update(
        self, key: str, fn: Callable[[Any], Any], *, ttl_ms: int | None = None, max_attempts: int = UPDATE_ATTEMPTS
    ) -> Any:
        """Store and return `fn(live value or None)`: a claim or a compare_and_set on the version read, `fn`
        (pure) called again on a lost race, up to `max_attempts` times, then CONFLICT."""
        attempts = check_int(max_attempts, 1, 1_000, "update", "max_attempts")
        check_ttl(ttl_ms, "update")
        for _ in range(attempts):
            entry = self.lookup_entry(key)
            new = fn(None if entry is None else entry.value)
            text = Json(serialize_value(new, "update", self.max_value_bytes))  # fn's bad value: update's error
            if entry is None:
                applied = self.register_if_absent(key, text, ttl_ms=ttl_ms)
            else:
                applied = self.compare_and_set(key, text, version=entry.version, ttl_ms=ttl_ms)
            if applied:
                return new
        message = f"the row kept changing: gave up after {attempts} attempts"
        raise StateStoreError("CONFLICT", "update", message, path=self.location)

    @measured("lookup")
    def lookup(self, key: str) -> Any | None:
        """Return the live value under `key`, or None."""
        row = self._backend.read(self.spec, check_key(key, "lookup"), self._now("lookup"))
        return None if row is None else self._decode(row)

    @measured("lookup")
    def lookup_entry(self, key: str) -> Entry | None:
        """Return the live row under `key` as an Entry (with its version), or None."""
        row = self._backend.read(self.spec, check_key(key, "lookup"), self._now("lookup"))
        return None if row is None else self._entry(row, "lookup")

    @measured("lookup_many")
    def lookup_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return {key: value} for the live rows among `keys` (at most 1,000), in one round trip."""
        wanted = check_keys(keys, "lookup_many")
        if not wanted:
            return {}
        rows = self._backend.read_many(self.spec, wanted, self._now("lookup_many"))
        return {row.key: self._decode(row, "lookup_many") for row in rows}

    @measured("consume")
    def consume(self, key: str) -> Any | None:
        """Read and delete the live row under `key` atomically (one racer gets it); None if none. Unreadable
        JSON raises CORRUPT and the row is kept."""
        key = check_key(key, "consume")
        decode = functools.partial(self._decode, op="consume")
        return self._backend.take(self.spec, key, self._now("consume"), decode)

    @measured("delete")
    def delete(self, key: str) -> bool:
        """Delete the row under `key`; True if a live row was removed."""
        return self._backend.remove(self.spec, check_key(key, "delete"), self._now("delete"))

    @measured("delete_if")
    def delete_if(self, key: str, *, version: int) -> bool:
        """Delete the live row under `key` only if it still has `version` ("only if still mine"); True if it went."""
        key, expect = check_key(key, "delete_if"), check_version(version, "delete_if")
        return self._backend.remove(self.spec, key, self._now("delete_if"), expect)

    @measured("clear")
    def clear(self) -> int:
        """Delete every row of this namespace; returns how many were live."""
        return self._backend.remove_all(self.spec, self._now("clear"))

    @measured("count")
    def count(self) -> int:
        """How many live rows this namespace holds."""
        return self._backend.count(self.spec, self._now("count"))

    @measured("entries")
    def entries(self, *, limit: int | None = None, after: Entry | None = None) -> list[Entry]:
        """Return live rows by (created_at, key): at most `limit` (1..10,000), after the Entry `after` (stable:
        a row written meanwhile moves to the end)."""
        page_limit, cursor = check_page(limit, after)
        rows = self._backend.scan(self.spec, self._now("entries"), page_limit, cursor)
        return [self._entry(r, "entries") for r in rows]

    # -- staged writes: several namespaces of one database in one transaction ----------------
    def _stage(self, mode: Mode, key: str, value: Any, ttl_ms: int | None, expect: int | None = None) -> StagedWrite:
        text = None if mode is Mode.DELETE else serialize_value(value, "commit", self.max_value_bytes)
        return StagedWrite(self, check_key(key, "commit"), text, check_ttl(ttl_ms, "commit"), mode, expect)

    def stage_register(self, key: str, value: Any, *, ttl_ms: int | None = None) -> StagedWrite:
        """Check and serialize a `register` now, for `commit_staged`; no I/O (errors: operation "commit")."""
        return self._stage(Mode.UPSERT, key, value, ttl_ms)

    def stage_register_if_absent(self, key: str, value: Any, *, ttl_ms: int | None = None) -> StagedWrite:
        """Stage a `register_if_absent`: the whole commit holds only if no live row is under `key`."""
        return self._stage(Mode.CLAIM, key, value, ttl_ms)

    def stage_compare_and_set(self, key: str, value: Any, *, version: int, ttl_ms: int | None = None) -> StagedWrite:
        """Stage a `compare_and_set`: the whole commit holds only if the live row has `version`."""
        return self._stage(Mode.MATCH, key, value, ttl_ms, check_version(version, "commit"))

    def stage_delete(self, key: str) -> StagedWrite:
        """Check a `delete` now, for `commit_staged`."""
        return self._stage(Mode.DELETE, key, None, None)

    @measured("commit")
    def _commit(self, staged: list[StagedWrite]) -> bool:
        """`commit_staged`, timed and counted under this store's backend."""
        if any(w.store._backend is not self._backend for w in staged):
            message = "staged writes must all belong to stores on one database"
            raise StateStoreError("INVALID_INPUT", "commit", message, path=self.location)
        writes = [w.store._prepared("commit", w.mode, w.key, w.value, w.ttl_ms, w.expect) for w in staged]
        return self._backend.commit(writes)

    def close(self) -> None:
        """Release the store (the database's last holder checkpoints and closes it). Calls in
        flight finish first, later ones raise UNAVAILABLE; closing twice is a no-op."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.database.close_store(self.spec)

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class StagedWrite:
    """A write a `stage_*` method checked and serialized for `commit_staged`, with the store it was staged on."""

    store: KeyedStore
    key: str
    value: str | None  # the JSON text to store; None = delete
    ttl_ms: int | None  # as given; None = the store's default_ttl_ms
    mode: Mode = Mode.UPSERT  # CLAIM / MATCH: a condition the whole commit depends on
    expect: int | None = None  # the version a MATCH write requires


def commit_staged(writes: Iterable[StagedWrite]) -> bool:
    """Apply staged writes of stores on one database in order in one transaction, all or none: False, nothing
    written, when a staged condition failed (docs/state.md, "Staged writes")."""
    staged = staged_list(writes)
    return staged[0].store._commit(staged) if staged else True


def staged_list(writes: Iterable[StagedWrite]) -> list[StagedWrite]:
    if isinstance(writes, (str, bytes)) or not isinstance(writes, Iterable):
        raise StateStoreError("INVALID_INPUT", "commit", "writes must be a list of staged writes")
    staged = list(writes)
    if not all(isinstance(w, StagedWrite) for w in staged):
        raise StateStoreError("INVALID_INPUT", "commit", "writes must come from the stage_* methods of a store")
    return staged
