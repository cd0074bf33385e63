"""The gateway as one plugin sees it: keyed stores bound to the plugin's id, behind the gate.

The reference system let a non-bundled plugin silently run without persistence. Here an
external plugin that is not in `trusted_plugins` gets a loud `StateStoreError` (INVALID_INPUT)
from `open_keyed_store`, and the gateway refuses to start with exit 2 naming `trusted_plugins`
unless the plugin handles the error itself. Plugin ids starting with `core:` are reserved for
stores the core owns (e.g. pending approvals); only bundled plugins may open them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from chatstate import state
from chatstate.gateway import logs
from chatstate.gateway.registry import CORE_PREFIX, LoadedPlugin
from chatstate.gateway.settings import AdapterSettings

if TYPE_CHECKING:
    from chatstate.state import AsyncKeyedStore

Overflow = Literal["evict-oldest", "reject-new"]


class PluginNotTrusted(state.StateStoreError):
    """An external plugin asked for a keyed store without being listed in `trusted_plugins`."""


class StoreBroker:
    """Open async keyed stores on the gateway's one `state.Database` and close them all at shutdown.

    One broker per process; every runtime goes through it, so shutdown knows every store that
    is open, whoever opened it. The Database is the app's (gateway/app.py closes it last).
    """

    def __init__(self, database: state.Database) -> None:
        self.database = database
        self._open: dict[int, AsyncKeyedStore] = {}
        self._log = logs.get("store")

    async def open(
        self,
        plugin_id: str,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None,
        overflow: Overflow,
        core: bool = False,
    ) -> AsyncKeyedStore:
        """Open (plugin_id, namespace); raises whatever `Database.open_async_keyed_store` raises.

        `core=True` for the gateway's own `core:` ids (the store refuses them otherwise)."""
        with logs.Timer() as t:
            store = await self.database.open_async_keyed_store(
                plugin_id,
                namespace,
                max_entries=max_entries,
                default_ttl_ms=default_ttl_ms,
                overflow=overflow,
                core=core,
            )
        self._open.setdefault(id(store), store)
        self._log.info(
            "store_opened",
            extra={
                "plugin": plugin_id,
                "namespace": namespace,
                "op": "open",
                "duration_ms": t.ms,
                "max_entries": max_entries,
                "default_ttl_ms": default_ttl_ms,
            },
        )
        return store

    async def close_all(self) -> None:
        """Close every store opened through this broker, newest first; logs and keeps going."""
        stores, self._open = list(self._open.values()), {}
        for store in reversed(stores):
            try:
                await store.close()
            except state.StateStoreError:
                self._log.exception("store_close_failed", extra={"op": "close"})


class GatewayRuntime:
    """`gateway.plugin.PluginRuntime` for one plugin; created once, when the plugin is loaded."""

    __slots__ = ("plugin_id", "settings", "config", "legacy", "log", "origin", "trusted", "_broker")

    def __init__(self, loaded: LoadedPlugin, *, broker: StoreBroker, trusted: bool) -> None:
        self.plugin_id: str = loaded.id
        self.settings: AdapterSettings = loaded.settings
        self.config: Mapping[str, Any] = MappingProxyType(loaded.settings.model_dump())
        self.legacy: bool = loaded.adapter.mode == "legacy"
        self.origin = loaded.origin
        self.trusted = trusted or loaded.origin == "bundled"
        self.log: logging.LoggerAdapter[logging.Logger] = logs.get(
            f"plugin.{loaded.id}", plugin=loaded.id, adapter=loaded.id
        )
        self._broker = broker

    async def open_keyed_store(
        self,
        namespace: str,
        *,
        max_entries: int,
        default_ttl_ms: int | None = None,
        overflow: Overflow = "evict-oldest",
    ) -> AsyncKeyedStore:
        """Open a store bound to this plugin's id; see `gateway.plugin.PluginRuntime`.

        Raises PluginNotTrusted (a StateStoreError, code INVALID_INPUT) for an external plugin
        not in `trusted_plugins`, and whatever `state.open_async_keyed_store` raises.
        """
        if not self.trusted:
            self.log.warning("store_denied", extra={"namespace": namespace, "op": "open"})
            raise PluginNotTrusted(
                "INVALID_INPUT",
                "open",
                f"plugin {self.plugin_id!r} is external and not listed in trusted_plugins; "
                "add it there to give it keyed stores",
            )
        return await self._broker.open(
            self.plugin_id, namespace, max_entries=max_entries, default_ttl_ms=default_ttl_ms, overflow=overflow
        )

    async def open_core_store(
        self, core_id: str, namespace: str, *, max_entries: int, default_ttl_ms: int | None = None
    ) -> AsyncKeyedStore:
        """Open a core-owned store (`core:...`); bundled plugins only.

        Raises StateStoreError (INVALID_INPUT) for a non-bundled caller or an id without the
        `core:` prefix, and whatever `state.open_async_keyed_store` raises.
        """
        if self.origin != "bundled":
            raise state.StateStoreError(
                "INVALID_INPUT", "open", f"plugin {self.plugin_id!r}: only bundled plugins may open core stores"
            )
        if not core_id.startswith(CORE_PREFIX) or len(core_id) == len(CORE_PREFIX):
            raise state.StateStoreError("INVALID_INPUT", "open", f"core store ids must look like '{CORE_PREFIX}<name>'")
        return await self._broker.open(
            core_id,
            namespace,
            max_entries=max_entries,
            default_ttl_ms=default_ttl_ms,
            overflow="evict-oldest",
            core=True,
        )
