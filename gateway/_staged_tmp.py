"""TEMPORARY stand-in for chatstate.state's staged writes until wip-state lands (not atomic)."""

from __future__ import annotations

from typing import Any

from chatstate import state
from chatstate.state import AsyncKeyedStore

if not hasattr(state, "commit_staged_async"):

    def _stage_register(self: AsyncKeyedStore, key: str, value: Any, ttl_ms: int | None = None) -> Any:
        self.sync._prepare("register", key, value, ttl_ms)
        return ("put", self, key, value, ttl_ms)

    def _stage_delete(self: AsyncKeyedStore, key: str) -> Any:
        return ("del", self, key, None, None)

    async def commit_staged_async(writes: list[Any]) -> None:
        for op, store, key, value, ttl in writes:
            if op == "put":
                await store.register(key, value, ttl_ms=ttl)
            else:
                await store.delete(key)

    AsyncKeyedStore.stage_register = _stage_register  # type: ignore[attr-defined]
    AsyncKeyedStore.stage_delete = _stage_delete  # type: ignore[attr-defined]
    state.commit_staged_async = commit_staged_async  # type: ignore[attr-defined]
