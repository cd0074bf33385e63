"""The Slack adapter over Socket Mode, in a real gateway subprocess against the
Socket Mode simulator: acks within 3 s, thread participation across restarts, un-acked
envelopes redelivered after a SIGKILL and handled once, disconnect frames without loss or repeat.

Platform timings are compressed (ack timeout, lease, ping interval); waiting for a lease or an
ack timeout to run out is the behaviour under test, everything else waits on recorded events.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import pytest
from slack_helpers import stored

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.state import EVENTS_NAMESPACE, THREADS_NAMESPACE
from chatstate.gateway.sim.harness import GatewayHarness, GatewayStartError
from chatstate.gateway.sim.slack_socket import Envelope, SlackSocketSimulator

FAST = {"socket_ping_interval_s": 0.5}  # slack-sdk's reconnect loop ticks at this interval
RETRIES = (0.0, 1.0, 5.0)  # Slack's redelivery schedule (at once, 1 min, 5 min) divided by 60


def socket_sim(**kw: Any) -> SlackSocketSimulator:
    sim = SlackSocketSimulator(**kw)
    sim.extra_config.update(FAST)
    return sim


def replies_to(sim: SlackSocketSimulator, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The bot's posts answering `event` (each reply carries the event id as metadata)."""
    return [
        p
        for p in sim.posts()
        if (p.get("metadata") or {}).get("event_payload", {}).get("event_id") == event["event_id"]
    ]


async def test_envelopes_are_acked_within_3s_and_participation_survives_restarts(tmp_path: Path) -> None:
    sim = socket_sim()
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        mention = sim.mention_event("deploy?")
        assert (await sim.deliver(mention)).status == 200
        root = mention["event"]["ts"]
        assert [p["text"] for p in sim.posts(thread_ts=root)] == ["echo: deploy?"]
        for kind in ("term", "kill"):
            await gw.restart(kind)
            await sim.wait_connected()
            follow = sim.message_event(f"after {kind}?", thread_ts=root)  # untagged
            assert (await sim.deliver(follow)).status == 200
            assert len(replies_to(sim, follow)) == 1, f"thread forgotten after SIG{kind.upper()}"
        untagged_top = sim.message_event("just chatting")
        assert (await sim.deliver(untagged_top)).status == 200 and replies_to(sim, untagged_top) == []
        for kind, payload in (
            ("slash_commands", {"command": "/deploy", "text": "now"}),
            ("interactive", {"type": "block_actions", "actions": []}),
        ):
            assert await sim.wait_acked(sim.send_envelope(payload, type=kind)) is None  # acked, no answer
        assert len(sim.posts()) == 3

        sent = {(r.payload["envelope_id"], r.payload["attempt"]): r.at for r in sim.recorded("socket_envelope")}
        acks = [r for r in sim.recorded("socket_ack")]
        assert len(acks) == len(sim.envelopes) == 6 and sim.redelivered() == []
        assert all(a.at - sent[(a.payload["envelope_id"], a.payload["attempt"])] < 3.0 for a in acks)
        assert {e.key for e in stored(gw.database_path, THREADS_NAMESPACE)} == {f"T0SIM:default:C0GENERAL:{root}"}
        _, health = await gw.healthz()
        transport = health["adapters"]["slack"]["transport"]
        assert transport["connected"] and transport["acked"] == 4  # this run saw 4 of the 6
        async with gw.http.post(f"{gw.gateway_url}/slack/events", json=mention) as resp:
            assert resp.status == 404  # the Events API route is off in Socket Mode


