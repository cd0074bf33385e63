"""One answer per inbound activity, however often the channel delivers it.

Teams sends an activity again with the same id when the bot was slow to answer or the delivery
failed; a second turn would mean a second reply. Each answerable activity (`message`,
`messageReaction`) is claimed in `msteams.activities` before its turn runs:
- a copy arriving while this process still runs the turn waits for it, then gets 200 if the
  turn succeeded, 503 if it failed (a 200 would tell the channel the activity was handled);
- a copy of a finished activity gets 200 and no turn;
- a copy whose claim is a live lease of another process (one that died mid-turn, or is still
  working) gets 503 + Retry-After, so the channel tries later; once the lease has run out the
  activity is answered (nothing lost);
- a turn whose send failed releases its claim, so the channel's redelivery can answer it.
The claim is `adapters.common.ClaimLedger`, atomic across gateways sharing a store.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from botbuilder.schema import Activity

from chatstate.adapters.common import ClaimLedger, now_ms
from chatstate.adapters.teams.state import ANSWERED_TYPES, activity_key

Turn = Callable[[], Awaitable[web.Response]]


class ActivityGate:
    """Runs each answerable activity's turn at most once to completion (`msteams.activities`)."""

    def __init__(self, ledger: ClaimLedger) -> None:
        self.ledger = ledger
        self._inflight: dict[str, asyncio.Task[web.Response]] = {}

    async def once(self, activity: Activity, turn: Turn) -> web.Response:
        """Run `turn` for `activity` unless a copy of it was (or is being) answered."""
        if activity.type not in ANSWERED_TYPES or not activity.id or activity.conversation is None:
            return await turn()
        key = activity_key(activity.conversation.id, activity.id)
        running = self._inflight.get(key)
        if running is not None:
            await asyncio.wait({running})  # the first copy's turn decides this copy's answer
            failed = running.cancelled() or running.exception() is not None or running.result().status >= 300
            if failed:
                return web.Response(status=503, headers={"Retry-After": "1"}, text="the first copy failed")
            return web.Response(status=200)
        task = asyncio.create_task(self._claimed(key, turn), name=f"teams-activity-{key}")
        self._inflight[key] = task
        task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _claimed(self, key: str, turn: Turn) -> web.Response:
        received_at = now_ms()
        if not await self.ledger.claim(key, received_at=received_at):
            if await self.ledger.is_done(key):
                return web.Response(status=200)
            retry_after = math.ceil(self.ledger.lease_ms / 1000)
            return web.Response(status=503, headers={"Retry-After": str(retry_after)}, text="in progress elsewhere")
        try:
            response = await turn()
        except BaseException:
            await self.ledger.release(key)
            raise
        await self.ledger.mark_done(key, received_at=received_at)
        return response

    async def drain(self, timeout_s: float) -> None:
        """Let turns in flight finish (their writes are what a restart relies on)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout_s)
