"""The narrow interface a storage backend implements; validation and JSON live above it.

A backend gets validated, serialized input and the caller's `now_ms`, and must make
`write(..., if_absent=True)` and `consume` atomic on its own (one statement, one transaction or
one script), because two gateway processes may race on the same key.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Row(NamedTuple):
    key: str
    value: str  # JSON text as stored
    created_at: int  # ms since epoch
    expires_at: int | None  # ms since epoch; None = never


class Limits(NamedTuple):
    max_entries: int
    overflow: str  # "evict-oldest" | "reject-new"


class Backend(Protocol):
    location: str  # a file path or a URL without credentials: goes into error messages

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
        if_absent: bool,
    ) -> bool:
        """Upsert (or claim when `if_absent`) a row, then enforce the caps; False = live row kept."""
        ...

    def read(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None: ...

    def take(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> Row | None: ...

    def remove(self, plugin_id: str, namespace: str, key: str, *, now_ms: int) -> bool: ...

    def remove_all(self, plugin_id: str, namespace: str, *, now_ms: int) -> int: ...

    def scan(self, plugin_id: str, namespace: str, *, now_ms: int) -> list[Row]: ...

    def sweep(self, *, now_ms: int) -> int: ...

    def checkpoint(self) -> None: ...

    def release(self) -> bool:
        """Drop one user; the last one checkpoints and closes. True = closed."""
        ...
