"""Delete expired rows every `sweep_interval_s` (docs/state.md: 60 s), always off the loop.

`Database.sweep_expired` already works in bounded batches (<= 1,024 rows a transaction) so a
sweep never holds the write lock long; this module only decides when, and keeps the outcome
for /healthz. Expired rows are invisible to lookups before the sweep, so a late or failed
sweep costs disk space, never correctness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from chatstate import state
from chatstate.gateway import logs, metrics


@dataclass
class SweepStatus:
    """The last sweep's outcome, shown under "sweeper" in /healthz."""

    interval_s: float
    last_at: float | None = None
    last_rows: int | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)  # /healthz shows the fields under their own names


async def sweep_once(status: SweepStatus, database: state.Database) -> int | None:
    """Run one sweep in a worker thread; log it and record it in `status`; never raises
    StateStoreError (a failed sweep is retried next interval and shows as degraded)."""
    log = logs.get("sweeper")
    with logs.Timer() as t:
        try:
            rows = await asyncio.to_thread(database.sweep_expired)
        except state.StateStoreError as exc:
            status.last_at, status.last_error = time.time(), str(exc.code)
            log.error("sweep_failed", extra={"op": "sweep", "code": str(exc.code)})
            rows = None
    metrics.record_sweep(t.ms / 1000, rows)
    if rows is None:
        return None
    status.last_at, status.last_rows, status.last_error = time.time(), rows, None
    log.info("sweep", extra={"op": "sweep", "rows": rows, "duration_ms": t.ms})
    return rows


async def run_sweeper(status: SweepStatus, stop: asyncio.Event, database: state.Database) -> None:
    """Sweep every `status.interval_s` seconds until `stop` is set.

    Stopping by event rather than cancellation lets a sweep already running in its thread
    finish before the stores close (a cancelled `to_thread` would leave the thread running).
    """
    while True:
        try:
            await asyncio.wait_for(stop.wait(), status.interval_s)
            return
        except TimeoutError:
            await sweep_once(status, database)
