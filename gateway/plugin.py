"""What an adapter is to the gateway: a plugin with an id, an origin, routes and a lifecycle.

Adapters never import the gateway's internals; they get everything through the
`PluginRuntime` handed to `Plugin.start`. That keeps an adapter folder copyable and lets the
gateway decide which plugins may open keyed stores (only bundled ones, or ids listed in
`trusted_plugins`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from aiohttp import web

from chatstate.gateway.settings import AdapterSettings

if TYPE_CHECKING:
    from chatstate.state import AsyncKeyedStore

Origin = Literal["bundled", "external"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One HTTP route the ingress mounts for a plugin (e.g. POST /slack/events)."""

    method: str
    path: str
    handler: Handler


class PluginRuntime(Protocol):
    """The gateway as one plugin sees it; created once per plugin."""

    plugin_id: str
    settings: AdapterSettings  # the `[adapters.<id>]` table, validated as the plugin's `settings_type`
    config: Mapping[str, Any]  # the same settings as a plain mapping (typed values)
    legacy: bool  # config `mode = "legacy"`: keep the old in-memory maps (the "before")
    log: logging.LoggerAdapter[logging.Logger]

    async def open_keyed_store(
        self,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None = None,
        overflow: Literal["evict-oldest", "reject-new"] = "evict-oldest",
    ) -> AsyncKeyedStore:
        """Open an async keyed store bound to this plugin's id.

        The gateway closes it on shutdown. Raises `state.StateStoreError` (INVALID_INPUT) for an
        external plugin that is not listed in `trusted_plugins`, and whatever
        `state.open_async_keyed_store` raises.
        """
        ...

    async def open_core_store(
        self, core_id: str, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None
    ) -> AsyncKeyedStore:
        """Open a store owned by the core (plugin id `core:...`, e.g. `core:approvals`).

        Only bundled plugins may do this: core data such as pending approvals outlives any one
        adapter. Raises `state.StateStoreError` (INVALID_INPUT) for an external plugin or an id
        that does not start with `core:`.
        """
        ...


class Plugin(abc.ABC):
    """Base class of every adapter; subclasses set `id` (the registry decides the origin: where
    the plugin was listed, never what the class says)."""

    id: ClassVar[str]
    # The `[adapters.<id>]` table's type: subclass AdapterSettings with one field per key. The
    # gateway validates the table (and CHATSTATE_<ID>_<KEY> variables) against it before start.
    settings_type: ClassVar[type[AdapterSettings]] = AdapterSettings

    def check(self, settings: AdapterSettings) -> None:
        """Offline checks beyond the field types (no network, no store): run by `start` and by
        `restart` before it stops the running gateway. Raise ValueError naming the key (never
        its value); the gateway then exits 2. By default the settings' own `check()`: a rule
        about the config belongs next to its fields, in the adapter's config.py."""
        settings.check()

    def routes(self) -> Sequence[Route]:
        """Routes to mount on the ingress; the handler verifies the platform signature first."""
        return ()

    @abc.abstractmethod
    async def start(self, runtime: PluginRuntime) -> None:
        """Open stores and start background work; the gateway is ready only after this returns."""

    async def stop(self) -> None:  # noqa: B027 -- an optional hook
        """Stop background work; stores are closed by the gateway afterwards."""

    def health(self) -> dict[str, Any]:
        """Per-adapter health for /healthz: at least {"status": "ok" | "degraded" | ...}."""
        return {"status": "ok"}
