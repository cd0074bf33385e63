"""Echo's counters on `AdapterState` across a store fault, over a real SQLite file: a fault
answers 503 and degrades /healthz, the increment that met it is not counted (now or after
recovery), and the next request once the store works is answered from the stored count.
With an `"id"` in the body an increment is exactly-once through the gate: a retried id, two
concurrent copies, a SIGKILL mid-traffic and a store fault each count it once, in one write."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from gw_helpers import FlakyStore

from chatstate.gateway.echo import NAMESPACE, EchoPlugin, EchoSettings, sign
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.state import op_counts, open_async_keyed_store

SECRET = "echo-test-secret"


class Runtime:
    plugin_id = "echo"
    legacy = False
    log = logging.LoggerAdapter(logging.getLogger("test.echo"))

    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings = EchoSettings(secret=SECRET)
        self.store: FlakyStore | None = None  # the counters' store
        self.stores: dict[str, FlakyStore] = {}

    async def open_keyed_store(self, namespace: str, **kw: Any) -> FlakyStore:
        store = self.stores[namespace] = FlakyStore(
            await open_async_keyed_store("echo", namespace, path=self.path, **kw)
        )
        if namespace == NAMESPACE:
            self.store = store
        return store


async def _increment(client: TestClient[Any, Any], key: str, request_id: str | None = None) -> tuple[int, Any]:
    body = json.dumps({"key": key} if request_id is None else {"key": key, "id": request_id}).encode()
    resp = await client.post("/echo", data=body, headers={"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)})
    return resp.status, await resp.json() if resp.content_type == "application/json" else await resp.text()


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


class EchoApp:
    """Echo mounted in an in-process aiohttp app over a real SQLite file."""

    def __init__(self, path: Path) -> None:
        self.runtime = Runtime(path)
        self.plugin = EchoPlugin()

    async def __aenter__(self) -> TestClient[Any, Any]:
        await self.plugin.start(self.runtime)
        app = web.Application()
        for route in self.plugin.routes():
            app.router.add_route(route.method, route.path, route.handler)
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.plugin.stop()


async def test_a_retried_id_counts_once_and_says_duplicate(tmp_path: Path) -> None:
    async with EchoApp(tmp_path / "state.sqlite") as client:
        assert await _increment(client, "k", "req-1") == (200, {"key": "k", "count": 1, "duplicate": False})
        for _ in range(3):
            assert await _increment(client, "k", "req-1") == (200, {"key": "k", "count": 1, "duplicate": True})
        assert await _increment(client, "k") == (200, {"key": "k", "count": 2})  # no id: counts every time
        assert await _increment(client, "k", "req-1") == (200, {"key": "k", "count": 2, "duplicate": True})
        assert await _increment(client, "k", "req-2") == (200, {"key": "k", "count": 3, "duplicate": False})
        assert (await _increment(client, "k", " "))[0] == 400
        assert (await _increment(client, "k", "x" * 600))[0] == 400
        not_strings: list[object] = [5, [], {}, True]  # an id that is not a string is the caller's error
        for request_id in not_strings:
            body = json.dumps({"key": "k", "id": request_id}).encode()
            headers = {"X-Echo-Signature": sign(SECRET, "POST", "/echo", body)}
            assert (await client.post("/echo", data=body, headers=headers)).status == 400
        assert await _increment(client, "other", "req-1") == (200, {"key": "other", "count": 0, "duplicate": True})


async def test_one_write_per_request_with_an_id_or_without(tmp_path: Path) -> None:
    write_ops = ("register", "register_if_absent", "compare_and_set", "consume", "delete", "delete_if", "commit")

    async def writes_of(request_id: str | None) -> dict[str, int]:
        before = op_counts()
        assert (await _increment(client, "k", request_id))[0] == 200
        after = op_counts()
        return {op: after[op] - before.get(op, 0) for op in write_ops if after.get(op, 0) != before.get(op, 0)}

    async with EchoApp(tmp_path / "state.sqlite") as client:
        await _increment(client, "k", "warm")  # the counter is cached from here on
        assert await writes_of("a") == {"commit": 1}  # the count and the id's done mark, together
        assert await writes_of("b") == {"commit": 1}
        assert await writes_of(None) == {"register": 1}


async def test_concurrent_copies_count_once_and_distinct_ids_all_count(tmp_path: Path) -> None:
    async with EchoApp(tmp_path / "state.sqlite") as client:
        copies = await asyncio.gather(*(_increment(client, "k", "same") for _ in range(2)))
        assert sorted(body["duplicate"] for _, body in copies) == [False, True]
        assert {body["count"] for _, body in copies} == {1}
        # one counter, many ids at once: the per-key lock keeps each read-modify-write whole
        bodies = await asyncio.gather(*(_increment(client, "k", f"id-{i}") for i in range(20)))
        assert sorted(body["count"] for _, body in bodies) == list(range(2, 22))
        assert await _increment(client, "k", "same") == (200, {"key": "k", "count": 21, "duplicate": True})


async def test_an_id_that_met_a_store_fault_counts_once_when_retried(tmp_path: Path) -> None:
    echo = EchoApp(tmp_path / "state.sqlite")
    async with echo as client:
        assert (await _increment(client, "k", "a"))[1]["count"] == 1
        for store in echo.runtime.stores.values():
            store.down = True
        assert (await _increment(client, "k", "b"))[0] == 503
        assert (await _increment(client, "k", "b"))[0] == 503
        for store in echo.runtime.stores.values():
            store.down = False
        assert await _increment(client, "k", "b") == (200, {"key": "k", "count": 2, "duplicate": False})
        assert await _increment(client, "k", "b") == (200, {"key": "k", "count": 2, "duplicate": True})


async def test_sigkill_mid_traffic_then_every_id_retried_counts_each_once() -> None:
    """Ids sent while the gateway is SIGKILLed, then all sent again to the restarted one: the
    counter ends at exactly the number of ids, whichever of them the first process committed."""
    secret, ids = "echo-kill-secret", [f"req-{i}" for i in range(60)]
    async with GatewayHarness(adapters={"echo": {"secret": secret}}) as gw:

        async def send(request_id: str) -> tuple[int, Any]:
            body = json.dumps({"key": "k", "id": request_id}).encode()
            headers = {"X-Echo-Signature": sign(secret, "POST", "/echo", body)}
            async with gw.http.post(f"{gw.gateway_url}/echo", data=body, headers=headers) as resp:
                return resp.status, await resp.json() if resp.status == 200 else None

        answered: list[str] = []

        async def first_try(request_id: str) -> None:
            try:
                if (await send(request_id))[0] == 200:
                    answered.append(request_id)
            except (aiohttp.ClientError, OSError):
                pass  # the gateway is gone

        tasks = [asyncio.create_task(first_try(i)) for i in ids]
        while len(answered) < 20:
            await asyncio.sleep(0.005)
        assert await gw.kill() == -9
        await asyncio.gather(*tasks)
        await gw.start()
        retried = [await send(i) for i in ids]
        assert all(status == 200 for status, _ in retried)
        assert {i for i, (_, body) in zip(ids, retried) if body["duplicate"]} >= set(answered)
        assert retried[-1][1]["count"] == len(ids)
        assert max(body["count"] for _, body in retried) == len(ids)
