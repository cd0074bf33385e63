"""The in-process map with TTL and cap that `AdapterState` keeps: the legacy store (the "before"),
and the hot cache in front of the keyed store."""

from __future__ import annotations

from collections import OrderedDict

from chatstate.gateway.clock import Clock, now_ms
from chatstate.state import Entry


class MemoryMap:
    """The in-process map with TTL and cap: the legacy store, and the hot cache in front of
    the keyed store. Order is (created_at, key) like the store, so eviction matches."""

    def __init__(self, *, max_entries: int, clock: Clock = now_ms) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._rows: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> Entry | None:
        entry = self._rows.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= self._clock():
            del self._rows[key]
            return None
        return entry

    def put(self, entry: Entry) -> None:
        self._rows.pop(entry.key, None)
        self._rows[entry.key] = entry
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)  # oldest first; the row just put is the newest

    def claim(self, entry: Entry) -> bool:
        if self.get(entry.key) is not None:
            return False
        self.put(entry)
        return True

    def take(self, key: str) -> Entry | None:
        entry = self.get(key)
        self._rows.pop(key, None)
        return entry

    def drop(self, key: str) -> bool:
        return self._rows.pop(key, None) is not None

    def live(self) -> list[Entry]:
        """Live rows, oldest first."""
        return [e for e in list(self._rows.values()) if self.get(e.key) is not None]
