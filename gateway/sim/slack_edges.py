"""Slack's documented edge behaviours as the simulator plays them, one switch each
(all off by default, all at once with `SlackEdges.hostile()`): the 3-second ack deadline and the
retry schedule with `X-Slack-Retry-Num`/`-Reason`, a channel mention delivered as both
`app_mention` and `message`, the bot's own posts echoed back as `message` events, edits and thread
broadcasts, and `chat.postMessage` answering 429 + Retry-After, 503, or posting and then
resetting the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RETRY_SCHEDULE_S = (0.0, 60.0, 300.0)  # Slack retries immediately, after ~1 min, after ~5 min
ACK_DEADLINE_S = 3.0  # a delivery not answered 2xx within this is a failure (http_timeout)


@dataclass(frozen=True)
class SlackEdges:
    """Which of Slack's documented edge behaviours the simulator plays (all off by default).

    `*_every = N` knobs count chat.postMessage calls: calls F, F+N, F+2N... get the fault, F
    being the matching `*_first` (1 by default; a 429 wins over a 503, a 503 over a reset), so
    a test knows exactly which call fails and that the retry of a faulted call goes through.
    """

    retries: bool = False  # not 2xx within ack_deadline_s -> retried with X-Slack-Retry-Num 1..3
    schedule_scale: float = 1.0  # multiplies RETRY_SCHEDULE_S (tests compress minutes to seconds)
    ack_deadline_s: float = ACK_DEADLINE_S
    double_mention: bool = False  # a channel mention also arrives as a `message` event
    echo_bot_messages: bool = False  # the bot's posts come back as `message` events (bot_id set)
    edits: bool = False  # every user message is followed by a `message_changed` edit of it
    deletions: bool = False  # every user message is deleted once delivered (`message_deleted`)
    thread_broadcast: bool = False  # thread replies are "also sent to the channel"
    rate_limit_every: int = 0  # 429 + Retry-After: retry_after_s; nothing posted
    retry_after_s: int = 1
    server_error_every: int = 0  # 503; nothing posted
    server_error_first: int = 1
    reset_after_post_every: int = 0  # posted, then the connection is reset before the answer
    reset_after_post_first: int = 1

    @classmethod
    def hostile(cls, *, schedule_scale: float = 0.02) -> SlackEdges:
        """Every switch on: the profile of the demo's `--hostile` and the exactly-once tests."""
        return cls(
            retries=True,
            schedule_scale=schedule_scale,
            double_mention=True,
            echo_bot_messages=True,
            edits=True,
            deletions=True,
            thread_broadcast=True,
            # every other reply meets all three: call 1 gets 429, its retry 503, the
            # next retry is posted and reset; call 4 goes through; call 5 starts over
            rate_limit_every=4,
            server_error_every=4,
            server_error_first=2,
            reset_after_post_every=4,
            reset_after_post_first=3,
        )

    def gateway_config(self) -> dict[str, Any]:
        """Adapter settings that scale with the compressed schedule: a dead process's lease on
        an event must run out before Slack's last retry, as 60 s does before 5 min."""
        if self.schedule_scale >= 1.0:
            return {}
        return {"event_lease_ms": max(500, int(RETRY_SCHEDULE_S[1] * 1000 * self.schedule_scale))}


def post_fault(e: SlackEdges, n: int) -> str | None:
    """Which fault chat.postMessage call `n` (1-based) meets, if any."""
    for name, every, first in (
        ("rate_limited", e.rate_limit_every, 1),
        ("server_error", e.server_error_every, e.server_error_first),
        ("reset_after_post", e.reset_after_post_every, e.reset_after_post_first),
    ):
        if every and n >= first and (n - first) % every == 0:
            return name
    return None
