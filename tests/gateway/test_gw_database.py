"""The gateway opens its database once, as one `state.Database`, for its whole lifetime:
plugin stores, every sweep, every /healthz probe and the final checkpoint share it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from gw_helpers import SECRET

from chatstate import state
from chatstate.gateway import health
from chatstate.gateway.app import BROKER, build_app
from chatstate.gateway.config import parse_config
from chatstate.gateway.registry import load_plugins
from chatstate.state import _database

ROUNDS = 3


async def test_the_gateway_opens_one_database_for_its_lifetime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []  # every time anything looks a backend up by its location
    databases: list[state.Database] = []
    swept, probed = threading.Event(), threading.Event()
    counts = {"sweep": 0, "probe": 0}

    def counted(real: Any) -> Any:
        def acquire(path: Any, url: Any, settings: Any) -> Any:
            backend = real(path, url, settings)
            lookups.append(backend.location)
            return backend

        return acquire

    monkeypatch.setattr(_database, "acquire", counted(_database.acquire))  # by a Database or by path
    real_init, real_sweep, real_probe = state.Database.__init__, state.Database.sweep_expired, state.Database.probe

    def init(self: state.Database, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        databases.append(self)

    def sweep(self: state.Database, **kw: Any) -> int:
        rows = real_sweep(self, **kw)
        counts["sweep"] += 1
        if counts["sweep"] >= ROUNDS:
            swept.set()
        return rows

    def probe(self: state.Database) -> dict[str, Any]:
        result = real_probe(self)
        counts["probe"] += 1
        if counts["probe"] >= ROUNDS:
            probed.set()
        return result

    monkeypatch.setattr(state.Database, "__init__", init)
    monkeypatch.setattr(state.Database, "sweep_expired", sweep)
    monkeypatch.setattr(state.Database, "probe", probe)
    monkeypatch.setattr(health, "PROBE_CACHE_S", 0.0)  # every /healthz probes

    config = parse_config(
        {"state": {"dir": str(tmp_path), "sweep_interval_s": 0.01}, "adapters": {"echo": {"secret": SECRET}}}, env={}
    )
    app = build_app(config, load_plugins(config))
    async with TestClient(TestServer(app)) as client:
        for _ in range(ROUNDS):
            resp = await client.get("/healthz")
            assert resp.status == 200 and (await resp.json())["store"]["ok"] is True
        assert await asyncio.to_thread(swept.wait, 30)
        assert await asyncio.to_thread(probed.wait, 30)
        database = app[BROKER].database
    # Shut down by now: a final sweep and checkpoint ran, every store and the Database closed.
    assert databases == [database]
    assert lookups == [str(state.database_path(tmp_path))]  # one open, by the Database, ever
    assert database.opens == 1 and counts["sweep"] >= ROUNDS + 1 and counts["probe"] >= ROUNDS
    with pytest.raises(state.StateStoreError) as err:
        database.sweep_expired()
    assert err.value.code == "UNAVAILABLE"
