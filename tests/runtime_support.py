"""`gateway.plugin.PluginRuntime` without the gateway, for the tests (and benchmarks) that run a
plugin, or some of its states, in-process: real async keyed stores on one SQLite file, opened
the way the gateway's runtime opens them; and a read-only look at the rows in such a file, so
a test checks what is on disk rather than what the adapter says."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatstate import state
from chatstate.gateway.clock import Clock
from chatstate.gateway.settings import AdapterSettings


class FileRuntime:
    """One plugin's runtime over the SQLite file `db`; `close()` closes every store it opened."""

    def __init__(
        self,
        plugin_id: str,
        db: Path,
        *,
        settings: AdapterSettings | None = None,
        legacy: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.db = db
        self.settings = settings  # what `XSettings.of(runtime)` reads: needed to start a plugin
        self.config: dict[str, Any] = {} if settings is None else settings.model_dump()
        self.legacy = legacy
        self.clock = clock
        self.log = logging.LoggerAdapter(logging.getLogger(f"test.{plugin_id}"), {})
        self.stores: list[state.AsyncKeyedStore] = []

    async def open_keyed_store(
        self, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None, overflow: str = "evict-oldest"
    ) -> state.AsyncKeyedStore:
        return await self._open(self.plugin_id, namespace, max_entries, default_ttl_ms, overflow=overflow)

    async def open_core_store(
        self, core_id: str, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None
    ) -> state.AsyncKeyedStore:
        return await self._open(core_id, namespace, max_entries, default_ttl_ms, core=True)

    async def _open(
        self, owner: str, namespace: str, max_entries: int, ttl_ms: int | None, **options: Any
    ) -> state.AsyncKeyedStore:
        store = await state.open_async_keyed_store(
            owner, namespace, max_entries=max_entries, default_ttl_ms=ttl_ms, path=self.db, clock=self.clock, **options
        )
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        self.stores.clear()


@dataclass(frozen=True)
class Row:
    """One stored row, its value decoded."""

    key: str
    value: Any
    created_at: int
    expires_at: int | None


def rows_on_disk(db: Path, plugin_id: str, namespace: str, *, live_at_ms: int | None = None) -> dict[str, Row]:
    """The rows of (plugin_id, namespace) in the SQLite file `db` by key, read-only (none while
    there is no file): every row, or only those still live at `live_at_ms`."""
    if not db.exists():
        return {}
    sql = "SELECT key, value, created_at, expires_at FROM entries WHERE plugin_id = ? AND namespace = ?"
    params: tuple[Any, ...] = (plugin_id, namespace)
    if live_at_ms is not None:
        sql, params = sql + " AND (expires_at IS NULL OR expires_at > ?)", (*params, live_at_ms)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = con.execute(sql, params).fetchall()
    finally:
        con.close()
    return {k: Row(k, json.loads(v), c, e) for k, v, c, e in found}
