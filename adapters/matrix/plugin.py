"""The Matrix plugin: wires config, nio client, stores, callbacks and the sync loop together.

Start order matters: stores open and the sync position is settled (saved token, or a baseline
initial sync whose history is not acted on) *before* event callbacks are added, and the gateway
reports ready only after `start` returns, so every event sent after readiness is handled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nio import ReactionEvent, RoomMessageText

from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.matrix.handlers import ApprovalFlow
from chatstate.adapters.matrix.platform import MatrixIO
from chatstate.adapters.matrix.state import ReactionTargets, SyncTokens
from chatstate.adapters.matrix.sync import SyncLoop
from chatstate.gateway.approvals import ApprovalService
from chatstate.gateway.plugin import Plugin, PluginRuntime


class MatrixPlugin(Plugin):
    """Approval prompts answered by reaction, surviving restarts (`mode = "legacy"`: they don't)."""

    id = "matrix"
    origin = "bundled"
    settings_type = MatrixSettings

    def __init__(self) -> None:
        self.config: MatrixSettings | None = None
        self.io: MatrixIO | None = None
        self.targets: ReactionTargets | None = None
        self.tokens: SyncTokens | None = None
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
        for part in (self.targets, self.tokens, self.approvals):
            await part.open(runtime)
        self.io = io = MatrixIO(config.homeserver, config.access_token)
        try:
            await io.connect()
            self.loop = SyncLoop(io, self.tokens, timeout_ms=config.sync_timeout_ms, log=runtime.log)
            resumed = await self.loop.resume()
        except BaseException:
            await io.close()
            raise
        flow = ApprovalFlow(
            io, self.targets, self.approvals, approvers=config.approvers,
            approval_ttl_ms=config.approval_ttl_ms, log=runtime.log,
        )
        io.client.add_event_callback(self.loop.guard(flow.on_message), RoomMessageText)
        io.client.add_event_callback(self.loop.guard(flow.on_reaction), ReactionEvent)
        self._task = asyncio.create_task(self.loop.run(), name="matrix-sync")
        runtime.log.info("matrix_started", extra={"user": io.user_id, "rooms": len(io.rooms), "resumed": resumed})

    async def stop(self) -> None:
        """Stop syncing (letting a batch being handled finish and save its token), close nio."""
        if self._task is not None and self.loop is not None:
            await self.loop.stop(self._task)
            self._task = None
        if self.io is not None:
            await self.io.close()

    def health(self) -> dict[str, Any]:
        parts = [p.state.health() for p in (self.targets, self.tokens, self.approvals) if p is not None]
        degraded = any(p["mode"] == "degraded" for p in parts)
        sync_error = self.loop.last_error if self.loop else None
        return {
            "status": "degraded" if degraded or sync_error else "ok",
            "mode": "legacy" if self._legacy else "store",
            "user": self.io.user_id if self.io else None,
            "sync_error": sync_error,
            "stores": parts,
        }
