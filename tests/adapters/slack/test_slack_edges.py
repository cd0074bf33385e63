"""Slack's documented edge behaviours, one simulator switch each, against a real gateway.

Each test names the switch it turns on (`SlackEdges`); the simulator's records (what Slack
received and posted) are the account read, never the gateway's own. Retry delays run on
Slack's schedule compressed by `schedule_scale`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from slack_helpers import stored

from chatstate.adapters.slack.state import EVENTS_NAMESPACE, THREADS_NAMESPACE
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import RETRY_SCHEDULE_S, SlackEdges, SlackSimulator

SCALE = 0.02  # Slack's 0 s / 60 s / 300 s retry schedule -> 0 / 1.2 / 6 s


async def test_retries_follow_slacks_schedule_until_answered(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(retries=True, schedule_scale=SCALE))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        slack.fail_posts = True  # chat.postMessage answers ok=false: the adapter answers 503
        event = slack.mention_event("deploy?")
        delivery = asyncio.create_task(slack.deliver(event))
        await slack.wait_for(lambda _r: len(slack.deliveries()) >= 2)
        slack.fail_posts = False  # the second retry (~1 min later, compressed) gets through
        got = await delivery
        assert (got.status, got.body) == (200, "replied")
        attempts = slack.deliveries(event["event_id"])
        assert [(a["retry_num"], a["outcome"]) for a in attempts] == [(0, "503"), (1, "503"), (2, "200")]
        assert slack.hits["retry:http_error"] == 2
        assert attempts[2]["at"] - attempts[1]["at"] >= RETRY_SCHEDULE_S[1] * SCALE
        assert len(slack.posts()) == 1


async def test_a_late_ack_is_retried_with_http_timeout_and_answered_once(tmp_path: Path) -> None:
    # an adapter that does not ack within 3 s (here: told it may take 10) gets Slack's retry
    slack = SlackSimulator(edges=SlackEdges(retries=True, schedule_scale=SCALE), extra_config={"ack_budget_s": 10})
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        slack.hold_posts = asyncio.get_running_loop().create_future()
        event = slack.mention_event("slow one")
        delivery = asyncio.create_task(slack.deliver(event))
        await slack.wait_for(lambda _r: len(slack.deliveries()) >= 2, timeout=20)
        slack.hold_posts.set_result(True)
        got = await delivery
        assert got.status == 200
        attempts = slack.deliveries(event["event_id"])
        assert attempts[0]["outcome"] == "timeout" and slack.hits["retry:http_timeout"] >= 1
        await slack.wait_for_posts(1)
        assert len(slack.posts()) == 1


async def test_the_adapter_acks_within_the_deadline_while_the_reply_is_slow(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(retries=True, schedule_scale=SCALE))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        slack.hold_posts = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        got = await slack.deliver(slack.mention_event("take your time"))
        assert (got.status, got.body) == (200, "accepted") and time.monotonic() - t0 < 3.0
        slack.hold_posts.set_result(True)
        await slack.wait_for_posts(1)
        assert [a["retry_num"] for a in slack.deliveries()] == [0]  # no retry was needed


async def test_a_channel_mention_delivered_twice_is_answered_once(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(double_mention=True))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("one answer please")
        assert (await slack.deliver(event)).body == "replied"
        await slack.settle()
        assert slack.hits["double_mention"] == 1
        assert len(slack.posts()) == 1
        assert len(stored(gw.database_path, EVENTS_NAMESPACE)) == 2  # both event ids handled


async def test_the_bots_own_messages_are_never_answered_nor_recorded(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(echo_bot_messages=True))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        roots = []
        for text in ("first", "second"):  # the echoes alternate: bot_id + user, subtype bot_message
            event = slack.mention_event(text)
            assert (await slack.deliver(event)).body == "replied"
            roots.append(event["event"]["ts"])
        await slack.settle()
        assert slack.hits["bot_echo"] == 2
        assert len(slack.posts()) == 2
        threads = stored(gw.database_path, THREADS_NAMESPACE)
        assert sorted(e.key.rsplit(":", 1)[1] for e in threads) == sorted(roots)


async def test_edits_and_deletions_are_not_answered_and_keep_participation(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(edits=True))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("typo")
        root = event["event"]["ts"]
        assert (await slack.deliver(event)).body == "replied"
        await slack.settle()
        assert slack.hits["edit"] == 1 and len(slack.posts()) == 1
        for deleted in (event, slack.posts()[0]):  # the user's message, then the bot's reply
            got = await slack.deliver(slack.delete_event(deleted))
            assert (got.status, got.body) == (200, "")
        assert len(slack.posts()) == 1
        assert [e.key.rsplit(":", 1)[1] for e in stored(gw.database_path, THREADS_NAMESPACE)] == [root]
        follow = await slack.deliver(slack.message_event("still there?", thread_ts=root))
        assert follow.body == "replied"  # the thread is still one the bot takes part in


async def test_deleted_user_messages_change_nothing(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(deletions=True))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        root = (event := slack.mention_event("first"))["event"]["ts"]
        assert (await slack.deliver(event)).body == "replied"
        follow = await slack.deliver(slack.message_event("second", thread_ts=root))
        assert follow.body == "replied"
        await slack.settle()
        assert slack.hits["deletion"] == 1 and len(slack.posts()) == 2
        assert [e.key.rsplit(":", 1)[1] for e in stored(gw.database_path, THREADS_NAMESPACE)] == [root]


async def test_a_thread_broadcast_in_a_participated_thread_is_answered_in_the_thread(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(thread_broadcast=True))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        event = slack.mention_event("start")
        root = event["event"]["ts"]
        assert (await slack.deliver(event)).body == "replied"
        broadcast = slack.message_event("also to the channel", thread_ts=root)
        assert broadcast["event"]["subtype"] == "thread_broadcast"
        got = await slack.deliver(broadcast)
        assert (got.status, got.body) == (200, "replied")
        assert [p["thread_ts"] for p in slack.posts()] == [root, root]


async def test_a_429_is_retried_after_retry_after_and_posts_once(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(rate_limit_every=2, retry_after_s=1))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        t0 = time.monotonic()
        got = await slack.deliver(slack.mention_event("rate me"))
        assert (got.status, got.body) in {(200, "replied"), (200, "accepted")}
        await slack.wait_for_posts(1)
        assert time.monotonic() - t0 >= 1.0  # Retry-After honoured
        assert (slack.hits["rate_limited"], slack.post_calls, len(slack.posts())) == (1, 2, 1)


async def test_a_503_is_retried_and_posts_once(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(server_error_every=2))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        got = await slack.deliver(slack.mention_event("flaky"))
        assert (got.status, got.body) == (200, "replied")
        assert (slack.hits["server_error"], slack.post_calls, len(slack.posts())) == (1, 2, 1)


async def test_a_reset_after_slack_posted_does_not_post_twice(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(reset_after_post_every=2))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("ambiguous")
        got = await slack.deliver(event)
        assert (got.status, got.body) == (200, "replied")
        assert slack.hits["reset_after_post"] == 1
        assert len(slack.posts()) == 1  # a blind retry would have posted it again
        root = event["event"]["ts"]
        assert [e.key.rsplit(":", 1)[1] for e in stored(gw.database_path, THREADS_NAMESPACE)] == [root]


async def test_rate_limit_retries_are_bounded(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges(rate_limit_every=1, retry_after_s=0))
    async with GatewayHarness([slack], state_dir=tmp_path / "state"):
        got = await slack.deliver(slack.mention_event("never"))
        assert got.status == 503  # given up; the event is released for Slack's own retry
        assert slack.posts() == [] and 2 <= slack.post_calls <= 5
