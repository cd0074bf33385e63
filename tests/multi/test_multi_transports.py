"""Two gateways on one Redis over the websocket transports (issue 19).

What each transport allows: Slack Socket Mode lets an app hold up to 10 connections and sends
each envelope to one of them, so both gateways take a share and the `slack.events` claim in
Redis keeps every reply single, also when one gateway dies with envelopes in hand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chatstate.gateway.sim.slack_socket import SlackSocketSimulator
from multi_helpers import gateways, stored


def replies_to(sim: SlackSocketSimulator, event: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in sim.posts() if (p.get("metadata") or {}).get("event_payload", {}).get("event_id") == event["event_id"]]


async def test_slack_socket_mode_spreads_envelopes_over_two_gateways_and_survives_a_kill(shared_url: str, tmp_path: Path) -> None:
    sim = SlackSocketSimulator(ack_timeout_s=1.0, max_retries=8)
    sim.extra_config.update({"socket_ping_interval_s": 0.5, "event_lease_ms": 1_500})
    async with gateways([sim], shared_url, tmp_path) as (a, b):
        await sim.wait_connected(2)
        events = [sim.mention_event(f"spread {i}") for i in range(10)]
        envs = [sim.send_envelope(e) for e in events]
        for env in envs:
            await sim.wait_acked(env)
        links = {sim.attempts(env.envelope_id)[0]["connection"] for env in envs}
        assert len(links) == 2  # each envelope went to one connection; both got some
        assert all(len(replies_to(sim, e)) == 1 for e in events)

        sim.hold_posts = asyncio.get_running_loop().create_future()
        held = [sim.mention_event(f"held {i}") for i in range(4)]
        held_envs = [sim.send_envelope(e) for e in held]
        await sim.wait_for(lambda recs: sum(r.kind == "post_arrived" for r in recs) == 10 + 4)
        await a.kill()  # A dies holding its share; B keeps its link
        sim.hold_posts.set_result(False)  # A's replies never reached Slack
        sim.hold_posts = None
        for env in held_envs:
            await sim.wait_acked(env, timeout=30)
        assert all(len(replies_to(sim, e)) == 1 for e in held), b.log_tail()
        assert len(sim.posts()) == 14
        assert len(stored(shared_url, "slack", "slack.events")) == 14
