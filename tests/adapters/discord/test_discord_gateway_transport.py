"""The Discord adapter over the Discord Gateway, in a real gateway subprocess against
the Gateway simulator: RESUME after SIGTERM and SIGKILL receives what was dispatched while the
gateway was down; a refused RESUME, INVALID_SESSION and RECONNECT; a missing HEARTBEAT_ACK.

Timings are compressed (heartbeat interval, resume window, re-IDENTIFY delay). The interaction
callback window is widened from Discord's 3 s to 20 s: a cold gateway start on the shared CI
cores takes 1-4 s, and what is under test here is that the dispatches arrive and are answered
once, not how fast the harness restarts (docs/migrations/discord.md says what 3 s means for a
real restart).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, Literal

import pytest
from discord_helpers import kill_at_callback

from chatstate.gateway.sim.discord import ALICE, BOB
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator, Pending
from chatstate.gateway.sim.harness import GatewayHarness

ALREADY_USED = "This component was already used."
EXPIRED = "This component has expired."


def gateway_sim(**kw: Any) -> DiscordGatewaySimulator:
    kw.setdefault("heartbeat_interval_ms", 2_000)  # a 3 s stall before the simulator drops a link
    sim = DiscordGatewaySimulator(callback_window_s=20.0, **kw)
    sim.extra_config["reidentify_delay_s"] = 0.2
    return sim


async def transport(gw: GatewayHarness) -> dict[str, Any]:
    _, body = await gw.healthz()
    return dict(body["adapters"]["discord"]["transport"])


async def answered(pending: Pending) -> str:
    reply = await asyncio.wait_for(asyncio.shield(pending.answered), 30)
    assert reply.status == 200, reply
    return reply.content


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_resume_after_restart_receives_what_was_dispatched_while_down(
    tmp_path: Path, kind: Literal["term", "kill"]
) -> None:
    sim = gateway_sim()
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        opened = await sim.click(message, "Feedback")
        assert opened.data.get("custom_id"), opened
        session_id = sim.current_session().session_id
        await (gw.stop() if kind == "term" else gw.kill())

        while_down = [
            await sim.dispatch_interaction(sim.click_payload(message, "Approve", user_id=ALICE)),
            await sim.dispatch_interaction(sim.click_payload(message, "Refresh", user_id=BOB)),
        ]
        submit = sim.interaction(
            "modal_submit",
            user_id=ALICE,
            data={
                "custom_id": opened.data["custom_id"],
                "components": [{"type": 1, "components": [{"type": 4, "custom_id": "comment", "value": "ship it"}]}],
            },
        )
        submit["channel_id"] = message["channel_id"]
        while_down.append(await sim.dispatch_interaction(submit))
        await gw.start()

        contents = [await answered(p) for p in while_down]
        assert contents[0].startswith("Approved by") and "refreshed by" in contents[1]
        assert "feedback received: ship it" in contents[2]
        resume = sim.recorded("gateway_resume")[0].payload  # the restart's (a stalled CI loop may add more)
        assert resume["session_id"] == session_id and resume["replayed"] >= 3
        assert not sim.recorded("gateway_identify")[1:]  # one IDENTIFY in total: the first start
        for p in while_down:
            assert len(sim.callbacks(str(p.payload["id"]))) == 1  # answered once
        health = await transport(gw)
        assert health["last_start"] == "resumed" and health["received_after_resume"] >= 3

        # single-use entries were consumed by the replayed interactions, exactly as over HTTP
        again = await sim.click(message, "Approve", user_id=BOB)
        assert again.content in (ALREADY_USED, EXPIRED) and again.ephemeral
        print(
            f"\ndiscord RESUME after SIG{kind.upper()}: replayed={resume['replayed']}, "
            f"received_after_resume={health['received_after_resume']}, answered={len(while_down)}"
        )


async def test_kill_with_an_answer_in_flight_is_not_answered_twice_after_resume(tmp_path: Path) -> None:
    """SIGKILL after the callback left but before the sequence number was saved: the RESUME
    replays that dispatch, and the interaction claim (not Discord's 40060) drops it."""
    sim = gateway_sim()
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        # the answer is in Discord's hands; `seq` still points before the click
        click = await kill_at_callback(sim, gw, sim.click_payload(message, "Refresh", user_id=ALICE), delivered=True)
        assert "refreshed by" in await answered(click)
        await gw.start()
        resume = sim.recorded("gateway_resume")[0].payload
        assert resume["replayed"] >= 1  # the click came again...
        assert "refreshed by" in (await sim.click(message, "Refresh", user_id=BOB)).content
        assert len(sim.callbacks(str(click.payload["id"]))) == 1  # ...and was not answered again
        assert (await transport(gw))["duplicates"] >= 1


async def test_resume_refused_outside_the_window_identifies_afresh(tmp_path: Path) -> None:
    sim = gateway_sim(resume_window_s=0.5)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        await gw.stop()
        lost = await sim.dispatch_interaction(sim.click_payload(message, "Refresh", user_id=ALICE))
        await asyncio.sleep(0.6)  # let the resume window lapse: the behaviour under test
        await gw.start()

        assert [r.kind for r in sim.records if r.kind in ("gateway_resume_refused", "gateway_identify")] == [
            "gateway_identify",
            "gateway_resume_refused",
            "gateway_identify",
        ]
        health = await transport(gw)
        assert health["last_start"] == "identified"
        assert health["identify_reason"] == "resume refused (INVALID_SESSION)"
        assert any(
            e.get("event") == "discord_gateway_session_lost" and e.get("reason") == health["identify_reason"]
            for e in gw.logs()
        )
        assert not lost.answered.done()  # Discord dropped it with the session; nothing to replay
        # the registries are in the store, not the session: the panel still works
        refreshed = await sim.click(message, "Refresh", user_id=BOB)
        assert "refreshed by" in refreshed.content


async def test_reconnect_and_invalid_session_ops(tmp_path: Path) -> None:
    sim = gateway_sim()
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        first = sim.current_session().session_id

        await sim.reconnect()  # op 7: reconnect and RESUME the same session
        await sim.wait_for(lambda recs: any(r.kind == "gateway_resume" for r in recs))
        assert "refreshed by" in (await sim.click(message, "Refresh")).content
        assert (await transport(gw))["last_start"] == "resumed"

        await sim.invalidate(resumable=False)  # op 9, d=false: IDENTIFY afresh
        await sim.wait_for(lambda recs: sum(r.kind == "gateway_identify" for r in recs) == 2)
        assert "refreshed by" in (await sim.click(message, "Refresh")).content
        health = await transport(gw)
        assert (health["last_start"], health["identify_reason"]) == ("identified", "INVALID_SESSION")
        assert sim.current_session().session_id != first


async def test_an_unreachable_resume_url_is_given_up_for_the_main_one(tmp_path: Path) -> None:
    """READY's resume_gateway_url may be down for good: after a few refused connects the RESUME
    goes to the main gateway URL, which takes it, and the link serves again (it never did)."""
    sim = gateway_sim()
    with socket.socket() as closed:  # a port nobody listens on: every connect is refused
        closed.bind(("127.0.0.1", 0))
        sim.resume_gateway_url = f"ws://127.0.0.1:{closed.getsockname()[1]}/gateway-resume"
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        await sim.reconnect()  # op 7: RESUME at the resume URL, which refuses
        await sim.wait_for(lambda recs: any(r.kind == "gateway_resume" for r in recs), timeout=30)
        async with asyncio.timeout(10):
            while (await transport(gw))["status"] != "ready":
                await asyncio.sleep(0.05)
        health = await transport(gw)
        assert (health["last_start"], health["reconnects"] >= 3) == ("resumed", True)
        assert "refreshed by" in (await sim.click(message, "Refresh")).content


async def test_healthz_is_degraded_from_invalid_session_until_the_new_ready(tmp_path: Path) -> None:
    """INVALID_SESSION d=false ends the session; the bot waits 1-5 s before IDENTIFY, as Discord
    asks. Nothing can arrive meanwhile, so /healthz must not say the link serves."""
    sim = gateway_sim()
    sim.extra_config["reidentify_delay_s"] = 5.0  # the wait before IDENTIFY is at least 1 s
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.invalidate(resumable=False)
        async with asyncio.timeout(10):
            while not any(e.get("event") == "discord_gateway_session_lost" for e in gw.logs()):
                await asyncio.sleep(0.05)
        _, body = await gw.healthz()
        assert body["adapters"]["discord"]["status"] == "degraded", body["adapters"]["discord"]
        await sim.wait_for(lambda recs: sum(r.kind == "gateway_identify" for r in recs) == 2)
        async with asyncio.timeout(10):
            while (await transport(gw))["status"] != "ready":
                await asyncio.sleep(0.05)
        _, body = await gw.healthz()
        assert body["adapters"]["discord"].get("status", "ok") != "degraded"


async def test_missing_heartbeat_ack_reconnects_and_resumes(tmp_path: Path) -> None:
    sim = gateway_sim(heartbeat_interval_ms=1_000)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        sim.ack_heartbeats = False  # the link looks alive but Discord stopped answering
        await sim.wait_for(lambda recs: any(r.kind == "gateway_resume" for r in recs))
        sim.ack_heartbeats = True
        assert "refreshed by" in (await sim.click(message, "Refresh")).content
        health = await transport(gw)
        assert health["missed_acks"] >= 1 and health["last_start"] == "resumed"
        assert any(e.get("event") == "discord_heartbeat_ack_missing" for e in gw.logs())


def test_transport_keys_are_checked() -> None:
    from chatstate.adapters.discord.config import DiscordSettings
    from chatstate.gateway.exits import ConfigError

    gateway = DiscordSettings.from_table({"bot_token": "t", "transport": "gateway", "gateway_id": "gw-a"})
    assert (gateway.transport, gateway.verify_key(), gateway.gateway_id) == ("gateway", None, "gw-a")
    assert DiscordSettings.from_table({"bot_token": "t", "public_key": "00" * 32}).transport == "http"
    with pytest.raises(ValueError, match="adapters.discord.public_key"):
        DiscordSettings.from_table({"bot_token": "t"}).verify_key()  # HTTP interactions must be verified
    with pytest.raises(ConfigError, match="adapters.discord.transport"):
        DiscordSettings.from_table({"bot_token": "t", "transport": "websocket"})
    with pytest.raises(ConfigError, match="adapters.discord.intents"):
        DiscordSettings.from_table({"bot_token": "t", "transport": "gateway", "intents": -1})


async def test_a_refused_token_fails_the_start(tmp_path: Path) -> None:
    from chatstate.gateway.sim.harness import GatewayStartError

    sim = gateway_sim()
    sim.extra_config["bot_token"] = "not-the-token"
    with pytest.raises(GatewayStartError) as failed:
        async with GatewayHarness([sim], state_dir=tmp_path / "state"):
            pass
    # refused at the token check both transports make at start (GET /users/@me), before GET /gateway/bot
    assert (
        "the platform refused bot_token (GET users: HTTP 401): fix [adapters.discord] bot_token"
        in failed.value.log_tail
    )
