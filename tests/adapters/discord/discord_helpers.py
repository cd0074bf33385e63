"""Read the Discord registries straight from the gateway's SQLite file (read-only), so tests
check what is on disk rather than what the adapter says; and open them as the plugin does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runtime_support import FileRuntime, Row, rows_on_disk

from chatstate.adapters.discord.state import Registry
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator, Pending
from chatstate.gateway.sim.harness import GatewayHarness

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


async def kill_at_callback(
    sim: DiscordGatewaySimulator, gw: GatewayHarness, payload: dict[str, Any], *, delivered: bool
) -> Pending:
    """Dispatch `payload` and SIGKILL the gateway once its answer (the interaction callback)
    has reached the simulator, held there; then let that answer through (`delivered`) or drop
    it, as if it never left. Returns the dispatch."""
    held = sim.hold_callbacks = asyncio.get_running_loop().create_future()
    sim.callback_arrived.clear()  # an earlier callback (the panel's) set it
    pending = await sim.dispatch_interaction(payload)
    await asyncio.wait_for(sim.callback_arrived.wait(), 15)
    await gw.kill()
    sim.hold_callbacks = None
    held.set_result(None) if delivered else held.cancel()
    return pending
