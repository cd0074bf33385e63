"""Helpers shared by the gateway tests (a uniquely named module, importable from tests/gateway)."""

from __future__ import annotations

import json
from pathlib import Path

from chatstate import state
from chatstate.gateway.echo import NAMESPACE, sign
from chatstate.gateway.sim.harness import GatewayHarness

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
