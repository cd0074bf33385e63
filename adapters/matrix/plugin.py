"""The Matrix plugin: wires config, nio client, stores, callbacks and the sync loop together.

Start order matters: stores open, this start's sync filter is uploaded and the sync position is
settled (saved token, or a baseline initial sync whose history is not acted on) before the loop
runs, and the gateway reports ready only after `start` returns, so every event sent after
readiness is handled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.handlers import ApprovalFlow, EventDispatcher
from chatstate.adapters.matrix.platform import MatrixIO
from chatstate.adapters.matrix.state import HandledEvents, ReactionTargets, RequesterSlots, SyncTokens
from chatstate.adapters.matrix.sync import SyncLoop
from chatstate.gateway.approvals import ApprovalService
from chatstate.gateway.plugin import PluginRuntime
from chatstate.gateway.stateful import StatefulPlugin


class MatrixPlugin(StatefulPlugin):
    """Approval prompts answered by reaction, surviving restarts (`mode = "legacy"`: they don't)."""

    id = "matrix"
    origin = "bundled"
    settings_type = MatrixSettings

    def __init__(self) -> None:
        super().__init__()
        self.config: MatrixSettings | None = None
        self.io: MatrixIO | None = None
        self.targets: ReactionTargets | None = None
        self.tokens: SyncTokens | None = None
        self.ledger: HandledEvents | None = None
        self.slots: RequesterSlots | None = None
        self.approvals: ApprovalService | None = None
        self.loop: SyncLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._legacy = False

    async def start(self, runtime: PluginRuntime) -> None:
        """Check config, open stores, log in, settle the sync position, start syncing.

        Raises StateStoreError (stores), MatrixError (homeserver
        refused the token or the initial sync); the gateway then refuses to start.
        """
        self.config = config = MatrixSettings.of(runtime)
        self._legacy = runtime.legacy
        self.targets = ReactionTargets(legacy=runtime.legacy)
        self.tokens = SyncTokens(legacy=runtime.legacy)
        self.approvals = ApprovalService(legacy=runtime.legacy)
        self.ledger = HandledEvents(legacy=runtime.legacy)
        self.slots = RequesterSlots(legacy=runtime.legacy)
        for part in (self.targets, self.tokens, self.approvals, self.ledger, self.slots):
            await self.open_state(part.state, runtime)
        self.io = io = MatrixIO(config.homeserver, config.access_token)
        flow = ApprovalFlow(
            io,
            self.targets,
            self.approvals,
            self.slots,
            approvers=config.approvers,
            approval_ttl_ms=config.approval_ttl_ms,
            max_pending_per_requester=config.max_pending_per_requester,
            log=runtime.log,
        )
        dispatcher = EventDispatcher(flow, self.ledger, max_attempts=config.event_max_attempts, log=runtime.log)
        self.loop = SyncLoop(
            io,
            self.tokens,
            dispatcher,
            timeout_ms=config.sync_timeout_ms,
            timeline_limit=config.sync_timeline_limit,
            backfill_max_events=config.backfill_max_events,
            auto_join=config.auto_join,
            inviters=config.inviters,
            log=runtime.log,
        )
        try:
            await io.connect()
            resumed = await self.loop.resume()
        except BaseException:
            await io.close()
            raise
        self._task = asyncio.create_task(self.loop.run(), name="matrix-sync")
        runtime.log.info("matrix_started", extra={"user": io.user_id, "rooms": len(io.rooms), "resumed": resumed})

    async def stop(self) -> None:
        """Stop syncing (letting a batch being handled finish and save its token), close nio,
        then the states."""
        if self._task is not None and self.loop is not None:
            await self.loop.stop(self._task)
            self._task = None
        if self.io is not None:
            await self.io.close()
        await super().stop()  # the five states: closed here, not left to the gateway

    def health(self) -> dict[str, Any]:
        """Status, stores, and the sync loop's counters (failed events, back-fill bound hits)."""
        sync = self.loop.health() if self.loop else {"sync_error": None}
        return {
            "status": "degraded" if self.degraded() or sync["sync_error"] else "ok",
            "mode": "legacy" if self._legacy else "store",
            "user": self.io.user_id if self.io else None,
            **sync,
            "stores": self.states_health(),
        }