@pytest.mark.parametrize("posted", [True, False], ids=["dead-process-reply-reached-slack", "reply-lost"])
async def test_sigkill_with_unacked_envelopes_in_flight_each_handled_once(tmp_path: Path, posted: bool) -> None:
    sim = socket_sim(ack_timeout_s=1.0, retry_delays_s=RETRIES)
    sim.extra_config["event_lease_ms"] = 1_500
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        sim.hold_posts = asyncio.get_running_loop().create_future()
        in_flight = [sim.mention_event(f"in flight {i}") for i in range(3)]
        envelopes = [sim.send_envelope(e) for e in in_flight]
        await sim.wait_for(lambda recs: sum(r.kind == "post_arrived" for r in recs) == 3)
        await gw.kill()  # three claims held, three replies in Slack's hands, nothing acked
        assert not any(env.acked.is_set() for env in envelopes)
        sim.hold_posts.set_result(posted)
        sim.hold_posts = None
        leases = stored(gw.database_path, EVENTS_NAMESPACE)
        assert len(leases) == 3 and not any("done_at" in e.value for e in leases)

        while_down = sim.mention_event("sent while the gateway was down")
        envelopes.append(sim.send_envelope(while_down))
        await gw.start()
        for env in envelopes:
            await sim.wait_acked(env, timeout=30)

        for event in [*in_flight, while_down]:
            assert len(replies_to(sim, event)) == 1, event["event_id"]  # no loss, no repeat
        assert len(sim.posts()) == 4
        redelivered = sim.redelivered()
        assert set(redelivered) >= {env.envelope_id for env in envelopes[:3]}
        assert all(
            a["retry_attempt"] >= 1 and a["retry_reason"]
            for env in envelopes[:3]
            for a in [
                {"retry_attempt": x["attempt"], "retry_reason": x["retry_reason"]}
                for x in sim.attempts(env.envelope_id)
            ][1:]
        )
        threads = {e.key for e in stored(gw.database_path, THREADS_NAMESPACE)}
        assert threads == {f"T0SIM:default:C0GENERAL:{e['event']['ts']}" for e in [*in_flight, while_down]}
        print(
            f"\nslack sigkill posted={posted}: envelopes redelivered={len(redelivered)}, "
            f"attempts={len(sim.recorded('socket_envelope'))}, replies={len(sim.posts())} for 4 events"
        )


