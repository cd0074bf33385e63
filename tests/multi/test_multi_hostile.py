"""Exactly-once, measured, with two gateways on one Redis behind a round-robin balancer: a
burst of user actions through a hostile far end (every edge switch on) while gateway A is
SIGKILLed mid-burst and stays down. Answers are counted from the simulators' records."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

from multi_helpers import gateways, stored

from chatstate.gateway.sim.discord import DiscordEdges, DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackEdges, SlackSimulator
from chatstate.gateway.sim.teams import TeamsEdges, TeamsSimulator

SCALE = 0.02  # Slack's retry schedule 0 / 60 / 300 s -> 0 / 1.2 / 6 s
ACTIONS = 24


class Balancer:
    """Round robin over the gateways still running: what a load balancer with health checks does."""

    def __init__(self) -> None:
        self.gws: list[GatewayHarness] = []
        self._turn = itertools.count()

    def url(self) -> str:
        live = [gw for gw in self.gws if gw.running] or self.gws
        return live[next(self._turn) % len(live)].gateway_url


class Balanced:
    """Mixin: every delivery attempt (first try, retry, redelivery) goes through `balancer`."""

    def __init__(self, balancer: Balancer, **kw: Any) -> None:
        self.balancer = balancer
        super().__init__(**kw)

    @property
    def gateway_url(self) -> str | None:
        return self.balancer.url() if self.balancer.gws else None

    @gateway_url.setter
    def gateway_url(self, _value: str | None) -> None:
        pass  # the harness points it at the last gateway started; the balancer decides instead


class BalancedSlack(Balanced, SlackSimulator):
    pass


class BalancedTeams(Balanced, TeamsSimulator):
    pass


async def test_slack_burst_through_two_gateways_with_one_killed(shared_url: str, tmp_path: Path) -> None:
    lb = Balancer()
    slack = BalancedSlack(lb, edges=SlackEdges.hostile(schedule_scale=SCALE))
    async with gateways([slack], shared_url, tmp_path) as (a, b):
        lb.gws = [a, b]
        roots: list[str] = []
        tasks: list[asyncio.Task[Any]] = []
        for i in range(ACTIONS):
            event = slack.mention_event(f"job {i}")
            roots.append(event["event"]["ts"])
            tasks.append(asyncio.create_task(slack.deliver(event)))
            await asyncio.sleep(0.05)
            if i == ACTIONS // 2:
                assert await a.kill() == -9  # mid-burst; A stays down
        results = await asyncio.gather(*tasks, return_exceptions=True)
        acks = Counter(getattr(r, "body", type(r).__name__) for r in results)

        def answers() -> Counter[str]:
            per_root = Counter(p["thread_ts"] for p in slack.posts())
            return Counter({r: per_root[r] for r in roots})

        await slack.wait_for(lambda _r: all(answers().values()), timeout=30)
        deadline = time.monotonic() + 20
        while stored(shared_url, "slack", "slack.pending"):  # B finishes what A acked and held
            assert time.monotonic() < deadline, "held events were never finished"
            await asyncio.sleep(0.1)
        await slack.settle()
        counts = answers()
        taken = [e for e in b.logs() if e.get("event") == "gate_held_item_taken"]
        print(
            f"\nslack two gateways, A killed: {ACTIONS} actions, answers per action "
            f"{sorted(Counter(counts.values()).items())}, acks {dict(acks)}, held events B took {len(taken)}, "
            f"hits {dict(slack.hits)}"
        )
        assert set(counts.values()) == {1}, counts
        assert len(slack.posts()) == ACTIONS


async def test_teams_burst_through_two_gateways_with_one_killed(shared_url: str, tmp_path: Path) -> None:
    lb = Balancer()
    sim = BalancedTeams(lb, edges=TeamsEdges.hostile(schedule_scale=0.1))
    async with gateways([sim], shared_url, tmp_path) as (a, b):
        lb.gws = [a, b]
        ids: list[str] = []
        tasks: list[asyncio.Task[Any]] = []
        open_at_kill = 0
        for i in range(ACTIONS):
            activity = sim.activity("message_mention", text=f"<at>chatstate</at> job {i}")
            ids.append(activity["id"])
            tasks.append(asyncio.create_task(sim.deliver(activity)))
            await asyncio.sleep(0.05)
            if i == ACTIONS // 2:
                open_at_kill = sim.open_deliveries
                assert await a.kill() == -9  # mid-burst; A stays down
        statuses = await asyncio.gather(*tasks, return_exceptions=True)
        await sim.settle()
        per_id = Counter(x.get("reply_to_id") for x in sim.sent())
        counts = Counter({i: per_id[i] for i in ids})
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        print(
            f"\nteams two gateways, A killed: {ACTIONS} actions, answers per action "
            f"{sorted(Counter(counts.values()).items())}, deliveries open at the kill {open_at_kill}, "
            f"final statuses {dict(Counter(map(str, statuses)))}, hits {dict(sim.hits)}"
        )
        assert 0 not in counts.values(), counts  # nothing lost
        assert duplicates <= open_at_kill, counts  # see tests/adapters/teams/test_teams_exactly_once.py


class BalancedDiscord(Balanced, DiscordSimulator):
    pass


async def test_discord_double_clicks_through_two_gateways_with_one_killed(shared_url: str, tmp_path: Path) -> None:
    lb = Balancer()
    sim = BalancedDiscord(lb)
    async with gateways([sim], shared_url, tmp_path) as (a, b):
        lb.gws = [a, b]
        users = [str(1_100_000_000_000_003_000 + i) for i in range(40)]
        panels = [await sim.post_panel(user_id=u) for u in users]  # half through A, half through B
        sim.edges = DiscordEdges.hostile()
        answered_before = len(sim.recorded("interaction_response"))

        async def double_click(panel: dict[str, Any], who: str) -> bool:
            # one interaction through each gateway (round robin), within milliseconds
            payloads = [sim.click_payload(panel, "Approve", user_id=who) for _ in range(2)]
            sim.hit("double_click")
            results = await asyncio.gather(*(sim.deliver(p) for p in payloads), return_exceptions=True)
            return any(not isinstance(r, BaseException) and r.body is not None for r in results)

        clicks = [asyncio.create_task(double_click(p, u)) for p, u in zip(panels, users)]
        await sim.wait_for(lambda _r: len(sim.recorded("interaction_response")) - answered_before >= 1)
        assert await a.kill() == -9  # A stays down; its clicks in flight die with it
        answered = await asyncio.gather(*clicks)
        for panel, who, ok in zip(panels, users, answered):
            if not ok:  # "This interaction failed": the user clicks again, and B answers
                await sim.deliver(sim.click_payload(panel, "Approve", user_id=who))

        by_interaction = {
            r.payload["request"]["id"]: r.payload["request"]["message"]["id"]
            for r in sim.records
            if r.kind in ("interaction_response", "interaction_failed") and r.payload["request"].get("type") == 3
        }
        outcomes: dict[str, Counter[str]] = {p["id"]: Counter() for p in panels}
        for ans in sim.answers():
            panel_id = by_interaction.get(ans["interaction_id"])
            if panel_id in outcomes:
                outcomes[panel_id][
                    "approved" if str(ans["content"]).startswith("Approved by") else str(ans["content"])
                ] += 1
        summary = Counter(
            "approved once"
            if o["approved"] == 1
            else (
                "refused: already used by you"
                if o["approved"] == 0 and o["You already used this component."]
                else repr(dict(o))
            )
            for o in outcomes.values()
        )
        print(
            f"\ndiscord two gateways, A killed: {len(panels)} buttons double-clicked (one click per gateway), "
            f"outcomes {dict(summary)}, hits {dict(sim.hits)}"
        )
        assert all(o["approved"] <= 1 for o in outcomes.values()), outcomes
        assert set(summary) <= {"approved once", "refused: already used by you"}, outcomes
