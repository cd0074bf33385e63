"""The Matrix adapter against a real Synapse: the restart scenarios an operator runs,
and one test for each way the real server differed from our simulator.

Each test gets a fresh bot device and room on the session's Synapse (`synapse` fixture) and a
real gateway subprocess (`GatewayHarness`); what the bot did is read from the room as alice
sees it. "Nothing happened" is asserted after a barrier request, as in the simulator tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from matrix_helpers import SYNC, barrier, expired_notices, outcomes, prompts, request, rows
from synapse_driver import SynapseRoomDriver

from chatstate import state
from chatstate.gateway.sim.harness import GatewayHarness

SETTLE_DEADLINE_S = 20.0


def bodies(hs: SynapseRoomDriver) -> list[str]:
    return [o["content"]["body"] for o in outcomes(hs)]


def actions(hs: SynapseRoomDriver, room: str | None = None) -> list[str]:
    return [
        p["content"]["body"].split(": ", 1)[1].split(" (requested", 1)[0]
        for p in prompts(hs)
        if room is None or p["room_id"] == room
    ]


def harness(hs: SynapseRoomDriver, tmp_path: Path, mode: str = "store", **matrix: Any) -> GatewayHarness:
    return GatewayHarness([hs], modes=mode, state_dir=tmp_path / "state", adapters={"matrix": matrix})


async def matrix_health(gw: GatewayHarness) -> dict[str, Any]:
    return (await gw.healthz())[1]["adapters"]["matrix"]


async def until(check: Any, what: str) -> None:
    """Re-check a condition no event announces (the gateway's own bookkeeping), to a deadline."""
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


async def bot_long_polling(hs: SynapseRoomDriver, gw: GatewayHarness) -> None:
    """Wait until the bot has saved the current stream position (it then long-polls from it)."""

    async def saved_now() -> bool:
        saved = rows(gw.database_path, "matrix", SYNC).get(hs.bot_user)
        return saved is not None and saved.value["next_batch"] == await hs.stream_position()

    await until(saved_now, "the bot caught up with the stream")


async def filler(hs: SynapseRoomDriver, count: int) -> None:
    for i in range(count):
        await hs.send_message(hs.room, hs.bob, f"chatter {i}")


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_prompt_survives_restart_and_resolves_exactly_once(
    synapse: SynapseRoomDriver, tmp_path: Path, kind: Literal["term", "kill"]
) -> None:
    async with GatewayHarness([synapse], modes="store", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "deploy prod")
        assert await gw.restart(kind) == (0 if kind == "term" else -9)
        await synapse.react(synapse.room, synapse.bob, prompt["event_id"], "♾️")
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")  # after resolution
        await barrier(synapse)
        assert bodies(synapse) == [f"♾️ deploy prod: approved always by {synapse.bob}"]
        assert expired_notices(synapse) == [] and len(prompts(synapse)) == 2


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_reaction_sent_while_down_is_handled_once(
    synapse: SynapseRoomDriver, tmp_path: Path, kind: Literal["term", "kill"]
) -> None:
    async with GatewayHarness([synapse], modes="store", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "drop table")
        await (gw.stop() if kind == "term" else gw.kill())
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "❌")
        await gw.start()
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        await gw.restart(kind)
        await barrier(synapse)
        assert bodies(synapse) == [f"❌ drop table: denied by {synapse.alice}"]
        assert len(prompts(synapse)) == 2


