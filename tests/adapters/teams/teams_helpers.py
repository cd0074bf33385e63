"""Helpers for the Teams adapter tests: the plugin served in-process (aiohttp TestServer) on
tests/runtime_support.py's runtime over a real SQLite file, and a reader for the stored rows.
The restart tests in test_teams_gateway.py use the real gateway subprocess instead."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from runtime_support import FileRuntime

from chatstate import state
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.plugin import TeamsPlugin
from chatstate.adapters.teams.state import SENT_MESSAGES
from chatstate.gateway.adapter_state import StateSpec
from chatstate.gateway.sim.teams import TeamsSimulator


def local_runtime(db: Path, config: Mapping[str, Any], *, legacy: bool) -> FileRuntime:
    """The Teams plugin's runtime over `db`, with `config` over a test app id."""
    return FileRuntime("teams", db, settings=TeamsSettings.from_table({"app_id": "test-app", **config}), legacy=legacy)


class LocalGateway:
    """The Teams plugin mounted on an in-process aiohttp server, pointed at `sim`."""

    def __init__(self, sim: TeamsSimulator, db: Path, *, legacy: bool = False, **config: Any) -> None:
        self.sim = sim
        self.runtime = local_runtime(db, {**sim.gateway_config(), **config}, legacy=legacy)
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
