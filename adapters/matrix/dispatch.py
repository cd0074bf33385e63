"""One event at a time: claim it in our ledger, run its handler, retry a bounded number of times,
and give up on it alone — never on the batch, the room or the sync position (issue 13).

Why a ledger and not the homeserver: Synapse serves a cached answer to an identical /sync for
about two minutes and dedupes txn ids per device only, so a replayed batch after a restart, a
new login or a second gateway on one Redis would otherwise act twice. An event with effects (an
approval request, an approver's decision reaction) is claimed in `matrix.handled-events` before
its first effect; whoever holds the claim acts, everyone else skips it. A claim still
`handling` when its process died (SIGKILL mid-event, e.g. while waiting out a 429) is finished
by the next start of the same device (its sends reuse their txn ids); a SIGTERM releases the
claim so the next start redoes it. Another device never takes a claim over: for it, at most once.

A failing handler is retried `max_attempts` times with backoff (the homeserver's
`retry_after_ms` when it gave one), then recorded as failed (log event `matrix_event_failed`,
counter in /healthz) and skipped, so an `M_FORBIDDEN` room cannot stop the bot answering in
the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chatstate.adapters.matrix.handlers import ApprovalFlow
from chatstate.adapters.matrix.platform import MatrixError
from chatstate.adapters.matrix.state import HandledEvents
from nio import ReactionEvent, RoomMessageText

RETRY_DELAYS_S = (0.25, 1.0, 2.0)  # between attempts of one event; the last one repeats
MAX_RETRY_AFTER_S = 30.0  # a homeserver asking for longer is capped: the loop must move on


@dataclass
class DispatchStats:
    """What /healthz shows about event handling."""

    handled: int = 0
    replays_skipped: int = 0  # claimed before: by an earlier run, another device or gateway
    withdrawn: int = 0  # reactions redacted in the same batch
    failed: int = 0
    last_failed: dict[str, Any] | None = field(default=None)


class EventDispatcher:
    """Route a room's events, in order, to the approval flow, each one isolated."""

    def __init__(
        self, flow: ApprovalFlow, ledger: HandledEvents, *, max_attempts: int, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self.flow = flow
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.log = log
        self.stats = DispatchStats()

    async def room_events(self, room_id: str, events: list[Any]) -> None:
        """Handle `events` of one room in order. A reaction redacted later in the same list is
        skipped (it was withdrawn before we acted). Raises only CancelledError."""
        redacted = {getattr(e, "redacts", None) for e in events} - {None}
        for event in events:
            if self.flow.wants_message(event):
                await self._one(room_id, event, self.flow.on_message)
            elif self.flow.wants_reaction(event):
                if event.event_id in redacted:
                    self.stats.withdrawn += 1
                    continue
                await self._one(room_id, event, self.flow.on_reaction)

    async def _one(self, room_id: str, event: RoomMessageText | ReactionEvent, handler: Callable[[str, Any], Awaitable[None]]) -> None:
        account, device = self.flow.account_id, self.flow.io.device_id
        if not await self.ledger.claim(account, event.event_id, device):
            self.stats.replays_skipped += 1
            self.log.info("matrix_event_replay_skipped", extra={"event_id": event.event_id, "room": room_id})
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                await handler(room_id, event)
            except asyncio.CancelledError:
                # stopping mid-event: let the next start redo it (its sends reuse their txn ids)
                await asyncio.shield(self.ledger.release(account, event.event_id))
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if attempt >= self.max_attempts:
                    await self._give_up(room_id, event.event_id, reason, attempt)
                    return
                delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)]
                retry_after_ms = exc.retry_after_ms if isinstance(exc, MatrixError) else None
                if retry_after_ms:
                    delay = max(delay, min(retry_after_ms / 1000, MAX_RETRY_AFTER_S))
                self.log.warning(
                    "matrix_event_retry", extra={"event_id": event.event_id, "room": room_id, "attempt": attempt, "error": reason}
                )
                await asyncio.sleep(delay)
                continue
            await self.ledger.done(account, event.event_id, device)
            self.stats.handled += 1
            return

    async def _give_up(self, room_id: str, event_id: str, reason: str, attempts: int) -> None:
        self.stats.failed += 1
        self.stats.last_failed = {"event_id": event_id, "room": room_id, "error": reason, "attempts": attempts}
        self.log.error("matrix_event_failed", extra={"event_id": event_id, "room": room_id, "error": reason, "attempts": attempts})
        await self.ledger.mark_failed(self.flow.account_id, event_id, self.flow.io.device_id, reason)
