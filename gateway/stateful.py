"""The base class of a plugin that keeps `AdapterState`s: it opens them, closes them on stop,
holds the plugin's running parts as one frozen object, and rolls health up, so each adapter's
plugin.py is wiring only.

A subclass implements `build(runtime)`: open its states with `await self.open_state(...)`,
build its clients and gate, and return them as one frozen object with `close()` and
`health()` (the `Running` protocol). Handlers reach it through `self.running`, which exists
from the end of `start` to `stop`; nothing is optional in between. A plugin that the platform
calls over HTTP names the request URL it serves as `webhook` and answers it in `handle`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from aiohttp import web

from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.plugin import Plugin, PluginRuntime, Route


class Running(Protocol):
    """A plugin's running parts (clients, gate, transports), built once in `start`."""

    async def close(self) -> None:
        """Stop background work and close clients; the states are closed after this."""
        ...

    def health(self) -> dict[str, Any]:
        """Extra fields for /healthz (say `"status": "degraded"` to degrade the plugin)."""
        ...


R = TypeVar("R", bound=Running)
RECOVER_INTERVAL_S = 1.0  # how often a degraded state tries its store again, traffic or not


class StatefulPlugin(Plugin, Generic[R]):
    """A plugin whose state is a set of `AdapterState`s it owns from `start` to `stop`."""

    # The path of the platform's request URL, mounted as POST to `handle`; None for a plugin the
    # platform never calls over HTTP (Matrix: the plugin polls /sync).
    webhook: ClassVar[str | None] = None

    def __init__(self) -> None:
        self._states: list[AdapterState] = []
        self._running: R | None = None
        self._recovery: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def build(self, runtime: PluginRuntime) -> R:
        """Open the states and build the running parts; raise to refuse to start."""

    async def start(self, runtime: PluginRuntime) -> None:
        """Build the running parts (see `build`); states opened before a failure are closed."""
        try:
            self._running = await self.build(runtime)
        except BaseException:
            await self.close_states()
            raise
        self._recovery = asyncio.create_task(self._recover_states(), name=f"recover-{self.id}")

    async def _recover_states(self) -> None:
        """Replay each degraded state's kept writes once its store answers again, without waiting
        for a call to that state: a write kept only in memory is lost if the process dies, and
        /healthz turns green when the store is back, not when the next user comes."""
        while True:
            await asyncio.sleep(RECOVER_INTERVAL_S)
            for state in self._states:
                if state.last_error is not None or state.pending_writes:
                    await state.recover()

    def routes(self) -> Sequence[Route]:
        """POST `webhook` to `handle`, for a plugin that has a webhook (refused at start, with
        the fix, if it defines no `handle`)."""
        if self.webhook is None:
            return ()
        if type(self).handle is StatefulPlugin.handle:
            raise ConfigError(f"adapters.{self.id}", f"webhook = {self.webhook!r} needs a handle(request) method")
        return (Route("POST", self.webhook, self.handle),)

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one request to `webhook`: the platform's signature is checked first (401),
        before anything is parsed, read or written."""
        raise web.HTTPNotFound()  # never routed: `routes` refuses a webhook without a handle

    @property
    def running(self) -> R:
        """The running parts; RuntimeError before `start` (a route cannot be called then)."""
        if self._running is None:
            raise RuntimeError(f"plugin {self.id!r}: start() first")
        return self._running

    async def open_state(self, state: AdapterState, runtime: PluginRuntime) -> AdapterState:
        """Open `state` through `runtime` and own it (closed by `stop`); returns it.
        Raises what `AdapterState.open` raises (the gateway then refuses to start)."""
        await state.open(runtime)
        self._states.append(state)
        return state

    async def close_states(self) -> None:
        """Close every state this plugin opened, newest first (idempotent; their health stays
        readable, a closed state reports what it last saw)."""
        for state in reversed(self._states):
            await state.close()

    async def stop(self) -> None:
        """Close the running parts, then the states."""
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._running is not None:
            await self._running.close()
        await self.close_states()

    def states_health(self) -> list[dict[str, Any]]:
        """Each open state's health, in the order they were opened."""
        return [s.health() for s in self._states]

    def degraded(self) -> bool:
        """True while any state runs from memory because its store failed."""
        return any(s.mode == "degraded" for s in self._states)

    def health(self) -> dict[str, Any]:
        """`status` (degraded while any state is), each state by namespace, and the running
        parts' own fields."""
        report: dict[str, Any] = {
            "status": "degraded" if self.degraded() else "ok",
            "state": {h["namespace"]: h for h in self.states_health()},
        }
        if self._running is not None:
            extra = self._running.health()
            if report["status"] == "degraded":
                extra.pop("status", None)
            report.update(extra)
        return report
