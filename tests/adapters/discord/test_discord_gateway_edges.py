"""The Discord Gateway transport against a far end that misbehaves as Discord documents it may:
a 429 on the interaction callback, a slow REST call inside the 3 s window, frames the bot cannot
read, a link that does not come back. A real gateway subprocess against the Gateway simulator;
what the user saw is read from the simulator's records."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from chatstate.gateway.sim.discord import ALICE, DiscordEdges
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator
from chatstate.gateway.sim.harness import GatewayHarness

YOU_ALREADY_USED = "You already used this component."


def gateway_sim(*, callback_window_s: float, **kw: Any) -> DiscordGatewaySimulator:
    sim = DiscordGatewaySimulator(heartbeat_interval_ms=2_000, callback_window_s=callback_window_s, **kw)
    sim.extra_config["reidentify_delay_s"] = 0.2
    return sim


async def discord_health(gw: GatewayHarness) -> dict[str, Any]:
    _, body = await gw.healthz()
    return dict(body["adapters"]["discord"])


async def wait_for_health(gw: GatewayHarness, status: str, *, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll /healthz until the Discord adapter reports `status` (a deadline, not a sync point:
    the link's state lives in another process)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (health := await discord_health(gw))["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, f"discord never {status}: {health}"
        await asyncio.sleep(0.1)
    return health


async def test_a_429_on_the_interaction_callback_is_retried_within_the_3_s_window(tmp_path: Path) -> None:
    sim = gateway_sim(callback_window_s=3.0)  # Discord's own window
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        sim.rate_limit_callbacks = 1  # the click's answer is refused once: 429, retry_after 0.5 s
        reply = await sim.click(message, "Approve", user_id=ALICE)
        assert reply.status == 200 and reply.content.startswith("Approved by"), reply  # the user was told
        assert sim.hits["rate_limited"] == 1 and sim.hits["deadline_missed"] == 0
        [callback] = sim.callbacks(str(sim.recorded("gateway_dispatch")[-1].payload["id"]))
        assert 0.5 <= callback["age_s"] < 3.0  # retried after retry_after, inside the window
        again = await sim.click(message, "Approve", user_id=ALICE)
        assert again.content == YOU_ALREADY_USED and again.ephemeral  # one effect, and it was seen
        assert (await discord_health(gw))["transport"]["callback_failures"] == 0


async def test_slow_rest_over_the_gateway_is_deferred_and_finished_through_the_webhook(tmp_path: Path) -> None:
    sim = gateway_sim(callback_window_s=3.0, edges=DiscordEdges(slow_messages_s=3.5))
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        message = await sim.post_panel()  # posting the panel alone takes 3.5 s
        assert sim.hits["deferred"] == 1 and sim.hits["deadline_missed"] == 0
        [response] = sim.recorded("interaction_response")
        assert response.payload["body"]["type"] == 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, then...
        [edit] = sim.recorded("edit_original")  # ...the answer as an edit of the original
        assert f"message {message['id']}" in edit.payload["request"]["content"]


@pytest.mark.parametrize("kind", ["not JSON", "not an object", "a dispatch without s", "a READY without d"])
async def test_a_frame_the_bot_cannot_read_is_dropped_and_the_link_reads_on(tmp_path: Path, kind: str) -> None:
    sim = gateway_sim(callback_window_s=20.0)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        click = sim.click_payload(message, "Refresh", user_id=ALICE)
        bad = {
            "not JSON": ["{not json", '{"op": 11'],
            "not an object": ["[1, 2]", "42", "null", '"hello"'],
            "a dispatch without s": [json.dumps({"op": 0, "t": "INTERACTION_CREATE", "d": click})],
            "a READY without d": [json.dumps({"op": 0, "t": "READY", "s": 9})],
        }[kind]
        for text in bad:
            await sim.send_raw(text)
        assert "refreshed by" in (await sim.click(message, "Refresh", user_id=ALICE)).content
        health = await discord_health(gw)
        assert health["status"] == "ok" and health["transport"]["live"], health
        assert health["transport"]["bad_frames"] == len(bad)
        logged = [e for e in gw.logs() if e.get("event") == "discord_gateway_bad_frame"]
        assert len(logged) == len(bad), logged
        assert len(sim.recorded("gateway_open")) == 1  # dropped, not a reconnect
        assert len(sim.callbacks(click["id"])) == 0  # what Discord never sends is not acted on


async def test_healthz_is_degraded_while_the_link_is_down(tmp_path: Path) -> None:
    sim = gateway_sim(callback_window_s=20.0)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        assert (await discord_health(gw))["status"] == "ok"
        sim.refuse_links = True
        await sim.reconnect()  # op 7: the bot closes the link; reconnecting is refused
        health = await wait_for_health(gw, "degraded")
        assert not health["transport"]["live"] and health["transport"]["status"] == "reconnecting"
        _, body = await gw.healthz()
        assert body["status"] == "degraded"  # no dead link behind a green /healthz
        sim.refuse_links = False
        await wait_for_health(gw, "ok")
        assert "refreshed by" in (await sim.click(message, "Refresh", user_id=ALICE)).content
