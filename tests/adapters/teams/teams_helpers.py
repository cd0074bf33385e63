"""Helpers for the Teams adapter tests: the plugin served in-process (aiohttp TestServer) with a
small runtime over a real SQLite file, and a reader for the stored rows. The restart tests in
test_teams_gateway.py use the real gateway subprocess instead."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from chatstate import state
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.plugin import TeamsPlugin
from chatstate.adapters.teams.state import SENT_MESSAGES
from chatstate.gateway.adapter_state import StateSpec
from chatstate.gateway.sim.teams import TeamsSimulator


class LocalRuntime:
    """`gateway.plugin.PluginRuntime` without the gateway: stores on one SQLite file."""

    plugin_id = "teams"

    def __init__(self, db: Path, config: Mapping[str, Any], *, legacy: bool) -> None:
        self.db = db
        self.settings = TeamsSettings.from_table({"app_id": "test-app", **config})
        self.config = self.settings.model_dump()
        self.legacy = legacy
        self.log = logging.LoggerAdapter(logging.getLogger("test.teams"), {})
        self.stores: list[state.AsyncKeyedStore] = []

    async def open_keyed_store(
        self, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None, overflow: str = "evict-oldest"
    ) -> state.AsyncKeyedStore:
        store = await state.open_async_keyed_store(
            self.plugin_id,
            namespace,
            max_entries=max_entries,
            default_ttl_ms=default_ttl_ms,
            overflow=overflow,
            path=self.db,
        )
        self.stores.append(store)
        return store

    async def open_core_store(self, *args: Any, **kwargs: Any) -> state.AsyncKeyedStore:
        raise AssertionError("the teams adapter opens no core store")

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


class LocalGateway:
    """The Teams plugin mounted on an in-process aiohttp server, pointed at `sim`."""

    def __init__(self, sim: TeamsSimulator, db: Path, *, legacy: bool = False, **config: Any) -> None:
        self.sim = sim
        self.runtime = LocalRuntime(db, {**sim.gateway_config(), **config}, legacy=legacy)
        self.plugin = TeamsPlugin()
        self.server: TestServer | None = None

    async def __aenter__(self) -> LocalGateway:
        await self.plugin.start(self.runtime)
        app = web.Application()
        for route in self.plugin.routes():
            app.router.add_route(route.method, route.path, route.handler)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.sim.gateway_url = str(self.server.make_url("")).rstrip("/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.plugin.stop()
        assert self.server is not None
        await self.server.close()
        await self.runtime.close()


def sent_rows(db: Path, spec: StateSpec = SENT_MESSAGES) -> dict[str, state.Entry]:
    """The live rows of msteams.sent-messages by key, read through the sync API (opened with
    the adapter's spec, as the store insists within one process)."""
    with state.open_keyed_store(
        "teams", spec.namespace, max_entries=spec.max_entries, default_ttl_ms=spec.ttl_ms, path=db
    ) as store:
        return {e.key: e for e in store.entries()}
