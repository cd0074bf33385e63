"""The homeserver simulator speaks the client-server API the way matrix-nio expects, and the
fixtures are events nio recognises: checked with a real nio AsyncClient, no gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from matrix_helpers import ALICE, MALLORY, ROOM
from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    InviteMemberEvent,
    JoinedRoomsResponse,
    JoinResponse,
    MessageDirection,
    ReactionEvent,
    RedactedEvent,
    RedactionEvent,
    RoomGetEventError,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendError,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
    WhoamiError,
    WhoamiResponse,
)

from chatstate.gateway.sim.matrix import SERVER_NAME, MatrixHomeserver, fixture


@pytest.fixture
async def sim() -> AsyncIterator[MatrixHomeserver]:
    async with MatrixHomeserver() as server:
        yield server


@pytest.fixture
async def client(sim: MatrixHomeserver) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(sim.base_url)
    c.restore_login(sim.bot_user, sim.device_id, sim.access_token)
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


async def test_sync_long_polls_until_an_event_and_resumes_from_since(
    sim: MatrixHomeserver, client: AsyncClient
) -> None:
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
    assert isinstance(event, ReactionEvent) and (event.event_id, event.reacts_to, event.key) == (
        reaction_id,
        "$prompt",
        "✅",
    )

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
    assert (
        isinstance(one, RoomSendResponse) and isinstance(two, RoomSendResponse) and isinstance(three, RoomSendResponse)
    )
    assert one.event_id == two.event_id != three.event_id
    assert [s["txn_id"] for s in sim.sent("m.room.message")] == ["t1", "t2"]
    assert len(sim.recorded("room_send_retry")) == 1
    assert sim.event(one.event_id)["sender"] == sim.bot_user

    fetched = await client.room_get_event(ROOM, one.event_id)
    assert fetched.event.source["content"] == content
    assert isinstance(await client.room_get_event(ROOM, "$nope"), RoomGetEventError)


# -- what a real homeserver does ----------------------------------------------------
async def test_a_limited_timeline_pages_back_with_messages_to_the_since_token(
    sim: MatrixHomeserver, client: AsyncClient
) -> None:
    start = await client.sync(timeout=0)
    assert isinstance(start, SyncResponse)
    flt = await client.upload_filter(room={"timeline": {"limit": 3}})
    again = await client.upload_filter(room={"timeline": {"limit": 3}})
    assert isinstance(flt, UploadFilterResponse) and isinstance(again, UploadFilterResponse)
    assert flt.filter_id == again.filter_id  # identical filter JSON: the same id, as in Synapse
    for i in range(8):
        await sim.send_message(ROOM, ALICE, f"m{i}")
    resp = await client.sync(timeout=0, since=start.next_batch, sync_filter=flt.filter_id)
    assert isinstance(resp, SyncResponse)
    timeline = resp.rooms.join[ROOM].timeline
    assert timeline.limited and [e.body for e in timeline.events] == ["m5", "m6", "m7"]
    page = await client.room_messages(
        ROOM, timeline.prev_batch, end=start.next_batch, direction=MessageDirection.back, limit=4
    )
    assert isinstance(page, RoomMessagesResponse) and [e.body for e in page.chunk] == ["m4", "m3", "m2", "m1"]
    rest = await client.room_messages(ROOM, page.end, end=start.next_batch, direction=MessageDirection.back, limit=4)
    assert isinstance(rest, RoomMessagesResponse) and [e.body for e in rest.chunk] == ["m0"]
    unfiltered = await client.sync(timeout=0, since=start.next_batch)
    assert isinstance(unfiltered, SyncResponse) and not unfiltered.rooms.join[ROOM].timeline.limited  # 8 <= 10


async def test_an_identical_sync_is_answered_from_the_cache_a_new_filter_is_not(
    sim: MatrixHomeserver, client: AsyncClient
) -> None:
    start = await client.sync(timeout=0)
    assert isinstance(start, SyncResponse)
    await sim.send_message(ROOM, ALICE, "before")
    first = await client.sync(timeout=0, since=start.next_batch)
    await sim.send_message(ROOM, ALICE, "after")
    cached = await client.sync(timeout=0, since=start.next_batch)
    assert isinstance(first, SyncResponse) and isinstance(cached, SyncResponse)
    assert cached.next_batch == first.next_batch and len(sim.recorded("sync_cached")) == 1  # "after" is missing
    flt = await client.upload_filter(room={"org.chatstate.start": "fresh"})
    assert isinstance(flt, UploadFilterResponse)
    fresh = await client.sync(timeout=0, since=start.next_batch, sync_filter=flt.filter_id)
    assert isinstance(fresh, SyncResponse) and [e.body for e in fresh.rooms.join[ROOM].timeline.events] == [
        "before",
        "after",
    ]


async def test_throttled_and_forbidden_sends_answer_like_synapse(sim: MatrixHomeserver) -> None:
    client = AsyncClient(sim.base_url, config=AsyncClientConfig(max_limit_exceeded=0))
    client.access_token = sim.access_token
    try:
        sim.throttle(250)
        limited = await client.room_send(ROOM, "m.room.message", {"body": "x"}, tx_id="t1")
        assert isinstance(limited, RoomSendError) and (limited.status_code, limited.retry_after_ms) == (
            "M_LIMIT_EXCEEDED",
            250,
        )
        assert isinstance(await client.room_send(ROOM, "m.room.message", {"body": "x"}, tx_id="t1"), RoomSendResponse)
        sim.forbid(ROOM)
        forbidden = await client.room_send(ROOM, "m.room.message", {"body": "x"}, tx_id="t2")
        assert isinstance(forbidden, RoomSendError) and forbidden.status_code == "M_FORBIDDEN"
    finally:
        await client.close()


async def test_an_invite_shows_once_and_join_makes_the_room_joined(sim: MatrixHomeserver, client: AsyncClient) -> None:
    start = await client.sync(timeout=0)
    assert isinstance(start, SyncResponse)
    room = f"!new:{SERVER_NAME}"
    await sim.invite(room, MALLORY)
    resp = await client.sync(timeout=0, since=start.next_batch)
    assert isinstance(resp, SyncResponse)
    (member,) = [e for e in resp.rooms.invite[room].invite_state if isinstance(e, InviteMemberEvent)]
    assert (member.sender, member.state_key, member.membership) == (MALLORY, sim.bot_user, "invite")
    assert isinstance(await client.join(room), JoinResponse) and room in sim.joined
    await sim.send_message(room, MALLORY, "hello")
    after = await client.sync(timeout=0, since=resp.next_batch)
    assert isinstance(after, SyncResponse) and room not in after.rooms.invite
    assert [e.body for e in after.rooms.join[room].timeline.events] == ["hello"]


async def test_a_new_device_has_its_own_txn_ids(sim: MatrixHomeserver, client: AsyncClient) -> None:
    one = await client.room_send(ROOM, "m.room.message", {"body": "x"}, tx_id="same")
    client.access_token = sim.new_device()
    two = await client.room_send(ROOM, "m.room.message", {"body": "x"}, tx_id="same")
    assert isinstance(one, RoomSendResponse) and isinstance(two, RoomSendResponse) and one.event_id != two.event_id
    who = await client.whoami()
    assert isinstance(who, WhoamiResponse) and who.device_id != sim.device_id
