"""An external (non-bundled) plugin for the gate tests; on PYTHONPATH only in those tests.

It claims `origin = "bundled"` on purpose: the gateway must decide the origin by where the
plugin was listed, not by what the class says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from chatstate.gateway.plugin import Plugin, PluginRuntime, Route
from chatstate.gateway.settings import AdapterSettings

TOKEN = "ext-token"


class NotesPlugin(Plugin):
    id = "ext-notes"
    origin = "bundled"  # a lie the gateway must ignore

    def __init__(self) -> None:
        self.store: Any = None

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/ext/notes", self._note),)

    async def start(self, runtime: PluginRuntime) -> None:
        self.store = await runtime.open_keyed_store("ext.notes", max_entries=100)

    async def _note(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized()
        body = await request.json()
        await self.store.register(body["key"], body["value"])
        return web.json_response({"ok": True})


class CorePlugin(Plugin):
    """Tries to open a core store: only bundled plugins may."""

    id = "ext-core"

    async def start(self, runtime: PluginRuntime) -> None:
        await runtime.open_core_store("core:approvals", "pending", max_entries=10)


class FifoSettings(AdapterSettings):
    fifo: str  # a named pipe the test reads: the plugin says "starting" there


class SlowStartPlugin(Plugin):
    """Says "starting" on a FIFO, then never finishes starting (for the Ctrl-C tests)."""

    id = "ext-slow"
    settings_type = FifoSettings

    async def start(self, runtime: PluginRuntime) -> None:
        fifo = FifoSettings.of(runtime).fifo
        await asyncio.to_thread(Path(fifo).write_text, "starting\n")
        await asyncio.Event().wait()


class BrokenStartPlugin(Plugin):
    """Its start fails the way a real SDK call fails (for the one-line start-failure test)."""

    id = "ext-broken"

    async def start(self, runtime: PluginRuntime) -> None:
        raise ConnectionRefusedError(111, "upstream refused the connection")
