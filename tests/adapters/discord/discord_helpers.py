"""Read the Discord registries straight from the gateway's SQLite file (read-only), so tests
check what is on disk rather than what the adapter says; and open them as the plugin does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime_support import FileRuntime, Row, rows_on_disk

from chatstate.adapters.discord.state import Registry

COMPONENTS = "discord.components"
MODALS = "discord.modals"


def rows(db: Path, namespace: str) -> dict[str, Row]:
    """Every row (live or expired) the discord plugin has in `namespace`."""
    return rows_on_disk(db, "discord", namespace)


def custom_ids(message: dict[str, Any]) -> set[str]:
    return {c["custom_id"] for row in message["components"] for c in row["components"]}


async def open_registry(registry: Registry, runtime: FileRuntime) -> None:
    """Open the registry's states as the plugin does (its base opens each one)."""
    for st in registry.states:
        await st.open(runtime)


async def close_registry(registry: Registry) -> None:
    for st in registry.states:
        await st.close()
