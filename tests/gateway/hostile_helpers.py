"""Helpers for the hostile-input tests: a raw HTTP request (bytes a client library refuses to
send, such as invalid UTF-8 in a header)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from aiohttp.test_utils import TestClient, TestServer

from chatstate.gateway.app import build_app
from chatstate.gateway.config import parse_config
from chatstate.gateway.registry import load_plugins
from chatstate.gateway.sim.base import SimulatorServer


async def raw_request(port: int, request: bytes, *, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send `request` verbatim; return (status, whole response). Needs `Connection: close`."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response


@contextlib.asynccontextmanager
async def inprocess_gateway(
    state_dir: Path,
    simulators: Sequence[SimulatorServer] = (),
    *,
    adapters: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[TestClient]:
    """The real aiohttp app (same build_app as `chatstate start`) served in this process, with
    `simulators` started and pointed at it; yields the client. Fast enough for fuzzing."""
    async with contextlib.AsyncExitStack() as stack:
        tables: dict[str, dict[str, Any]] = {}
        for sim in simulators:
            await stack.enter_async_context(sim)
            tables[sim.name] = {**sim.gateway_config(), "mode": "store"}
        for adapter_id, table in (adapters or {}).items():
            tables[adapter_id] = {**tables.get(adapter_id, {}), **table}
        config = parse_config({"state": {"dir": str(state_dir)}, "adapters": tables}, env={})
        client = TestClient(TestServer(build_app(config, load_plugins(config))))
        await stack.enter_async_context(client)
        for sim in simulators:
            sim.gateway_url = str(client.make_url("")).rstrip("/")
        yield client


def table_rows(db: Path) -> int:
    """Rows in the database, whatever the namespace (a 4xx must not change this)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return sum(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names)


class HangingServer:
    """A TCP server that accepts connections and never answers (an unresponsive metadata host)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/.well-known/openidconfiguration"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        self.connected.set()
