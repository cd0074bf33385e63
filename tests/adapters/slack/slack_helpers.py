"""Helpers for the Slack adapter tests: fixtures on disk, a small runtime over a real SQLite
file (for tests below the gateway), and a read of what the gateway stored."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chatstate import state
from chatstate.gateway.clock import Clock
from chatstate.state import AsyncKeyedStore, Entry

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "slack"
PLUGIN_ID = "slack"


def load_fixture(name: str) -> dict[str, Any]:
    """One payload from fixtures/slack/ (`name` without `.json`)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


class FakeRuntime:
    """`gateway.plugin.PluginRuntime` without the gateway: real async stores on `db`."""

    def __init__(
        self, db: Path, *, config: Mapping[str, Any] | None = None, legacy: bool = False, clock: Clock | None = None
    ) -> None:
        self.plugin_id = PLUGIN_ID
        self.config = dict(config or {})
        self.legacy = legacy
        self.log = logging.LoggerAdapter(logging.getLogger("test.slack"), {})
        self.db = db
        self.clock = clock
        self.opened: list[AsyncKeyedStore] = []

    async def open_keyed_store(
        self, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None, overflow: str = "evict-oldest"
    ) -> AsyncKeyedStore:
        store = await state.open_async_keyed_store(
            self.plugin_id,
            namespace,
            max_entries=max_entries,
            default_ttl_ms=default_ttl_ms,
            overflow=overflow,
            path=self.db,
            clock=self.clock,
        )
        self.opened.append(store)
        return store

    async def open_core_store(self, core_id: str, namespace: str, **kw: Any) -> AsyncKeyedStore:
        raise AssertionError("the Slack adapter keeps no core stores")

    async def close(self) -> None:
        for store in self.opened:
            await store.close()
        self.opened.clear()


def stored(db: Path, namespace: str) -> list[Entry]:
    """Live rows the gateway wrote in one Slack namespace, read through the state API."""
    store = state.open_keyed_store(PLUGIN_ID, namespace, max_entries=100_000, path=db)
    try:
        return store.entries()
    finally:
        store.close()
