"""Exactly-once, measured: a burst of user mentions through a hostile Slack (every edge switch
on) while the gateway is SIGKILLed and restarted mid-burst; the simulator's posts are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from slack_helpers import stored

from chatstate.adapters.slack.state import PENDING_NAMESPACE
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackEdges, SlackSimulator

SCALE = 0.02  # Slack's retry schedule 0 / 60 / 300 s -> 0 / 1.2 / 6 s
ACTIONS = 24


async def burst(
    slack: SlackSimulator, count: int, *, spacing_s: float = 0.05
) -> tuple[list[str], list[asyncio.Task[Any]]]:
    """Start `count` channel mentions, one every `spacing_s`; return their roots and tasks."""
    roots: list[str] = []
    tasks: list[asyncio.Task[Any]] = []
    for i in range(count):
        event = slack.mention_event(f"job {i}")
        roots.append(event["event"]["ts"])
        tasks.append(asyncio.create_task(slack.deliver(event)))
        await asyncio.sleep(spacing_s)
    return roots, tasks


async def quiet(db: Path, slack: SlackSimulator, *, timeout_s: float = 20.0) -> None:
    """Wait until the gateway holds no unfinished event and Slack has nothing in flight."""
    deadline = time.monotonic() + timeout_s
    while stored(db, PENDING_NAMESPACE):
        assert time.monotonic() < deadline, "held events were never finished"
        await asyncio.sleep(0.1)
    await slack.settle()


def answers_per_action(slack: SlackSimulator, roots: list[str]) -> Counter[str]:
    per_root = Counter(p["thread_ts"] for p in slack.posts())
    return Counter({root: per_root[root] for root in roots})


async def test_every_mention_is_answered_once_through_a_sigkill(tmp_path: Path) -> None:
    slack = SlackSimulator(edges=SlackEdges.hostile(schedule_scale=SCALE))
    async with GatewayHarness([slack], state_dir=tmp_path / "state") as gw:
        started = asyncio.create_task(burst(slack, ACTIONS))
        await slack.wait_for_posts(ACTIONS // 3, timeout=30)
        # Slack's 5 min of retries outlast a restart; its compressed 7 s may not (a start takes
        # 10 s on a loaded machine): they wait for it. Deliveries still fail meanwhile
        slack.redeliver.clear()
        assert await gw.kill() == -9  # mid-burst: deliveries and replies are in flight
        await gw.start()
        slack.redeliver.set()
        roots, tasks = await started
        results = await asyncio.gather(*tasks, return_exceptions=True)
        acks = Counter(getattr(r, "body", type(r).__name__) for r in results)
        # events acked before their reply ("accepted") and then killed are finished by the
        # recovery loop once the dead process's lease runs out: wait for every answer, then
        # for nothing held and nothing in flight, and only then count
        await slack.wait_for(lambda _r: all(answers_per_action(slack, roots).values()), timeout=30)
        await quiet(gw.database_path, slack)
        counts = answers_per_action(slack, roots)
        print(
            f"\nslack sigkill burst: {ACTIONS} actions, answers per action {sorted(Counter(counts.values()).items())}, "
            f"posts {len(slack.posts())}, acks {dict(acks)}, hits {dict(slack.hits)}"
        )
        assert set(counts.values()) == {1}, counts
        assert len(slack.posts()) == ACTIONS
