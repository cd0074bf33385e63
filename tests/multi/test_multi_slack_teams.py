"""Slack retries and Teams replies that land on the other gateway."""

from __future__ import annotations

from pathlib import Path

from multi_helpers import gateways, stored, via

from chatstate.gateway.sim.slack import SlackSimulator
from chatstate.gateway.sim.teams import TeamsSimulator

CHANNEL = "19:general0123456789@thread.tacv2"


async def test_slack_event_to_a_and_its_retry_to_b_reply_once(shared_url: str, tmp_path: Path) -> None:
    slack = SlackSimulator()
    async with gateways([slack], shared_url, tmp_path) as (a, b):
        event = slack.mention_event("deploy?")
        first = await via(a, slack).deliver(event)
        assert (first.status, first.body) == (200, "replied")
        retry = await via(b, slack).deliver(event, retry_num=1, retry_reason="http_timeout")
        assert (retry.status, retry.body) == (200, "already_done")
        assert len(slack.posts()) == 1

        # A's reply made the thread one the bot participates in, for B too
        root = event["event"]["ts"]
        untagged = slack.message_event("and now?", thread_ts=root)
        follow = await via(b, slack).deliver(untagged)
        assert (follow.status, follow.body) == (200, "replied"), b.log_tail()
        assert [p["thread_ts"] for p in slack.posts()] == [root, root]
        assert set(stored(shared_url, "slack", "slack.events")) == {
            f"T0SIM:{event['event_id']}",
            f"T0SIM:{untagged['event_id']}",
        }


async def test_teams_reply_through_b_to_a_message_sent_by_a(shared_url: str, tmp_path: Path) -> None:
    sim = TeamsSimulator()
    async with gateways([sim], shared_url, tmp_path) as (a, b):
        assert await via(a, sim).deliver(sim.activity("message_mention")) == 200
        [answer] = sim.sent()
        assert f"{answer['conversation_id']}:{answer['id']}" in stored(shared_url, "teams", "msteams.sent-messages")

        reply = sim.activity(
            "message_reply", reply_to_id=answer["id"], conversation_id=f"{CHANNEL};messageid={answer['id']}"
        )
        assert await via(b, sim).deliver(reply) == 200
        assert sim.sent()[-1]["text"] == "[reply_to_bot] you said: thanks, and one more thing"
