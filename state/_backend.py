"""The interface a storage backend implements; validation and JSON live above it.

A backend gets validated, serialized input and the caller's `now_ms`, and must make every
write (`write` in each of its modes, `take`, `remove` with a version) atomic on its own (one
statement, one transaction or one script), because two gateway processes may race on one key.
Everything a caller of a backend uses is declared here, so nothing probes for attributes.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NamedTuple, Protocol

from ._settings import StoreSettings


class Row(NamedTuple):
    key: str
    value: str  # JSON text as stored
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never
    version: int  # changes on every write of the key; see docs/state.md "Versions"


class Limits(NamedTuple):
    max_entries: int
    overflow: str  # "evict-oldest" | "reject-new"


class Staged(NamedTuple):
    """One write of a staged commit (`commit_staged`), validated and serialized, with its clock read."""

    plugin_id: str
    namespace: str
    key: str
    value: str | None  # JSON text to upsert; None = delete the row
    now_ms: int
    expires_at: int | None
    limits: Limits
    version: int


class Mode(Enum):
    """What a write requires of the row already under the key."""

    UPSERT = "upsert"  # nothing: write whatever is there
    CLAIM = "claim"  # no live row (register_if_absent)
    MATCH = "match"  # a live row whose version is `expect` (compare_and_set)


Decode = Callable[[Row], Any]  # raises StateStoreError CORRUPT for unreadable JSON


class Backend(Protocol):
    kind: str  # "sqlite" | "redis": the `backend` label of the metrics
    location: str  # a file path or a URL without credentials: goes into error messages
    settings: StoreSettings
    one_writer: bool  # True: the async twin sends every write of this backend to one thread

    @property
    def closed(self) -> bool: ...

    def acquire(self) -> None:
        """Add one user (a store, a probe); `release` drops it."""
        ...

    def release(self) -> bool:
        """Drop one user; the last one checkpoints and closes. True = closed."""
        ...

    def abandon(self) -> None:
        """In a forked child: mark closed without touching what the parent still uses."""
        ...

    def reopened(self) -> None:
        """Another store joined the open backend: re-apply file modes (raises OPEN_FAILED)."""
        ...

    def fault(self) -> str | None:
        """The last post-commit problem that did not fail a write (e.g. chmod refused), or None."""
        ...

    def schema_version(self) -> int: ...

    def run_batch(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]] | None:
        """Run several writes in one transaction (group commit) or return None to run them alone."""
        ...

    def write(
        self,
        plugin_id: str,
        namespace: str,
        key: str,
        value: str,
        *,
        now_ms: int,
        expires_at: int | None,
        limits: Limits,
        mode: Mode,
        version: int,
        expect: int | None = None,
    ) -> bool:
        """Write the row with `version` if `mode` allows, then enforce max_entries; False = not applied."""
        ...

    def commit(self, writes: Sequence[Staged]) -> None:
        """Apply `writes` in order, all or nothing: each upsert as `write` in UPSERT mode (cap
        and eviction included), each delete as `remove`. A full reject-new namespace raises
        LIMIT_EXCEEDED (operation "commit") and nothing is written."""
        ...

    def read(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None: ...

    def read_many(self, plugin_id: str, namespace: str, keys: Sequence[str], *, now_ms: int) -> list[Row]: ...

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, decode: Decode) -> Any:
        """Delete the live row and return `decode(row)`, or None; if decode raises, keep the row."""
        ...

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int, expect: int | None = None) -> bool:
        """Delete the live row (only if its version is `expect`, when given); True if one went."""
        ...

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int: ...

    def scan(
        self,
        plugin_id: str,
        namespace: str,
        *,
        now_ms: int,
        limit: int | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[Row]:
        """Live rows in (created_at, key) order, those after the cursor `after`, at most `limit`."""
        ...

    def count(self, plugin_id: str, namespace: str, *, now_ms: int) -> int: ...

    def sweep(self, *, now_ms: int) -> int: ...

    def checkpoint(self, op: str = "close") -> None: ...


class Holders(abc.ABC):
    """The one count of a backend's users (the Database that opened it, each open store), for
    both backends: `acquire` adds one, the last `release` closes the backend. A backend sets
    `_lock`, `_users = 0` and `_closed = False`, and says how it closes in two parts:
    `_stop_calls` runs under `_lock` just after `_closed` is set (new calls now fail with
    UNAVAILABLE; it gathers or waits for the calls still running), and `_close_now` runs
    outside it with what `_stop_calls` returned (checkpoint, close connections)."""

    _lock: threading.Lock
    _users: int
    _closed: bool

    @property
    def closed(self) -> bool:
        return self._closed

    def acquire(self) -> None:
        """Add one user (a Database, a store); `release` drops it."""
        with self._lock:
            self._users += 1

    def release(self) -> bool:
        """Drop one user; the last one closes the backend. True = closed."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return False
            self._closed = True
            running = self._stop_calls()
        self._close_now(running)
        return True

    @abc.abstractmethod
    def _stop_calls(self) -> Any:
        """Under `_lock`, just after `_closed` is set: gather or wait for the calls in flight."""

    @abc.abstractmethod
    def _close_now(self, running: Any) -> None:
        """Outside `_lock`, with what `_stop_calls` returned: checkpoint, close connections."""