async def test_legacy_mode_loses_the_prompt_and_the_reaction_sent_while_down(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    async with GatewayHarness([synapse], modes="legacy", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "deploy prod")
        await gw.stop()
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")
        await gw.start()
        await barrier(synapse)
        assert outcomes(synapse) == []  # the "before": the reaction sent while down is lost


# -- the homeserver's behaviours, on the real server ---------------------------------------------------------
async def test_a_reaction_followed_by_12_events_while_down_is_handled(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    async with harness(synapse, tmp_path, sync_timeline_limit=5) as gw:
        prompt = await request(synapse, "deploy prod")
        await gw.kill()
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")
        await filler(synapse, 12)
        await gw.start()
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        assert bodies(synapse) == [f"✅ deploy prod: approved once by {synapse.alice}"]
        health = await matrix_health(gw)
        assert health["backfilled_events"] >= 8 and health["backfill_truncated"] == 0


async def test_a_request_followed_by_12_messages_while_the_bot_gets_429s_is_prompted(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    async with harness(synapse, tmp_path, sync_timeline_limit=5) as gw:
        await barrier(synapse)
        # the bot may send one event, then one a second: its seeds for busy-1 get 429s
        await asyncio.to_thread(
            synapse.server.override_ratelimit, synapse.bot_user, messages_per_second=1, burst_count=1
        )
        await synapse.send_message(synapse.room, synapse.alice, "!approve busy-1")
        await synapse.wait_for(lambda _: "busy-1" in actions(synapse))
        await synapse.send_message(synapse.room, synapse.alice, "!approve busy-2")  # while it is throttled
        await filler(synapse, 12)
        assert len(synapse.sent("m.reaction")) < 3 + 3  # the barrier's seeds + busy-1's, not all sent yet
        await asyncio.to_thread(
            synapse.server.reset_ratelimit, synapse.bot_user
        )  # the rush is over: back to the default limit
        await synapse.wait_for(lambda _: actions(synapse)[-2:] == ["busy-1", "busy-2"], timeout=60)
        health = await matrix_health(gw)
        assert health["events_failed"] == 0 and health["backfilled_events"] >= 1
        throttled = [e for e in gw.logs() if "429" in str(e.get("event")) or "M_LIMIT_EXCEEDED" in str(e.get("error"))]
        assert throttled  # Synapse did answer 429 (nio waits out retry_after_ms twice, we retry after)


async def test_a_replayed_batch_on_a_new_device_acts_once(synapse: SynapseRoomDriver, tmp_path: Path) -> None:
    async with harness(synapse, tmp_path) as gw:
        await barrier(synapse)
        await bot_long_polling(synapse, gw)
        before = rows(gw.database_path, "matrix", SYNC)[synapse.bot_user].value
        prompt = await request(synapse, "deploy prod")
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "❌")
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        await gw.stop()
        with state.open_keyed_store("matrix", SYNC, max_entries=16, path=gw.database_path) as tokens:
            tokens.register(synapse.bot_user, before)  # a crash before the token save...
        await synapse.new_bot_device()  # ...and a new login: Synapse's txn dedupe is per device
        gw.write_config()
        await gw.start()
        await barrier(synapse)
        assert actions(synapse).count("deploy prod") == 1 and len(prompts(synapse)) == 3
        assert bodies(synapse) == [f"❌ deploy prod: denied by {synapse.alice}"]
        assert (await matrix_health(gw))["replays_skipped"] >= 2


async def test_a_reaction_redacted_while_down_has_no_effect(synapse: SynapseRoomDriver, tmp_path: Path) -> None:
    async with harness(synapse, tmp_path) as gw:
        prompt = await request(synapse, "deploy prod")
        await bot_long_polling(synapse, gw)
        await gw.kill()  # Synapse finishes the open long-poll when the reaction lands, and caches it
        reaction = await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")
        await synapse.redact(synapse.room, synapse.alice, reaction)
        await gw.start()
        await barrier(synapse)
        assert outcomes(synapse) == [] and expired_notices(synapse) == []
        await synapse.react(synapse.room, synapse.bob, prompt["event_id"], "✅")  # still answerable
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)


async def test_a_room_the_bot_may_not_post_in_does_not_stop_the_others(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    locked = await synapse.create_room(bot_may_post=False)
    async with harness(synapse, tmp_path) as gw:
        await barrier(synapse)
        await gw.stop()
        await synapse.send_message(locked, synapse.alice, "!approve in the locked room")
        await synapse.send_message(synapse.room, synapse.alice, "!approve in the healthy room")
        await gw.start()
        await synapse.wait_for(lambda _: "in the healthy room" in actions(synapse))

        async def given_up() -> bool:
            return (await matrix_health(gw))["events_failed"] == 1

        await until(given_up, "the locked room's request recorded as failed")
        health = await matrix_health(gw)
        assert (health["status"], health["sync_error"]) == ("ok", None)
        assert health["last_failed_event"]["room"] == locked and "M_FORBIDDEN" in health["last_failed_event"]["error"]
        await request(synapse, "still answering")


async def test_invites_from_an_approver_are_joined_and_others_ignored(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    async with harness(synapse, tmp_path) as gw:
        await barrier(synapse)
        spam = await synapse.create_room(join_bot=False, creator=synapse.mallory)
        team = await synapse.create_room(join_bot=False)
        await request(synapse, "deploy in team", room=team)  # answered: the bot joined on alice's invite
        await barrier(synapse)
        members = await synapse.call("GET", f"/rooms/{spam}/joined_members", synapse.mallory)
        assert synapse.bot_user not in members["joined"]
        health = await matrix_health(gw)
        assert (health["invites_joined"], health["invites_ignored"]) == (1, 1)
