"""Read the Discord registries straight from the gateway's SQLite file (read-only), so tests
check what is on disk rather than what the adapter says; and a runtime over one SQLite file."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatstate import state
from chatstate.adapters.discord.state import Registry

COMPONENTS = "discord.components"
MODALS = "discord.modals"


@dataclass(frozen=True)
class Row:
    key: str
    value: Any
    created_at: int
    expires_at: int | None


def rows(db: Path, namespace: str) -> dict[str, Row]:
    """Every row (live or expired) the discord plugin has in `namespace`."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = con.execute(
            "SELECT key, value, created_at, expires_at FROM entries WHERE plugin_id = 'discord' AND namespace = ?",
            (namespace,),
        ).fetchall()
    finally:
        con.close()
    return {k: Row(k, json.loads(v), c, e) for k, v, c, e in found}


def custom_ids(message: dict[str, Any]) -> set[str]:
    return {c["custom_id"] for row in message["components"] for c in row["components"]}


async def open_registry(registry: Registry, runtime: FileRuntime) -> None:
    """Open the registry's states as the plugin does (its base opens each one)."""
    for st in registry.states:
        await st.open(runtime)


async def close_registry(registry: Registry) -> None:
    for st in registry.states:
        await st.close()


class FileRuntime:
    """The part of `gateway.plugin.PluginRuntime` the registries use, over one SQLite file."""

    plugin_id = "discord"

    def __init__(self, db: Path, *, legacy: bool = False) -> None:
        self.db = db
        self.legacy = legacy
        self.config: dict[str, Any] = {}
        self.log = logging.LoggerAdapter(logging.getLogger("test.discord"), {})

    async def open_keyed_store(
        self, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None, overflow: str = "evict-oldest"
    ) -> state.AsyncKeyedStore:
        return await state.open_async_keyed_store(
            self.plugin_id,
            namespace,
            max_entries=max_entries,
            default_ttl_ms=default_ttl_ms,
            overflow=overflow,
            path=self.db,
        )
