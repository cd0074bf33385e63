"""The Bot Connector's and the channel's edge behaviours, one simulator switch each
(`TeamsEdges`), against a real gateway; the simulator's records are the account read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from teams_helpers import sent_rows

from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.teams import TeamsEdges, TeamsSimulator

CHANNEL = "19:general0123456789@thread.tacv2"


def harness(sim: TeamsSimulator, tmp_path: Path) -> GatewayHarness:
    return GatewayHarness([sim], state_dir=tmp_path / "state")


def thread_reply(sim: TeamsSimulator, root_id: str, **fields: Any) -> dict[str, Any]:
    return sim.activity(
        "message_reply", reply_to_id=root_id, conversation_id=f"{CHANNEL};messageid={root_id}", **fields
    )


def row_ids(gw: GatewayHarness) -> list[str]:
    return sorted(k.rsplit(":", 1)[1] for k in sent_rows(gw.database_path))


async def redelivered_while_held(sim: TeamsSimulator, activity: dict[str, Any]) -> asyncio.Task[int]:
    """Deliver `activity` with the bot's sends held until the channel's redelivered copy is on its
    way to the bot, then let the sends go; returns the first delivery, still running."""
    held: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    sim.hold_sends = held
    delivery = asyncio.create_task(sim.deliver(activity))
    await asyncio.wait_for(sim.send_arrived.wait(), 20)
    while not sim.hits["redelivered"]:
        await asyncio.sleep(0.05)  # the channel's own 0.5 s deadline, not a synchronisation
    while sim.open_deliveries < 2:  # the redelivered copy is on its way to the bot
        await asyncio.sleep(0.01)
    held.set_result(True)
    sim.hold_sends = None
    return delivery


async def test_a_429_is_retried_after_retry_after_and_the_final_id_recorded_once(tmp_path: Path) -> None:
    sim = TeamsSimulator(edges=TeamsEdges(rate_limit_every=2, retry_after_s=1))
    async with harness(sim, tmp_path) as gw:
        assert await sim.deliver(sim.activity("message_mention")) == 200
        [answer] = sim.sent()
        assert (sim.hits["rate_limited"], sim.send_calls) == (1, 2)
        assert row_ids(gw) == [answer["id"]]


async def test_502_503_504_on_send_are_retried_and_each_final_id_recorded_once(tmp_path: Path) -> None:
    sim = TeamsSimulator(edges=TeamsEdges(server_error_every=2))
    async with harness(sim, tmp_path) as gw:
        for _ in range(3):
            assert await sim.deliver(sim.activity("message_mention")) == 200
        assert sim.hits["server_error"] == 3 and sim.send_calls == 6
        assert row_ids(gw) == sorted(a["id"] for a in sim.sent()) and len(sim.sent()) == 3


async def test_send_retries_are_bounded(tmp_path: Path) -> None:
    sim = TeamsSimulator(edges=TeamsEdges(rate_limit_every=1, retry_after_s=0))
    async with harness(sim, tmp_path) as gw:
        status = await sim.deliver(sim.activity("message_mention"))
        assert status == 503 and sim.sent() == []  # released: the channel sends it again later
        assert 2 <= sim.send_calls <= 5
        assert row_ids(gw) == []


@pytest.mark.parametrize(
    ("edges", "behaviour"),
    [(TeamsEdges(duplicate_every=1), "duplicate"), (TeamsEdges(edits=True), "edit")],
    ids=["delivered twice", "edited"],
)
async def test_an_activity_delivered_twice_or_edited_gets_one_reply(
    tmp_path: Path, edges: TeamsEdges, behaviour: str
) -> None:
    sim = TeamsSimulator(edges=edges)
    async with harness(sim, tmp_path):
        assert await sim.deliver(sim.activity("message_mention")) == 200
        await sim.settle()
        assert sim.hits[behaviour] == 1
        assert len(sim.sent()) == 1


async def test_a_slow_turn_redelivered_by_the_channel_gets_one_reply(tmp_path: Path) -> None:
    sim = TeamsSimulator(edges=TeamsEdges(redeliver_after_s=0.5))
    async with harness(sim, tmp_path) as gw:
        delivery = await redelivered_while_held(sim, sim.activity("message_mention"))
        assert await delivery == 200
        await sim.settle()
        assert len(sim.sent()) == 1
        assert len(row_ids(gw)) == 1


async def test_a_deleted_bot_message_is_forgotten_and_replies_to_it_need_a_mention(tmp_path: Path) -> None:
    sim = TeamsSimulator(edges=TeamsEdges(delete_bot_messages_every=1))
    async with harness(sim, tmp_path) as gw:
        assert await sim.deliver(sim.activity("message_mention")) == 200
        await sim.settle()
        [answer] = sim.sent()
        assert sim.deleted == {answer["id"]}
        assert row_ids(gw) == []  # forgotten on messageDelete
        assert await sim.deliver(thread_reply(sim, answer["id"])) == 200
        assert len(sim.sent()) == 1  # not reply_to_bot any more, and no mention: ignored
        mention = sim.activity(
            "message_mention", reply_to_id=answer["id"], conversation_id=f"{CHANNEL};messageid={answer['id']}"
        )
        assert await sim.deliver(mention) == 200
        assert sim.sent()[-1]["text"].startswith("[mention]")


async def test_a_redelivered_copy_of_a_failed_turn_is_not_acknowledged(tmp_path: Path) -> None:
    # the first copy's turn fails (every send 429s until the retries run out) while the
    # channel's redelivered copy waits for it: that copy must not say 200 either
    sim = TeamsSimulator(edges=TeamsEdges(redeliver_after_s=0.5, rate_limit_every=1, retry_after_s=0))
    async with harness(sim, tmp_path):
        activity = sim.activity("message_mention")
        await (await redelivered_while_held(sim, activity))
        await sim.settle()
        outcomes = [r.payload["outcome"] for r in sim.recorded("delivery") if r.payload["id"] == activity["id"]]
        assert len(outcomes) == 2 and "200" not in outcomes, outcomes
        assert sim.sent() == []
