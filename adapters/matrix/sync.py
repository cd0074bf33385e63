"""The /sync loop: resume from the persisted `next_batch`, save it after each handled batch.

The reference system let nio keep the token in memory, so after a restart the bot either
re-read old events or (with a fresh initial sync) skipped everything sent while it was down.
Here the token moves forward only after every callback of a batch has returned (and so after
every write and send those callbacks awaited). A crash mid-batch replays that batch, which the
handlers tolerate: targets are taken atomically and sends reuse their transaction ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nio import SyncResponse

from chatstate.adapters.matrix.platform import MatrixError, MatrixIO
from chatstate.adapters.matrix.state import SyncTokens

RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # backoff after a failed batch, last one repeats
STOP_GRACE_S = 5.0  # how long stop() lets a batch being handled finish before cancelling it
Callback = TypeVar("Callback", bound=Callable[..., Awaitable[None]])


class SyncLoop:
    """Long-poll the homeserver and hand each batch to nio's event callbacks."""

    def __init__(self, io: MatrixIO, tokens: SyncTokens, *, timeout_ms: int, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.io = io
        self.tokens = tokens
        self.timeout_ms = timeout_ms
        self.log = log
        self.token: str | None = None
        self.last_error: str | None = None
        self.batches = 0
        self._handling = False  # a batch's callbacks have started and its token is not saved yet
        self._stopping = False

    async def resume(self) -> bool:
        """Load the saved token; without one, take a baseline so history is not replayed.

        Call before any event callback is added: the baseline (initial) sync's events are
        history the bot must not act on. Returns True when a saved token was found. Raises
        MatrixError when the homeserver refuses the baseline sync.
        """
        self.token = await self.tokens.load(self.io.user_id)
        if self.token is not None:
            return True
        resp = await self.io.client.sync(timeout=0, full_state=True)
        if not isinstance(resp, SyncResponse):
            raise MatrixError(f"initial sync failed: {getattr(resp, 'message', resp)}")
        await self._advance(resp.next_batch)
        return False

    def guard(self, callback: Callback) -> Callback:
        """Wrap an event callback so `stop` knows a batch is being handled and lets it finish."""

        async def guarded(*args: Any) -> None:
            self._handling = True
            await callback(*args)

        return guarded  # type: ignore[return-value]

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End `task` (running `run`): at once while it waits on the homeserver, else after the
        batch being handled is done and its token saved (up to STOP_GRACE_S). Cancelling is
        always safe, since an unsaved batch is replayed next start; finishing just avoids it."""
        self._stopping = True
        if self._handling:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Sync until cancelled or stopped; a failed batch is retried from the same token."""
        failures = 0
        while not self._stopping:
            # nio skips a response whose next_batch it has seen; after a failed batch it has,
            # so point it back at our token to have the retried batch handled again.
            self.io.client.next_batch = self.token
            try:
                resp = await self.io.client.sync(timeout=self.timeout_ms, since=self.token)
                if not isinstance(resp, SyncResponse):
                    raise MatrixError(f"sync failed: {getattr(resp, 'message', resp)}")
                await self._advance(resp.next_batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a handler, the network or the homeserver: retry the batch
                self._handling = False
                if self._stopping:
                    return
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("matrix_sync_failed", extra={"error": self.last_error})
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)])
                failures += 1
                continue
            failures, self.last_error = 0, None

    async def _advance(self, next_batch: str) -> None:
        if next_batch != self.token:
            await self.tokens.save(self.io.user_id, next_batch)
            self.token = next_batch
            self.batches += 1
        self._handling = False
