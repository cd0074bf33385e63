"""/healthz: ready or not, overall ok/degraded, the store probe and each adapter's own health.

HTTP 200 once the store opened and every plugin started (status "ok" or "degraded"); 503 while
starting or draining. "degraded" means the gateway still serves but something needs a look:
the store probe failed, the last sweep failed, or an adapter said so (e.g. it fell back to
memory after a store error). The probe writes and deletes one temporary core row, so its
result is cached for PROBE_CACHE_S to keep a busy health checker off the write lock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from chatstate import state
from chatstate.gateway import logs
from chatstate.gateway.registry import LoadedPlugin
from chatstate.gateway.sweeper import SweepStatus

PROBE_CACHE_S = 5.0  # seconds a store probe result is reused by /healthz


class StoreProbe:
    """Run `Database.probe` off the loop, at most once per PROBE_CACHE_S, one caller at a time."""

    def __init__(self, database: state.Database) -> None:
        self._database = database
        self._lock = asyncio.Lock()
        self._result: dict[str, Any] | None = None
        self._at = 0.0

    async def result(self) -> dict[str, Any]:
        """The latest probe summary: {ok, database_path, failed: [steps that failed]}."""
        async with self._lock:
            if self._result is None or time.monotonic() - self._at > PROBE_CACHE_S:
                raw = await asyncio.to_thread(self._database.probe)
                failed = [s for s in raw["steps"] if not s["ok"]]
                self._result = {"ok": raw["ok"], "database_path": raw["database_path"], "failed": failed}
                self._at = time.monotonic()
                if failed:
                    logs.get("health").warning("store_probe_failed", extra={"op": "probe", "steps": failed})
            return self._result


def adapter_health(plugins: Sequence[LoadedPlugin]) -> dict[str, dict[str, Any]]:
    """Each plugin's `health()`, with its origin and mode; a raising health() counts as degraded."""
    out: dict[str, dict[str, Any]] = {}
    for lp in plugins:
        try:
            report = dict(lp.plugin.health())
        except Exception as exc:  # a broken health() must not break /healthz for everyone
            report = {"status": "degraded", "error": f"health() raised {type(exc).__name__}"}
        report.setdefault("status", "ok")
        report.setdefault("mode", lp.adapter.mode)
        report["origin"] = lp.origin
        out[lp.id] = report
    return out


def summarize(
    *,
    ready: bool,
    draining: bool,
    started_at: float,
    store: dict[str, Any] | None,
    adapters: dict[str, dict[str, Any]],
    sweeper: SweepStatus,
) -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, body) for /healthz from its parts; pure, so it is unit-tested."""
    if draining:
        status = "stopping"
    elif not ready:
        status = "starting"
    elif (
        (store is not None and not store["ok"])
        or sweeper.last_error
        or any(a.get("status") != "ok" for a in adapters.values())
    ):
        status = "degraded"
    else:
        status = "ok"
    body = {
        "status": status,
        "ready": ready and not draining,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - started_at, 3),
        "store": store,
        "sweeper": sweeper.as_dict(),
        "adapters": adapters,
        "store_ops": state.op_counts(),  # operations started in this process, by name
    }
    return (200 if body["ready"] else 503), body
