"""The application in process: health summary, route mounting, sweeper, startup failures."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from gw_helpers import SECRET

from chatstate import state
from chatstate.gateway.app import build_app
from chatstate.gateway.config import parse_config
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.health import summarize
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route
from chatstate.gateway.registry import LoadedPlugin, load_plugins
from chatstate.gateway.sweeper import SweepStatus, run_sweeper, sweep_once


def _summary(**kw: object) -> tuple[int, dict]:
    args = {
        "ready": True,
        "draining": False,
        "started_at": time.time(),
        "store": {"ok": True},
        "adapters": {"echo": {"status": "ok"}},
        "sweeper": SweepStatus(60),
    }
    args.update(kw)
    return summarize(**args)


def test_health_summary_states() -> None:
    assert _summary()[0] == 200 and _summary()[1]["status"] == "ok"
    assert _summary(store={"ok": False})[1]["status"] == "degraded"
    assert _summary(adapters={"slack": {"status": "degraded"}})[1]["status"] == "degraded"
    assert _summary(sweeper=SweepStatus(60, last_error="WRITE_FAILED"))[1]["status"] == "degraded"
    code, body = _summary(ready=False)  # one call: a second one may read another uptime
    assert code == 503 and body["status"] == "starting"
    assert _summary(draining=True)[1]["status"] == "stopping" and _summary(draining=True)[0] == 503


def _config(tmp_path: Path, **adapters: dict) -> object:
    return parse_config({"state": {"dir": str(tmp_path)}, "adapters": adapters}, env={})


async def test_app_serves_health_and_echo_in_process(tmp_path: Path) -> None:
    config = _config(tmp_path, echo={"secret": SECRET})
    app = build_app(config, load_plugins(config))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ok"
        assert (await client.post("/echo", data=b"{}")).status == 401
        assert (await client.post("/echo", data=io.BytesIO(b"x" * (1024 * 1024 + 1)))).status == 413


class _Degraded(Plugin):
    id = "sick"
    origin = "bundled"

    async def start(self, runtime: PluginRuntime) -> None:
        pass

    def health(self) -> dict:
        raise RuntimeError("health is broken")


async def test_a_raising_health_degrades_instead_of_failing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    lp = LoadedPlugin(_Degraded(), "bundled", parse_config({"adapters": {"sick": {}}}, env={}).adapters["sick"])
    app = build_app(config, [lp])
    async with TestClient(TestServer(app)) as client:
        body = await (await client.get("/healthz")).json()
    assert body["status"] == "degraded"
    assert body["adapters"]["sick"]["status"] == "degraded"


def test_two_plugins_cannot_claim_one_route(tmp_path: Path) -> None:
    class Clash(_Degraded):
        id = "clash"

        def routes(self) -> list[Route]:
            return [Route("GET", "/healthz", lambda r: web.Response())]

    lp = LoadedPlugin(Clash(), "bundled", parse_config({"adapters": {"clash": {}}}, env={}).adapters["clash"])
    with pytest.raises(ConfigError, match="already served"):
        build_app(_config(tmp_path), [lp])


async def test_sweep_removes_expired_rows_and_records_it(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    settings = state.StoreSettings()
    store = state.open_keyed_store("echo", "ttl.test", max_entries=10, path=db, settings=settings)
    store.register("gone", 1, ttl_ms=1)
    store.register("kept", 2)
    store.close()
    await asyncio.sleep(0.01)  # let a 1 ms TTL pass on the wall clock (not synchronisation)
    status = SweepStatus(60)
    with state.Database(db, settings=settings) as database:
        assert await sweep_once(status, database) == 1
    assert (status.last_rows, status.last_error) == (1, None)


async def test_sweeper_stops_on_its_event(tmp_path: Path) -> None:
    stop = asyncio.Event()
    with state.Database(tmp_path / "s.sqlite", settings=state.StoreSettings()) as database:
        task = asyncio.create_task(run_sweeper(SweepStatus(3600), stop, database))
        stop.set()
        await asyncio.wait_for(task, 5)
