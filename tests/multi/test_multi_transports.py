"""Two gateways on one Redis over the websocket transports.

What each transport allows: Slack Socket Mode lets an app hold up to 10 connections and sends
each envelope to one of them, so both gateways take a share and the `slack.events` claim in
Redis keeps every reply single, also when one gateway dies with envelopes in hand. The Discord
Gateway runs one session per shard, so one gateway holds the shard (a lease in Redis) and the
other stands by, ready to RESUME the session the moment the lease lapses.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from multi_helpers import gateways, stored

from chatstate.gateway.sim.discord import ALICE
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack_socket import SlackSocketSimulator


def replies_to(sim: SlackSocketSimulator, event: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in sim.posts()
        if (p.get("metadata") or {}).get("event_payload", {}).get("event_id") == event["event_id"]
    ]


async def test_slack_socket_mode_spreads_envelopes_over_two_gateways_and_survives_a_kill(
    shared_url: str, tmp_path: Path
) -> None:
    sim = SlackSocketSimulator(ack_timeout_s=1.0, retry_delays_s=(0.0, 1.0, 5.0))
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


async def test_discord_gateway_one_session_per_shard_and_failover_by_resume(shared_url: str, tmp_path: Path) -> None:
    """Discord runs one session per shard: gateway A holds the shard lease and the session, B
    stands by; when A is SIGKILLed, B takes the lease once it lapses, RESUMEs A's session from
    Redis and answers what was dispatched while nobody was connected."""
    sim = DiscordGatewaySimulator(heartbeat_interval_ms=2_000, callback_window_s=20.0)
    sim.extra_config.update({"shard_lease_ms": 1_500, "reidentify_delay_s": 0.2})
    config = {"state": {"url": shared_url}}
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                GatewayHarness(
                    [sim], config=config, state_dir=tmp_path / f"gw-{name}", env={"CHATSTATE_DISCORD_GATEWAY_ID": name}
                )
            )
            for name in ("a", "b")
        ]
        _, health_b = await b.healthz()
        assert health_b["adapters"]["discord"]["transport"]["status"] == "standby"
        assert len(sim.recorded("gateway_identify")) == 1  # only A connected
        message = await sim.post_panel()
        session_id = sim.current_session().session_id

        await a.kill()
        while_down = [
            await sim.dispatch_interaction(sim.click_payload(message, label, user_id=ALICE))
            for label in ("Approve", "Refresh")
        ]
        contents = [(await asyncio.wait_for(asyncio.shield(p.answered), 30)).content for p in while_down]
        assert contents[0].startswith("Approved by") and "refreshed by" in contents[1]
        resume = sim.recorded("gateway_resume")[0].payload
        assert resume["session_id"] == session_id and resume["replayed"] >= 2
        assert len(sim.recorded("gateway_identify")) == 1  # B resumed A's session, no new one
        assert all(len(sim.callbacks(str(p.payload["id"]))) == 1 for p in while_down)
        _, health_b = await b.healthz()
        assert health_b["adapters"]["discord"]["transport"]["last_start"] == "resumed"
