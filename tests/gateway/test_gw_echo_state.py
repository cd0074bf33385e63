"""Echo's counters on `AdapterState` (issue 18) across a store fault, over a real SQLite file:
a fault answers 503 and degrades /healthz, the increment that met it is not counted (now or
after recovery), and the next request once the store works is answered from the stored count."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chatstate.gateway.echo import EchoPlugin, EchoSettings, sign
from chatstate.state import AsyncKeyedStore, StateStoreError, open_async_keyed_store

SECRET = "echo-test-secret"


class FlakyStore:
    """A real store whose calls fail, as an unreachable backend's do, while `down`."""

    def __init__(self, store: AsyncKeyedStore) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down and name != "close":
                raise StateStoreError("UNAVAILABLE", name, "backend unreachable (test)")
            return await method(*args, **kwargs)

        return call


class Runtime:
    plugin_id = "echo"
    legacy = False
    log = logging.LoggerAdapter(logging.getLogger("test.echo"))

    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings = EchoSettings(secret=SECRET)
        self.store: FlakyStore | None = None

    async def open_keyed_store(self, namespace: str, **kw: Any) -> FlakyStore:
        self.store = FlakyStore(await open_async_keyed_store("echo", namespace, path=self.path, **kw))
        return self.store


async def _increment(client: TestClient[Any, Any], key: str) -> tuple[int, Any]:
    body = json.dumps({"key": key}).encode()
    resp = await client.post("/echo", data=body, headers={"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)})
    return resp.status, await resp.json()


async def test_a_store_fault_is_503_counts_nothing_and_recovers(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "state.sqlite")
    plugin = EchoPlugin()
    await plugin.start(runtime)
    app = web.Application()
    for route in plugin.routes():
        app.router.add_route(route.method, route.path, route.handler)
    assert runtime.store is not None
    try:
        async with TestClient(TestServer(app)) as client:
            assert await _increment(client, "k") == (200, {"key": "k", "count": 1})
            assert await _increment(client, "k") == (200, {"key": "k", "count": 2})
            runtime.store.down = True
            assert (await _increment(client, "k"))[0] == 503  # a cached key: the write fails
            assert (await _increment(client, "cold"))[0] == 503  # an uncached key: the read fails
            health = plugin.health()
            assert health["status"] == "degraded" and health["state"]["echo.counters"]["last_error"] == "UNAVAILABLE"
            runtime.store.down = False
            assert await _increment(client, "k") == (200, {"key": "k", "count": 3})  # the 503 one was not counted
            assert await _increment(client, "cold") == (200, {"key": "cold", "count": 1})
            health = plugin.health()
            assert (health["status"], health["mode"], health["state"]["echo.counters"]["last_error"]) == (
                "ok",
                "store",
                None,
            )
            assert await runtime.store.lookup("k") == {"count": 3}
    finally:
        await plugin.stop()
