"""The Teams channel's edge behaviours as the Bot Connector simulator plays them, one
switch each (all off by default, all at once with `TeamsEdges.hostile()`): 429 + Retry-After and
502/503/504 on the bot's sends, an activity delivered again with the same id when the bot is slow
(or simply twice), redelivery after a failed delivery, users' edits (`messageUpdate`), and bot
messages deleted (`messageDelete`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANSWER_DEADLINE_S = 15.0  # the channel gives a bot this long to answer, then sends the activity again
RETRY_SCHEDULE_S = (1.0, 5.0, 30.0)  # redelivery after a failed delivery (our model; Azure documents none)


@dataclass(frozen=True)
class TeamsEdges:
    """Which Bot Connector / channel edge behaviours the simulator plays (all off by default).

    `*_every = N`: calls (or user activities) 1, 1+N, 1+2N... get the behaviour.
    """

    rate_limit_every: int = 0  # the bot's send gets 429 + Retry-After: retry_after_s (not sent)
    retry_after_s: int = 1
    server_error_every: int = 0  # the bot's send gets 502, 503, 504 in turn (not sent)
    server_error_first: int = 1  # the first call that gets it; then every server_error_every
    max_faults_per_send: int | None = None  # transient faults: one send (same body) meets at most this many
    redeliver_after_s: float | None = None  # not answered by then: the same activity again
    duplicate_every: int = 0  # the user activity is delivered twice at once
    retries: bool = False  # no answer / 5xx from the gateway: delivered again (RETRY_SCHEDULE_S)
    schedule_scale: float = 1.0
    edits: bool = False  # every user message is followed by a messageUpdate (edit) of it
    delete_bot_messages_every: int = 0  # the bot's Nth, 2Nth... message is deleted: messageDelete delivered

    @classmethod
    def hostile(cls, *, schedule_scale: float = 0.1) -> TeamsEdges:
        """Every switch on: the demo's `--hostile` profile and the exactly-once tests."""
        # every other reply meets both faults (call 1: 429 for 1 s, then a 5xx, then through),
        # and that turn outlasts the channel's answer deadline (15 s, here shortened to 2/3 of
        # the scaled value so a 1.3 s turn is redelivered while the claim's lease still holds)
        return cls(
            rate_limit_every=4,
            retry_after_s=1,
            server_error_every=4,
            server_error_first=2,
            redeliver_after_s=ANSWER_DEADLINE_S * schedule_scale * 2 / 3,
            max_faults_per_send=2,
            duplicate_every=3,
            retries=True,
            schedule_scale=schedule_scale,
            edits=True,
            delete_bot_messages_every=7,
        )

    def gateway_config(self) -> dict[str, Any]:
        """Adapter settings that scale with a compressed schedule: a dead process's claim on an
        activity must run out before the channel's last redelivery (20 s before 36 s)."""
        if self.schedule_scale >= 1.0:
            return {}
        return {"activity_lease_ms": max(1500, int(20_000 * self.schedule_scale))}
