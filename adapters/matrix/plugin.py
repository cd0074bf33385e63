"""The Matrix plugin (wiring): config, nio client, states, the gate and the sync loop.

Start order matters: states open, this start's sync filter is uploaded and the sync position is
settled (saved token, or a baseline initial sync whose history is not acted on) before the loop
runs, and the gateway reports ready only after `start` returns, so every event sent after
readiness is handled. Stop: the loop ends (a batch being handled may finish and save its
token), the gate lets events in flight finish, then nio closes and the states.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.handlers import ApprovalFlow
from chatstate.adapters.matrix.platform import MatrixIO
from chatstate.adapters.matrix.state import HANDLED, REACTIONS, SYNC, quota_spec
from chatstate.adapters.matrix.sync import SyncLoop
from chatstate.gateway.sdk import AdapterState, ApprovalService, InboundGate, PluginRuntime, StatefulPlugin, UserQuota


@dataclass(frozen=True)
class Running:
    """The Matrix plugin's parts, built once in `build`."""

    io: MatrixIO
    gate: InboundGate
    sync: SyncLoop
    task: asyncio.Task[None]  # the sync loop

    async def close(self) -> None:
        await self.sync.stop(self.task)
        await self.gate.stop()
        await self.io.close()

    def health(self) -> dict[str, Any]:
        """The sync loop's counters (failed events, back-fill bound hits); degraded while /sync fails."""
        sync = self.sync.health()
        return {"status": "degraded" if sync["sync_error"] else "ok", "user": self.io.user_id, **sync}


class MatrixPlugin(StatefulPlugin[Running]):
    """Approval prompts answered by reaction, surviving restarts (`mode = "legacy"`: they don't)."""

    id = "matrix"
    settings_type = MatrixSettings

    async def build(self, runtime: PluginRuntime) -> Running:
        """Open states, log in, settle the sync position, start syncing. Raises ValueError (bad
        config), StateStoreError (states), MatrixError (the homeserver refused the token or the
        initial sync); the gateway then refuses to start."""
        settings = MatrixSettings.of(runtime)
        approvals = ApprovalService(legacy=runtime.legacy)
        specs = (REACTIONS, SYNC, HANDLED, quota_spec(settings.approval_ttl_ms))
        states = [AdapterState(spec, legacy=runtime.legacy) for spec in specs]
        for state in (*states, approvals.state):
            await self.open_state(state, runtime)
        targets, tokens, handled, counts = states
        io = MatrixIO(settings.homeserver, settings.access_token)
        try:
            await io.connect()
            # one process syncs a device at a time: a lease of this device that no task here
            # holds was left by a run that died, and is taken over (with the check) at once
            owner = f"{io.user_id}/{io.device_id}"
            gate = InboundGate(handled, lease_ms=settings.event_lease_ms, log=runtime.log, owner=owner)
            quota = UserQuota(counts, per_user=settings.max_pending_per_requester, ttl_ms=settings.approval_ttl_ms)
            flow = ApprovalFlow(
                io, settings, gate=gate, targets=targets, approvals=approvals, quota=quota, log=runtime.log
            )
            sync = SyncLoop(flow, tokens)
            resumed = await sync.resume()
        except BaseException:
            await io.close()
            raise
        gate.start()
        task = asyncio.create_task(sync.run(), name="matrix-sync")
        runtime.log.info("matrix_started", extra={"user": io.user_id, "rooms": len(io.rooms), "resumed": resumed})
        return Running(io, gate, sync, task)
