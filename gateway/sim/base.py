"""The part every platform simulator shares: a loopback aiohttp app that records what the bot
sent and lets a test wait for it without sleep loops."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from aiohttp import web


@dataclass(frozen=True)
class Record:
    """One thing the bot did to the platform (an API call), in arrival order."""

    kind: str  # e.g. "chat.postMessage", "interaction_response", "activity", "room_send"
    payload: dict[str, Any]
    at: float = field(default_factory=time.time)


class SimulatorServer:
    """Base for one platform simulator: subclasses add routes in `build` and describe, in
    `gateway_config`, the `[adapters.<id>]` table a gateway needs to talk to them."""

    name: ClassVar[str]

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.records: list[Record] = []
        # how often each platform edge behaviour (a switch of the subclass) was played: the
        # demo's `--hostile` table and the exactly-once tests read these
        self.hits: Counter[str] = Counter()
        self._background: set[asyncio.Task[Any]] = set()
        # cleared by a test while it restarts the gateway: the platform's redeliveries wait for
        # it, as a real platform's retry budget (minutes) outlasts a restart, which a compressed
        # schedule (seconds) may not on a loaded machine
        self.redeliver = asyncio.Event()
        self.redeliver.set()
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self.port: int = 0

    # -- subclass hooks -------------------------------------------------------------------
    def build(self, app: web.Application) -> None:
        """Add the platform's routes to `app`."""
        raise NotImplementedError("each simulator adds its own routes")

    def gateway_config(self) -> dict[str, Any]:
        """Return the adapter's config table pointing at this simulator (URLs, secrets)."""
        raise NotImplementedError("each simulator describes its own gateway config")

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name} simulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Bind a free loopback port and serve; returns the base URL."""
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        self.build(app)
        # A long-poll (Matrix /sync) must not hold a stop up: open requests get one second on
        # stop, not aiohttp's 60. Handlers are not cancelled when a client goes away, so a test
        # can still hold a request open across a gateway kill (Slack's crash-timing tests).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        # aiohttp exposes the bound socket only here; typed AbstractServer, it is loop.create_server's Server
        server = cast("asyncio.Server | None", site._server)
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def hit(self, behaviour: str) -> None:
        """Count one occurrence of an edge behaviour the simulator just played."""
        self.hits[behaviour] += 1

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` in the background (a platform acting on its own, e.g. a redelivery);
        cancelled on stop. `settle()` waits for all of them."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def settle(self, *, timeout: float = 60.0) -> None:
        """Wait until no background delivery is running (new ones started meanwhile included)."""
        async with asyncio.timeout(timeout):
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- recording ------------------------------------------------------------------------
    async def record(self, kind: str, payload: dict[str, Any]) -> Record:
        """Append what the bot sent and wake anyone waiting on it."""
        rec = Record(kind, payload)
        self.records.append(rec)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
        return rec

    def recorded(self, kind: str | None = None) -> list[Record]:
        return [r for r in self.records if kind is None or r.kind == kind]

    async def wait_for(self, predicate: Callable[[list[Record]], bool], *, timeout: float = 15.0) -> list[Record]:
        """Wait until `predicate(self.records)` holds; raises TimeoutError after `timeout` s."""
        assert self._changed is not None, "start() the simulator first"
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.records)), timeout)
        return self.records
