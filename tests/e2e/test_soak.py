"""Soak: restart the gateway many times (SIGTERM and SIGKILL in turn) under steady traffic from
all four simulators; no acknowledged write may be lost and no reply sent twice.

Off by default (it takes minutes): `python -m pytest -m soak tests/e2e/test_soak.py`.
`CHATSTATE_SOAK_RESTARTS` sets the number of restarts (default 50).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.scenarios import APPROVAL_FIELD, SCENARIOS
from chatstate.gateway.sim.slack import SlackSimulator

RESTARTS = int(os.environ.get("CHATSTATE_SOAK_RESTARTS", "50"))
ACK_DEADLINE_S = 60.0  # Slack gives up on an event after about this long of retries
RETRY_PAUSE_S = 0.2  # Slack's back-off, shortened for the test


async def slack_traffic(sim: SlackSimulator, stop: asyncio.Event, acked: dict[str, str]) -> None:
    """Post @mentions without pause, redelivering each one as Slack does until it is acked."""
    n = 0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        event = sim.mention_event(f"steady traffic {n}")
        n += 1
        retry: int | None = None
        deadline = loop.time() + ACK_DEADLINE_S
        while True:
            try:
                delivery = await sim.deliver(event, retry_num=retry)
                if delivery.status == 200:
                    acked[event["event"]["ts"]] = delivery.body
                    break
            except aiohttp.ClientError:
                pass  # the gateway is down or was killed mid-request: Slack retries
            assert loop.time() < deadline, f"event {event['event_id']} was never acknowledged"
            retry = (retry or 0) + 1
            await asyncio.sleep(RETRY_PAUSE_S)


@pytest.mark.soak
async def test_restarts_under_steady_traffic_lose_nothing_and_never_double_reply(tmp_path: Path) -> None:
    scenarios = list(SCENARIOS.values())
    sims = [s.make_simulator() for s in scenarios]
    slack = next(sim for sim in sims if isinstance(sim, SlackSimulator))
    slack.extra_config["event_lease_ms"] = 1_000  # a crash mid-event is retried within a second
    acked: dict[str, str] = {}
    stop = asyncio.Event()
    # One simulated user drives every scenario RESTARTS times within minutes: lift the per-user
    # fairness quotas (docs/gateway.md, "Fairness quotas") above what this one user needs.
    quotas = {"discord": {"panels_per_user": RESTARTS + 1}, "teams": {"sent_per_user": 2 * RESTARTS + 1}}
    async with GatewayHarness(sims, modes="store", state_dir=tmp_path / "state", adapters=quotas) as gw:
        traffic = asyncio.create_task(slack_traffic(slack, stop, acked))
        try:
            for i in range(RESTARTS):
                contexts = [await s.first_half(sim) for s, sim in zip(scenarios, sims)]
                await gw.restart(kind="kill" if i % 2 == 0 else "term")
                for s, sim, ctx in zip(scenarios, sims, contexts):
                    for outcome in await s.second_half(sim, ctx):
                        assert outcome.survived, f"restart {i + 1}: {outcome}"
        finally:
            stop.set()
            await traffic

        # Every acknowledged Slack event got exactly one reply in its thread: none lost across a
        # restart, none duplicated by a redelivery.
        assert len(acked) > RESTARTS
        per_thread = Counter(p["thread_ts"] for p in slack.posts())
        lost = [root for root, body in acked.items() if body == "replied" and per_thread[root] == 0]
        doubled = [root for root in acked if per_thread[root] > 1]
        assert lost == [] and doubled == []

        # The scenario conversations: one decision per Matrix approval, one Discord approval per
        # panel, one Teams reply_to_bot answer per reply.
        matrix = sims[[s.adapter for s in scenarios].index("matrix")]
        decisions = Counter(
            m["content"][APPROVAL_FIELD]["id"]
            for m in matrix.sent("m.room.message")
            if "decision" in m["content"].get(APPROVAL_FIELD, {})
        )
        assert len(decisions) == RESTARTS and set(decisions.values()) == {1}
        discord = sims[[s.adapter for s in scenarios].index("discord")]
        approvals = [
            r
            for r in discord.recorded("interaction_response")
            if str((r.payload["body"] or {}).get("data", {}).get("content", "")).startswith("Approved by")
        ]
        assert len(approvals) == RESTARTS
        teams = sims[[s.adapter for s in scenarios].index("teams")]
        assert sum(str(a.get("text", "")).startswith("[reply_to_bot]") for a in teams.sent()) == RESTARTS
