"""The /sync loop: a filter of our own, gap-free timelines, the token saved after each batch.

Built around three things a real homeserver (Synapse) does:
- **Limited timelines** (`limited: true` with a `prev_batch`): we page `/messages` backwards
  from `prev_batch` to our `since` token and handle those events first, in order; past
  `backfill_max_events` per room per sync the oldest are skipped, counted and logged.
- **A ~2 minute response cache**, keyed by user, device and query: a start's first sync would
  repeat the previous run's last request, so every start uploads a *new* filter (a nonce in
  it). The gate's claims make replays harmless even where that does not hold (a proxy, a bug).
- **Invites**: with `auto_join`, one from an allowed inviter is joined (others ignored).
The token moves on only after every event of its batch was handled or given up (per-event
isolation in handlers.py), so a failing event never pins the loop to one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import asdict
from typing import Any

from nio import InviteMemberEvent, SyncResponse

from chatstate.adapters.matrix.handlers import ApprovalFlow
from chatstate.adapters.matrix.platform import MatrixError
from chatstate.adapters.matrix.state import VALUE_VERSION
from chatstate.gateway.sdk import AdapterState

RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # backoff after a failed /sync, last one repeats
STOP_GRACE_S = 5.0  # how long stop() lets a batch being handled finish before cancelling it
BACKFILL_PAGE = 100  # events per /messages call
SYNC_GRACE_S = 15.0  # nio's: a long-poll unanswered this long past its timeout has timed out (and is retried)


class SyncLoop:
    """Long-poll the homeserver with our filter; back-fill gaps; hand each room to the flow."""

    def __init__(self, flow: ApprovalFlow, tokens: AdapterState) -> None:
        self.flow, self.io, self.settings, self.log = flow, flow.io, flow.settings, flow.log
        self.tokens = tokens  # matrix.sync: where each bot account's /sync stream resumes
        self.token: str | None = None
        self.last_error: str | None = None
        self.batches = 0
        counted = ("backfilled_events", "backfill_truncated", "backfill_failed", "invites_joined", "invites_ignored")
        self.counters = dict.fromkeys(counted, 0)
        self.last_truncated: dict[str, Any] | None = None
        self._handled_invites: set[str] = set()
        self._handling = False  # a batch is being handled and its token is not saved yet
        self._answer_by: float | None = None  # monotonic time by which the /sync in flight is late
        self._stopping = False

    def health(self) -> dict[str, Any]:
        late = self._answer_by is not None and time.monotonic() > self._answer_by  # a hung homeserver
        error = self.last_error or ("/sync unanswered past its timeout" if late else None)
        counts = {"sync_error": error, "batches": self.batches, **asdict(self.flow.stats), **self.counters}
        counts |= {"events_malformed": self.io.client.malformed, "syncs_malformed": self.io.malformed_syncs}
        return {**counts, "last_backfill_truncated": self.last_truncated}

    async def resume(self) -> bool:
        """Upload this start's filter; load the saved token (returns True), else take a baseline
        sync whose history is not acted on (its open invites are). Raises MatrixError when the
        homeserver refuses the filter or the baseline sync."""
        await self.io.upload_filter(timeline_limit=self.settings.sync_timeline_limit, nonce=secrets.token_hex(8))
        saved = await self.tokens.get(self.io.user_id)
        if saved is not None:
            self.token = str(saved["next_batch"])
            return True
        resp = await self.io.sync(since=None, timeout_ms=0)
        for room_id, info in resp.rooms.invite.items():  # invites are not history: still open
            await self._invite(room_id, info.invite_state)
        await self._advance(resp.next_batch)
        return False

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End `task` (running `run`): at once while it waits on the homeserver, else after the
        batch being handled is done and its token saved (up to STOP_GRACE_S). Cancelling is
        safe: an unsaved batch is replayed next start and the gate skips what was done."""
        self._stopping = True
        if self._handling:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Sync until cancelled or stopped; a failed /sync is retried from the same token."""
        failures = 0
        while not self._stopping:
            try:
                self._answer_by = time.monotonic() + self.settings.sync_timeout_ms / 1000 + SYNC_GRACE_S
                resp = await self.io.sync(since=self.token, timeout_ms=self.settings.sync_timeout_ms)
                self._handling, self._answer_by = True, None
                await self.handle(resp)
                await self._advance(resp.next_batch)
            except Exception as exc:  # the network, the homeserver or our store: retry the sync
                self._handling = False
                if self._stopping:
                    return
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("matrix_sync_failed", extra={"error": self.last_error})
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)])
                failures += 1
                continue
            failures, self.last_error = 0, None

    async def handle(self, resp: SyncResponse) -> None:
        """Invites, then each joined room's events (back-filled when limited), room by room."""
        for room_id, info in resp.rooms.invite.items():
            await self._invite(room_id, info.invite_state)
        for room_id, room in resp.rooms.join.items():
            events = list(room.timeline.events)
            if room.timeline.limited and room.timeline.prev_batch and self.token is not None:
                events = await self._backfill(room_id, room.timeline.prev_batch) + events
            await self.flow.room_events(room_id, events)

    async def _backfill(self, room_id: str, prev_batch: str) -> list[Any]:
        """Events between our token and `prev_batch`, oldest first, at most the bound."""
        older: list[Any] = []  # newest first while paging backwards
        start: str | None = prev_batch
        bound = self.settings.backfill_max_events
        try:
            while start and len(older) < bound:
                want = min(BACKFILL_PAGE, bound - len(older))
                page = await self.io.messages_before(room_id, start, to=self.token, limit=want)
                older.extend(page.chunk)
                start = page.end if page.chunk and page.end != start else None  # None: reached our token
            if start and len(older) >= bound:  # more remain unless the last page ended at our token
                probe = await self.io.messages_before(room_id, start, to=self.token, limit=1)
                if probe.chunk:
                    self.counters["backfill_truncated"] += 1
                    self.last_truncated = {"room": room_id, "backfilled": len(older), "bound": bound}
                    self.log.error("matrix_backfill_truncated", extra=self.last_truncated)
        except MatrixError as exc:  # e.g. left the room meanwhile: handle what the timeline has
            self.counters["backfill_failed"] += 1
            self.log.error("matrix_backfill_failed", extra={"room": room_id, "error": str(exc)})
        self.counters["backfilled_events"] += len(older)
        if older:
            self.log.info("matrix_backfilled", extra={"room": room_id, "events": len(older)})
        older.reverse()
        return older

    async def _invite(self, room_id: str, invite_state: list[Any]) -> None:
        if room_id in self._handled_invites:
            return
        self._handled_invites.add(room_id)
        mine = [e for e in invite_state if isinstance(e, InviteMemberEvent) and e.state_key == self.io.user_id]
        inviter = next((e.sender for e in mine if e.membership == "invite"), None)
        if not self.settings.auto_join or inviter not in self.settings.inviters:
            self.counters["invites_ignored"] += 1
            self.log.info("matrix_invite_ignored", extra={"room": room_id, "inviter": inviter})
            return
        try:
            await self.io.join(room_id)
        except MatrixError as exc:
            self._handled_invites.discard(room_id)  # try again on the next sync that shows it
            self.log.warning("matrix_join_failed", extra={"room": room_id, "error": str(exc)})
            return
        self.counters["invites_joined"] += 1
        self.log.info("matrix_invite_joined", extra={"room": room_id, "inviter": inviter})

    async def _advance(self, next_batch: str) -> None:
        """Save `next_batch` once every event before it was handled: a restart resumes after it."""
        if next_batch != self.token:
            await self.tokens.record(self.io.user_id, {"version": VALUE_VERSION, "next_batch": next_batch})
            self.token = next_batch
            self.batches += 1
        self._handling = False
