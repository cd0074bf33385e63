"""Limits and tunables of the store, as data. Numbers come from the reference system."""

from __future__ import annotations

from dataclasses import dataclass

MAX_NAMESPACE_BYTES = 128  # UTF-8 bytes, after trimming
MAX_KEY_BYTES = 512  # UTF-8 bytes, after trimming
MAX_VALUE_BYTES = 65_536  # default per-store limit: UTF-8 bytes of the compact JSON serialization
MAX_VALUE_BYTES_CEILING = 1_048_576  # the most a store may allow with `max_value_bytes=`
MAX_VALUE_DEPTH = 64  # nesting depth; the root value is depth 0
MAX_BATCH_KEYS = 1_000  # keys one `lookup_many` call may ask for
MAX_PAGE_ROWS = 10_000  # rows one `entries(limit=...)` page may hold
UPDATE_ATTEMPTS = 8  # default tries of `update` before it raises CONFLICT
SCHEMA_VERSION = 2  # PRAGMA user_version (and the Redis schema marker) written by this code
CORE_PREFIX = "core:"  # plugin ids with this prefix belong to the gateway (open with core=True)


@dataclass(frozen=True)
class StoreSettings:
    """Per-database tunables; the defaults are what the gateway uses."""

    # Deprecated, no effect since v2: the per-plugin ceiling could lock a namespace up for good
    # (issue 17); each namespace is bounded by its own max_entries. Still accepted and checked
    # so existing configs (`state.plugin_max_live_rows`) keep loading.
    plugin_max_live_rows: int = 50_000
    busy_timeout_s: float = 10.0  # how long a writer waits for the SQLite write lock (>= 5 s)
    sweep_batch_rows: int = 1_024  # expired rows deleted per sweep transaction (<= 1,024)

    def __post_init__(self) -> None:
        from ._errors import StateStoreError

        if not _positive_int(self.plugin_max_live_rows):
            raise StateStoreError("INVALID_INPUT", "open", "plugin_max_live_rows must be an integer >= 1")
        if not (isinstance(self.busy_timeout_s, (int, float)) and self.busy_timeout_s >= 5):
            raise StateStoreError("INVALID_INPUT", "open", "busy_timeout_s must be >= 5")
        if not (_positive_int(self.sweep_batch_rows) and self.sweep_batch_rows <= 1_024):
            raise StateStoreError("INVALID_INPUT", "open", "sweep_batch_rows must be 1..1024")


def _positive_int(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1
