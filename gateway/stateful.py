"""The base class of a plugin that keeps `AdapterState`s: it opens them, closes them on stop and
rolls their health up, so each adapter's plugin.py is wiring only.

Before, every adapter wrote the same preamble (open each state, remember it, close it on stop or
leave it to the gateway, scan each one's health for "degraded"). A subclass now calls
`await self.open_state(state, runtime)` in `start`, reads `self.states_health()` /
`self.degraded()` in `health`, and calls `await super().stop()` last in its own `stop`.
"""

from __future__ import annotations

from typing import Any

from chatstate.gateway.adapter_state import AdapterState
from chatstate.gateway.plugin import Plugin, PluginRuntime


class StatefulPlugin(Plugin):
    """A plugin whose state is a set of `AdapterState`s it owns from `start` to `stop`."""

    def __init__(self) -> None:
        self._states: list[AdapterState] = []

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
        """Close the states; a subclass stops its own work first, then calls this."""
        await self.close_states()

    def states_health(self) -> list[dict[str, Any]]:
        """Each open state's health, in the order they were opened."""
        return [s.health() for s in self._states]

    def degraded(self) -> bool:
        """True while any state runs from memory because its store failed."""
        return any(s.mode == "degraded" for s in self._states)