async def test_legacy_mode_answers_a_redelivered_envelope_twice(tmp_path: Path) -> None:
    """The "before": with the memory-only ledger a SIGKILL forgets the claim, and Slack's
    redelivery of an envelope whose reply had already gone out is answered again."""
    sim = socket_sim(ack_timeout_s=1.0, retry_delays_s=RETRIES)
    async with GatewayHarness([sim], modes="legacy", state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        sim.hold_posts = asyncio.get_running_loop().create_future()
        event = sim.mention_event("in flight")
        env = sim.send_envelope(event)
        await sim.wait_for(lambda recs: any(r.kind == "post_arrived" for r in recs))
        await gw.kill()
        sim.hold_posts.set_result(True)
        sim.hold_posts = None
        await gw.start()
        await sim.wait_acked(env, timeout=30)
        assert len(replies_to(sim, event)) == 2


@pytest.mark.parametrize("reason", ["refresh_requested", "warning", "link_disabled"])
async def test_disconnect_frames_reconnect_without_loss_or_repeat(
    tmp_path: Path, reason: Literal["refresh_requested", "warning", "link_disabled"]
) -> None:
    sim = socket_sim(ack_timeout_s=1.5, retry_delays_s=RETRIES, disconnect_grace_s=1.0)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        before = [sim.mention_event(f"before {i}") for i in range(5)]
        envs: list[Envelope] = [sim.send_envelope(e) for e in before]
        [first_link] = list(sim.connections)
        await sim.disconnect(reason)  # while those five are being handled
        after = [sim.mention_event(f"after {i}") for i in range(5)]
        envs += [sim.send_envelope(e) for e in after]
        if reason == "link_disabled":
            await sim.wait_for(lambda _r: not sim.connections)
            assert not any(env.acked.is_set() for env in envs[5:])  # nowhere to go yet
            sim.enable_link()
        for env in envs:
            await sim.wait_acked(env, timeout=30)
        await sim.wait_connected()
        assert first_link not in sim.connections  # a new link replaced the old one

        assert all(len(replies_to(sim, e)) == 1 for e in [*before, *after])
        assert len(sim.posts()) == 10
        _, health = await gw.healthz()
        assert health["adapters"]["slack"]["transport"]["disconnects"] >= 1


async def test_sigterm_acks_the_envelopes_in_hand_before_it_exits(tmp_path: Path) -> None:
    sim = socket_sim(ack_timeout_s=3.0, retry_delays_s=RETRIES)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        sim.hold_posts = asyncio.get_running_loop().create_future()
        events = [sim.mention_event(f"in hand {i}") for i in range(2)]
        envs = [sim.send_envelope(e) for e in events]
        await sim.wait_for(lambda recs: sum(r.kind == "post_arrived" for r in recs) == 2)
        stopping = asyncio.create_task(gw.stop())
        await sim.wait_for(lambda recs: sum(r.kind == "socket_ack" for r in recs) == 2)  # acked at the budget
        sim.hold_posts.set_result(True)
        sim.hold_posts = None
        assert await stopping == 0
        assert all(env.acked.is_set() for env in envs) and sim.redelivered() == []
        assert all(len(replies_to(sim, e)) == 1 for e in events)  # the replies finished before exit
        assert all("done_at" in e.value for e in stored(gw.database_path, EVENTS_NAMESPACE))


async def test_simulator_allows_ten_connections_per_app() -> None:
    """Slack's limit, as the simulator plays it: the eleventh link is told `too_many_websockets`."""
    import aiohttp

    async with SlackSocketSimulator() as sim:
        async with aiohttp.ClientSession() as http:
            links = [await http.ws_connect(f"ws://{sim.host}:{sim.port}/socket-mode/link") for _ in range(11)]
            hellos = [await ws.receive_json() for ws in links]
            assert [h["type"] for h in hellos] == ["hello"] * 10 + ["disconnect"]
            assert hellos[-1]["reason"] == "too_many_websockets" and hellos[9]["num_connections"] == 10
            envs = [sim.send_envelope(sim.mention_event(f"spread {i}")) for i in range(20)]
            got: list[list[Any]] = [[] for _ in links[:10]]
            for i, ws in enumerate(links[:10]):
                for _ in range(2):
                    got[i].append((await ws.receive_json())["envelope_id"])
            assert sorted(e for g in got for e in g) == sorted(env.envelope_id for env in envs)  # each to one link
            for ws in links:
                await ws.close()


def test_transport_keys_are_checked() -> None:
    from chatstate.gateway.exits import ConfigError

    base = {"bot_token": "xoxb-1"}
    assert SlackSettings.from_table({**base, "signing_secret": "s"}).transport == "http"  # default unchanged
    socket = SlackSettings.from_table({**base, "transport": "socket", "app_token": "xapp-1"})
    assert (socket.transport, socket.app_token) == ("socket", "xapp-1")  # no signing secret needed
    with pytest.raises(ConfigError, match="adapters.slack.app_token"):
        SlackSettings.from_table({**base, "transport": "socket"})
    with pytest.raises(ConfigError, match="adapters.slack.transport"):
        SlackSettings.from_table({**base, "signing_secret": "s", "transport": "rtm"})
    with pytest.raises(ConfigError, match="adapters.slack.signing_secret"):
        SlackSettings.from_table(base)  # the Events API needs it


async def test_a_refused_app_token_fails_the_start_with_its_name(tmp_path: Path) -> None:
    sim = socket_sim()
    sim.extra_config["app_token"] = "xapp-wrong"
    with pytest.raises(GatewayStartError) as failed:
        async with GatewayHarness([sim], state_dir=tmp_path / "state"):
            pass
    assert "invalid_auth" in failed.value.log_tail and failed.value.exit_code != 0


async def test_a_redelivery_as_first_attempt_after_a_sigkill_is_not_answered_twice(tmp_path: Path) -> None:
    """Socket Mode re-sends an unacknowledged envelope after a reconnect with `retry_attempt: 0`.
    The gateway died after its reply reached Slack and before the event was marked done: the
    claim that takes over the expired lease must look for that reply whatever the attempt
    number says, answer nothing more, and keep the thread it replied in."""
    sim = socket_sim(ack_timeout_s=1.0, retry_delays_s=())  # never retried: the next copy is a first attempt
    sim.extra_config["event_lease_ms"] = 1_000
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.wait_connected()
        sim.hold_posts = asyncio.get_running_loop().create_future()
        event = sim.mention_event("once only")
        sim.send_envelope(event)
        await sim.wait_for(lambda recs: any(r.kind == "post_arrived" for r in recs))
        await gw.kill()  # the reply is in Slack's hands; the event is claimed, not done
        sim.hold_posts.set_result(True)
        sim.hold_posts = None
        await sim.wait_for(lambda _r: len(replies_to(sim, event)) == 1)
        await asyncio.sleep(1.0)  # the dead process's lease (taken before the post) runs out

        await gw.start()
        await sim.wait_connected()
        again = sim.send_envelope(event)  # same event_id, new envelope, retry_attempt 0
        assert again.attempt == 0
        await sim.wait_acked(again, timeout=30)
        assert len(replies_to(sim, event)) == 1
        assert [e.value.get("done_at") is not None for e in stored(gw.database_path, EVENTS_NAMESPACE)] == [True]
        threads = {e.key for e in stored(gw.database_path, THREADS_NAMESPACE)}
        assert threads == {f"T0SIM:default:C0GENERAL:{event['event']['ts']}"}  # the thread is still followed
