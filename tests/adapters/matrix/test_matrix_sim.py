"""The homeserver simulator speaks the client-server API the way matrix-nio expects, and the
fixtures are events nio recognises: checked with a real nio AsyncClient, no gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nio import (
    AsyncClient,
    Event,
    JoinedRoomsResponse,
    ReactionEvent,
    RedactedEvent,
    RedactionEvent,
    RoomGetEventError,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    WhoamiError,
    WhoamiResponse,
)

from chatstate.gateway.sim.matrix import MatrixHomeserver, fixture
from matrix_helpers import ALICE, ROOM


@pytest.fixture
async def sim() -> AsyncIterator[MatrixHomeserver]:
    async with MatrixHomeserver() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
async def client(sim: MatrixHomeserver) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(sim.base_url)
    c.access_token = sim.access_token
    yield c
    await c.close()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("m.room.message", RoomMessageText), ("m.reaction", ReactionEvent), ("m.room.redaction", RedactionEvent)],
)
def test_fixtures_parse_as_the_nio_events_the_adapter_handles(name: str, kind: type) -> None:
    assert isinstance(Event.parse_event(fixture(name)), kind)


async def test_whoami_joined_rooms_and_token_check(sim: MatrixHomeserver, client: AsyncClient) -> None:
    who = await client.whoami()
    assert isinstance(who, WhoamiResponse) and (who.user_id, who.device_id) == (sim.bot_user, sim.device_id)
    rooms = await client.joined_rooms()
    assert isinstance(rooms, JoinedRoomsResponse) and rooms.rooms == [ROOM]
    client.access_token = "wrong"
    assert isinstance(await client.whoami(), WhoamiError)


async def test_sync_long_polls_until_an_event_and_resumes_from_since(sim: MatrixHomeserver, client: AsyncClient) -> None:
    await sim.send_message(ROOM, ALICE, "history")
    first = await client.sync(timeout=0, full_state=True)
    assert isinstance(first, SyncResponse)
    assert [e.body for e in first.rooms.join[ROOM].timeline.events] == ["history"]
    assert sim.bot_user in client.rooms[ROOM].users  # initial sync carries membership state

    poll = asyncio.create_task(client.sync(timeout=20_000, since=first.next_batch))
    await sim.wait_for(lambda _: any(r.payload["since"] == first.next_batch for r in sim.recorded("sync_wait")))
    reaction_id = await sim.react(ROOM, ALICE, "$prompt", "✅")
    second = await poll
    assert isinstance(second, SyncResponse)
    (event,) = second.rooms.join[ROOM].timeline.events
    assert isinstance(event, ReactionEvent) and (event.event_id, event.reacts_to, event.key) == (reaction_id, "$prompt", "✅")

    replay = await client.sync(timeout=0, since=first.next_batch)  # an old token gets it again
    assert isinstance(replay, SyncResponse) and replay.next_batch == second.next_batch


async def test_a_reaction_redacted_before_sync_arrives_redacted(sim: MatrixHomeserver, client: AsyncClient) -> None:
    start = await client.sync(timeout=0, full_state=True)
    assert isinstance(start, SyncResponse)
    reaction_id = await sim.react(ROOM, ALICE, "$prompt", "✅")
    await sim.redact(ROOM, ALICE, reaction_id)
    resp = await client.sync(timeout=0, since=start.next_batch)
    assert isinstance(resp, SyncResponse)
    reaction, redaction = resp.rooms.join[ROOM].timeline.events
    assert isinstance(reaction, RedactedEvent) and not isinstance(reaction, ReactionEvent)
    assert isinstance(redaction, RedactionEvent) and redaction.redacts == reaction_id


async def test_send_is_idempotent_per_txn_and_recorded_once(sim: MatrixHomeserver, client: AsyncClient) -> None:
    content = {"msgtype": "m.notice", "body": "hello"}
    one = await client.room_send(ROOM, "m.room.message", content, tx_id="t1")
    two = await client.room_send(ROOM, "m.room.message", content, tx_id="t1")
    three = await client.room_send(ROOM, "m.room.message", content, tx_id="t2")
    assert isinstance(one, RoomSendResponse) and isinstance(two, RoomSendResponse) and isinstance(three, RoomSendResponse)
    assert one.event_id == two.event_id != three.event_id
    assert [s["txn_id"] for s in sim.sent("m.room.message")] == ["t1", "t2"]
    assert len(sim.recorded("room_send_retry")) == 1
    assert sim.event(one.event_id)["sender"] == sim.bot_user

    fetched = await client.room_get_event(ROOM, one.event_id)
    assert fetched.event.source["content"] == content  # type: ignore[union-attr]
    assert isinstance(await client.room_get_event(ROOM, "$nope"), RoomGetEventError)
