"""Helpers shared by the gateway tests (a uniquely named module, importable from tests/gateway)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from chatstate import state
from chatstate.gateway.echo import NAMESPACE, sign
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.state import AsyncKeyedStore, StateStoreError

SECRET = "echo-test-secret"
EXT_PLUGINS_DIR = Path(__file__).parent / "extplugins"


async def bump(h: GatewayHarness, key: str, *, secret: str = SECRET) -> int:
    """POST /echo for `key`; returns the acknowledged count (raises on a non-200)."""
    body = json.dumps({"key": key}).encode()
    headers = {"X-Echo-Signature": sign(secret, "POST", "/echo", body), "Content-Type": "application/json"}
    async with h.http.post(f"{h.gateway_url}/echo", data=body, headers=headers) as resp:
        resp.raise_for_status()
        return (await resp.json())["count"]


async def read_count(h: GatewayHarness, key: str) -> int:
    path = f"/echo/{key}"
    async with h.http.get(h.gateway_url + path, headers={"X-Echo-Signature": sign(SECRET, "GET", path)}) as resp:
        resp.raise_for_status()
        return (await resp.json())["count"]


def stored_counts(db: Path) -> dict[str, int]:
    """Read the echo counters straight from the database file (the gateway must be stopped)."""
    store = state.open_keyed_store("echo", NAMESPACE, max_entries=10_000, path=db)
    try:
        return {e.key: e.value["count"] for e in store.entries()}
    finally:
        store.close()


class FlakyStore:
    """A real store whose calls fail, as an unreachable backend's do, while `down`."""

    def __init__(self, store: AsyncKeyedStore) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if not callable(method):
            return method

        def down() -> None:
            if self.down and name != "close":
                raise StateStoreError("UNAVAILABLE", name, "backend unreachable (test)")

        if not inspect.iscoroutinefunction(method) and name.startswith("stage_"):

            def stage(*args: Any, **kwargs: Any) -> Any:  # a staged write: refused while down
                down()
                return method(*args, **kwargs)

            return stage

        async def call(*args: Any, **kwargs: Any) -> Any:
            down()
            return await method(*args, **kwargs)

        return call
