"""The Slack adapter in a real gateway subprocess against the Slack simulator: replies,
restarts (SIGTERM and SIGKILL), legacy vs store, TTLs, retries, duplicates, policy, signatures.

Waiting for a TTL or lease to run out is the behaviour under test, so those tests sleep until
the stored expiry (read from the database) has passed; everything else waits on events.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from slack_helpers import load_fixture, stored

from chatstate.adapters.slack.state import EVENTS_NAMESPACE, PENDING_NAMESPACE, STARTERS_NAMESPACE, THREADS_NAMESPACE
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackSimulator


async def mention(slack: SlackSimulator, text: str = "status?") -> str:
    """Post a top-level @mention, check the bot answered it in a thread; return the root ts."""
    event = slack.mention_event(text)
    delivery = await slack.deliver(event)
    assert (delivery.status, delivery.body) == (200, "replied")
    root = event["event"]["ts"]
    assert slack.posts(thread_ts=root)[-1]["text"] == f"echo: {text}"
    return root


async def follow_up(slack: SlackSimulator, root: str, **kw: Any) -> str:
    """An untagged message in the thread `root`; returns the outcome the gateway reported."""
    delivery = await slack.deliver(slack.message_event("and now?", thread_ts=root, **kw))
    assert delivery.status == 200
    return delivery.body


LEASE_MARGIN_MS = 2_000  # left of a lease when a retry is sent to meet it (one delivery, loaded machine)


async def sleep_past(expires_at_ms: int) -> None:
    """Let a stored TTL run out (the behaviour under test, not a synchronisation)."""
    await asyncio.sleep(max(0.0, expires_at_ms / 1000 - time.time()) + 0.05)


async def test_fixtures_mention_thread_and_reply_to_bot(gw: GatewayHarness, slack: SlackSimulator) -> None:
    app_mention = load_fixture("app_mention")
    first = await slack.deliver(app_mention)
    assert (first.status, first.body) == (200, "replied")
    root = app_mention["event"]["ts"]
    [reply] = slack.posts()
    assert (reply["channel"], reply["thread_ts"], reply["text"]) == (
        "C0GENERAL",
        root,
        "echo: what is the deploy status?",
    )

    retry = load_fixture("retry")
    again = await slack.deliver(retry["body"], retry_num=int(retry["headers"]["X-Slack-Retry-Num"]))
    assert (again.status, again.body) == (200, "already_done")

    in_thread = await slack.deliver(load_fixture("message_in_thread"))  # untagged, bot participates
    assert in_thread.body == "replied"
    assert [p["thread_ts"] for p in slack.posts()] == [root, root]  # the root, never the child ts

    to_bot = await slack.deliver(load_fixture("message_parent_user_id"))  # implicit reply_to_bot
    assert to_bot.body == "replied"
    assert slack.posts()[-1]["thread_ts"] == "1700000000.000400"

    threads = {e.key: e.value for e in stored(gw.database_path, THREADS_NAMESPACE)}
    assert set(threads) == {f"T0SIM:default:C0GENERAL:{root}", "T0SIM:default:C0GENERAL:1700000000.000400"}
    assert all(v["agent_id"] == "main" and isinstance(v["replied_at"], int) for v in threads.values())
    events = {e.key: e.value for e in stored(gw.database_path, EVENTS_NAMESPACE)}
    assert set(events) == {"T0SIM:Ev0FIXMENTION", "T0SIM:Ev0FIXTHREAD", "T0SIM:Ev0FIXPARENT"}
    assert all("done_at" in v for v in events.values())

    status, health = await gw.healthz()
    assert status == 200 and health["adapters"]["slack"]["status"] == "ok"
    assert health["adapters"]["slack"]["mode"] == "store"


async def test_untagged_top_level_message_is_ignored(gw: GatewayHarness, slack: SlackSimulator) -> None:
    await mention(slack)
    delivery = await slack.deliver(slack.message_event("just chatting"))
    assert (delivery.status, delivery.body) == (200, "ignored")
    assert len(slack.posts()) == 1


@pytest.mark.parametrize(
    ("mode", "kind", "expected"),
    [("store", "term", "replied"), ("store", "kill", "replied"), ("legacy", "term", "ignored")],
)
async def test_follow_up_after_restart(
    slack: SlackSimulator,
    tmp_path: Path,
    mode: Literal["store", "legacy"],
    kind: Literal["term", "kill"],
    expected: str,
) -> None:
    async with GatewayHarness([slack], modes=mode, state_dir=tmp_path / "state") as gw:
        root = await mention(slack)  # answered only once participation is durable...
        await gw.restart(kind)  # ...so a SIGKILL right after it loses nothing
        assert await follow_up(slack, root) == expected
        assert len(slack.posts(thread_ts=root)) == (2 if expected == "replied" else 1)


async def test_ttl_window_is_not_extended_by_a_restart(slack: SlackSimulator, tmp_path: Path) -> None:
    slack.extra_config["thread_ttl_ms"] = 2_500
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        root = await mention(slack)
        [before] = stored(gw.database_path, THREADS_NAMESPACE)
        assert before.expires_at == before.created_at + 2_500
        await gw.restart("term")
        # read as written, expired or not: a restart slower than the TTL (a loaded machine)
        # must not turn "the row was not rewritten" into "the row is gone"
        assert rows_as_written(gw.database_path, THREADS_NAMESPACE) == {
            before.key: (before.created_at, before.expires_at, before.version)
        }  # the restart neither rewrote the row nor moved its expiry
        await sleep_past(before.expires_at)  # 2.5 s after the reply, however long the restart took
        assert await follow_up(slack, root) == "ignored"
        assert len(slack.posts()) == 1


@pytest.mark.parametrize(("mode", "replies"), [("store", 1), ("legacy", 2)])
async def test_retry_after_restart_replies_once(
    slack: SlackSimulator, tmp_path: Path, mode: Literal["store", "legacy"], replies: int
) -> None:
    async with GatewayHarness([slack], modes=mode, state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("deploy?")
        assert (await slack.deliver(event)).body == "replied"
        await gw.restart("kill")
        retry = await slack.deliver(event, retry_num=1)
        assert retry.status == 200
        assert len(slack.posts()) == replies  # legacy forgot the event id: the double reply


async def test_crash_before_reply_is_retried_after_the_lease(tmp_path: Path) -> None:
    """A retry meets the dead process's lease (503) until it runs out, then is answered once.
    The lease must outlast the kill and the restart, which take seconds on a loaded machine: a
    short one keeps the test short, and when the restart outlasted it (checked, not assumed) the
    test runs again with a lease sized from that restart."""
    lease_ms = 6_000
    for run in (1, 2):
        restart_s = await crash_before_reply(tmp_path / f"run{run}", lease_ms)
        if restart_s is None:
            return
        lease_ms = 1_000 * math.ceil(lease_ms / 1_000 + 2 * restart_s)
    pytest.fail(f"the restart ({restart_s:.1f} s) outlasted a {lease_ms} ms lease twice")


async def crash_before_reply(state_dir: Path, lease_ms: int) -> float | None:
    """Kill the gateway between an event's claim and its reply, restart, retry the event before
    and after the lease: None once checked, or the restart's seconds if it outlasted the lease."""
    slack = SlackSimulator(extra_config={"event_lease_ms": lease_ms})
    async with GatewayHarness([slack], state_dir=state_dir) as gw:
        event = slack.mention_event("are you there?")
        slack.hold_posts = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(slack.deliver(event))
        await asyncio.wait_for(slack.post_arrived.wait(), 15)
        await gw.kill()  # claimed, reply not yet posted
        with pytest.raises(aiohttp.ClientError):
            await first  # Slack saw no 2xx, so it will retry
        slack.hold_posts.set_result(False)  # the reply in flight never reached Slack
        slack.hold_posts = None

        [lease] = stored(gw.database_path, EVENTS_NAMESPACE)
        assert "done_at" not in lease.value
        restart_began = time.monotonic()
        await gw.start()
        if lease.value["lease_until"] - time.time() * 1000 < LEASE_MARGIN_MS:
            return time.monotonic() - restart_began
        early = await slack.deliver(event, retry_num=1)  # the dead process's lease still holds it
        assert (early.status, early.headers.get("Retry-After")) == (503, str(lease_ms // 1000))
        assert slack.posts() == []

        await sleep_past(lease.value["lease_until"])
        late = await slack.deliver(event, retry_num=2)
        assert (late.status, late.body) == (200, "replied")  # no reply lost
        assert len(slack.posts()) == 1
        [quota] = stored(gw.database_path, STARTERS_NAMESPACE)  # the taken-over thread counted once
        assert sum(quota.value["b"].values()) == 1
    return None


async def test_failed_post_releases_the_event_for_the_retry(gw: GatewayHarness, slack: SlackSimulator) -> None:
    event = slack.mention_event("hello?")
    slack.fail_posts = True
    failed = await slack.deliver(event)
    assert failed.status == 503 and slack.posts() == []
    assert stored(gw.database_path, THREADS_NAMESPACE) == []  # nothing recorded for a failed send
    assert stored(gw.database_path, STARTERS_NAMESPACE) == []  # nor counted against the user
    slack.fail_posts = False
    retry = await slack.deliver(event, retry_num=1)
    assert (retry.status, retry.body) == (200, "replied")
    assert len(slack.posts()) == 1
    assert len(stored(gw.database_path, THREADS_NAMESPACE)) == len(stored(gw.database_path, STARTERS_NAMESPACE)) == 1


@pytest.mark.parametrize("error", ["not_in_channel", "is_archived", "msg_too_long"])
async def test_a_post_slack_refuses_for_good_is_done_not_retried(
    gw: GatewayHarness, slack: SlackSimulator, error: str
) -> None:
    """An error every retry would meet too (the bot was removed from the channel): the event is
    acked and marked done, nothing is recorded or counted, and Slack's retries post nothing."""
    event = slack.mention_event("anyone?")
    slack.refuse_posts = error
    first = await slack.deliver(event)
    assert (first.status, first.body) == (200, "refused")
    slack.refuse_posts = None  # a retry that went through now would be a late second effect
    for retry_num in (1, 2, 3):
        retry = await slack.deliver(event, retry_num=retry_num)
        assert (retry.status, retry.body) == (200, "already_done")
    assert slack.posts() == [] and slack.post_calls == 1
    [claim] = stored(gw.database_path, EVENTS_NAMESPACE)
    assert "done_at" in claim.value
    assert stored(gw.database_path, THREADS_NAMESPACE) == []  # the thread is not followed
    assert stored(gw.database_path, STARTERS_NAMESPACE) == []  # nor counted against the user
    assert stored(gw.database_path, PENDING_NAMESPACE) == []
    [refused] = [e for e in gw.logs() if e.get("event") == "gate_work_refused"]
    assert refused["reason"] == f"chat.postMessage: {error}"  # what the operator reads and fixes


async def test_a_reply_failing_on_slacks_last_retry_is_held_and_posted_later(
    slack: SlackSimulator, tmp_path: Path
) -> None:
    slack.extra_config["event_lease_ms"] = 1_000  # the recovery loop looks every half lease
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("last chance")
        slack.fail_posts = True
        third = await slack.deliver(event, retry_num=3)  # Slack sends it no more after this
        assert (third.status, third.body) == (200, "accepted")  # taken: the gateway keeps it
        assert slack.posts() == [] and len(stored(gw.database_path, PENDING_NAMESPACE)) == 1
        slack.fail_posts = False
        await slack.wait_for_posts(1, timeout=15)  # the recovery loop answered it
        deadline = time.monotonic() + 15
        while stored(gw.database_path, PENDING_NAMESPACE):
            assert time.monotonic() < deadline, "the held event was never finished"
            await asyncio.sleep(0.1)
        assert len(slack.posts(thread_ts=event["event"]["ts"])) == 1
        [claim] = stored(gw.database_path, EVENTS_NAMESPACE)
        assert "done_at" in claim.value


async def test_duplicate_concurrent_deliveries_reply_once(gw: GatewayHarness, slack: SlackSimulator) -> None:
    event = slack.mention_event("once please")
    slack.hold_posts = asyncio.get_running_loop().create_future()  # keep the first reply in flight
    tasks = [asyncio.create_task(slack.deliver(event)) for _ in range(5)]
    await asyncio.wait_for(slack.post_arrived.wait(), 15)

    async def four_answered_in_progress() -> None:
        """Every duplicate is answered while the first is still posting. (Not "all but one task done": under load
        the first may be acked at 2.5 s while a duplicate is still on its way.)"""
        while sum(t.done() and t.result().body == "in_progress" for t in tasks) < 4:
            if not (pending := [t for t in tasks if not t.done()]):
                return  # all answered, too few "in_progress": the assertions below say which
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    await asyncio.wait_for(four_answered_in_progress(), 30)
    slack.hold_posts.set_result(True)
    results = await asyncio.gather(*tasks)
    assert all(r.status == 200 for r in results)
    bodies = [r.body for r in results]
    assert bodies.count("in_progress") == 4
    assert set(bodies) - {"in_progress"} <= {"replied", "accepted"}  # "accepted": acked at 2.5 s
    await slack.wait_for_posts(1)
    assert (await slack.deliver(event, retry_num=1)).body == "already_done"
    assert len(slack.posts()) == 1


async def test_require_explicit_mention(slack: SlackSimulator, tmp_path: Path) -> None:
    slack.extra_config["require_explicit_mention"] = True
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        root = await mention(slack)
        assert await follow_up(slack, root) == "ignored"  # participation exists but is not enough
        assert await follow_up(slack, root, parent_user_id=slack.bot_user_id) == "ignored"
        again = await slack.deliver(slack.mention_event("explicit", thread_ts=root))
        assert again.body == "replied"
        assert len(slack.posts(thread_ts=root)) == 2
        assert len(stored(gw.database_path, THREADS_NAMESPACE)) == 1  # persistence unchanged by policy


async def test_bad_signatures_get_401_and_write_nothing(gw: GatewayHarness, slack: SlackSimulator) -> None:
    event = slack.mention_event("let me in")
    attempts = [
        await slack.deliver(event, secret="not-the-secret"),
        await slack.deliver(event, timestamp=int(time.time()) - 6 * 60),  # outside Slack's 5 min
        await slack.deliver(event, signed=False),
        await slack.deliver(load_fixture("url_verification"), secret="not-the-secret"),
    ]
    assert [a.status for a in attempts] == [401] * 4
    assert slack.posts() == []
    assert stored(gw.database_path, EVENTS_NAMESPACE) == []
    assert stored(gw.database_path, THREADS_NAMESPACE) == []

    handshake = load_fixture("url_verification")
    ok = await slack.deliver(handshake)
    assert ok.status == 200 and ok.body == f'{{"challenge": "{handshake["challenge"]}"}}'


async def test_kill_between_post_and_done_mark_does_not_reply_twice(slack: SlackSimulator, tmp_path: Path) -> None:
    slack.extra_config["event_lease_ms"] = 2_000
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        event = slack.mention_event("exactly once")
        root = event["event"]["ts"]
        slack.hold_posts = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(slack.deliver(event))
        await asyncio.wait_for(slack.post_arrived.wait(), 15)
        await gw.kill()  # the post is in Slack's hands; the done mark was never written
        with pytest.raises(aiohttp.ClientError):
            await first
        slack.hold_posts.set_result(True)  # Slack accepts the reply of the dead process
        slack.hold_posts = None
        await slack.wait_for_posts(1)
        [lease] = stored(gw.database_path, EVENTS_NAMESPACE)
        assert "done_at" not in lease.value
        # the participation row was durable before the post reached Slack, so the kill lost nothing
        assert len(stored(gw.database_path, THREADS_NAMESPACE)) == 1

        await gw.start()
        await sleep_past(lease.value["lease_until"])
        retry = await slack.deliver(event, retry_num=1)
        assert (retry.status, retry.body) == (200, "already_done")  # found its reply in the thread
        assert len(slack.posts()) == 1
        assert await follow_up(slack, root) == "replied"  # and recorded the participation it missed
        # the dead process counted the thread against the user with its claim: counted once
        [quota] = stored(gw.database_path, STARTERS_NAMESPACE)
        assert sum(quota.value["b"].values()) == 1


def rows_as_written(db: Path, namespace: str) -> dict[str, tuple[int, int | None, int]]:
    """key -> (created_at, expires_at, version) of every row in the file, live or expired."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        found = conn.execute(
            "SELECT key, created_at, expires_at, version FROM entries WHERE plugin_id = 'slack' AND namespace = ?",
            (namespace,),
        )
        return {key: (created, expires, version) for key, created, expires, version in found}
