"""Timeline events a homeserver may deliver in /sync, as the Matrix client-server spec
describes them, made unusual or malformed (nulls, omissions, wrong types, ids of no event)
and sent into a real gateway through the simulator. The sync loop keeps going, nothing is
given up as failed, /healthz stays ok, and each request after them is answered exactly once.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from json_strategies import mutated, null_out, nulled, nullings
from matrix_helpers import ALICE, BOB, MALLORY, ROOM, SYNC, barrier, outcomes, prompts, request, rows

from chatstate.adapters.matrix import platform
from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.matrix import MatrixHomeserver, fixture
from chatstate.gateway.sim.matrix_sync import sync_body

EXAMPLES = 150  # batches of events, each followed by a barrier request (one gateway for all)


@pytest.fixture
async def gw(sim: MatrixHomeserver, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """The Matrix gateway, its requester quota above the barriers' count (they stay pending)."""
    matrix = {"max_pending_per_requester": 10 * EXAMPLES}
    async with GatewayHarness([sim], modes="store", state_dir=tmp_path / "state", adapters={"matrix": matrix}) as h:
        yield h


async def matrix_health(gw: GatewayHarness) -> dict[str, Any]:
    status, body = await gw.healthz()
    assert status == 200 and body["status"] == "ok", body
    return body["adapters"]["matrix"]


def _healthy(health: dict[str, Any]) -> None:
    assert health["sync_error"] is None and health["events_failed"] == 0, health["last_failed_event"]


async def test_a_reaction_naming_no_event_is_ignored_before_any_lookup(
    sim: MatrixHomeserver, gw: GatewayHarness
) -> None:
    """Before: a decision reaction whose `m.relates_to.event_id` was "" made the bot look the
    event up, the homeserver refused the lookup, and the event was retried for ~3 s (the whole
    loop waiting) and then counted as failed."""
    prompt = await request(sim, "deploy prod")
    for bad in ("", "deploy", "$" + "a" * 300, "$with space", "$\u00e9t\u00e9"):
        await sim.react(ROOM, ALICE, bad, "✅")
    await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    await barrier(sim)
    assert [o["content"]["body"] for o in outcomes(sim)] == ["✅ deploy prod: approved once by @alice:sim.local"]
    _healthy(await matrix_health(gw))


async def test_an_overlong_action_is_refused_visibly_and_once(sim: MatrixHomeserver, gw: GatewayHarness) -> None:
    """Before: a 21,000-emoji action (64 KiB is the spec's event limit, so a homeserver sends
    it) overflowed the approval's row; each attempt failed, the requester heard nothing."""
    action = "✅" * 21_000
    request_id = await sim.send_message(ROOM, BOB, f"!approve {action}")
    await barrier(sim)
    answers = [s for s in sim.sent("m.room.message") if s["content"]["m.relates_to"]["event_id"] == request_id]
    assert [a["content"]["body"] for a in answers] == [
        f"this action is too long (21000 characters; at most {platform.MAX_ACTION_CHARS})"
    ]
    ok = "x" * platform.MAX_ACTION_CHARS
    assert (await request(sim, ok))["content"]["body"].startswith(f"Approval needed: {ok} (")
    _healthy(await matrix_health(gw))


async def test_an_edited_request_opens_no_second_approval(sim: MatrixHomeserver, gw: GatewayHarness) -> None:
    """An edit (`m.replace`, spec "Event replacements") whose fallback body is a command, with
    or without the customary "* ". Before: each opened an approval of its own."""
    prompt = await request(sim, "deploy")
    request_id = prompt["content"]["m.relates_to"]["event_id"]
    for body in ("!approve deploy now", "* !approve deploy now"):
        edit = _template("m.room.message")
        edit["content"] = {
            "msgtype": "m.text",
            "body": body,
            "m.new_content": {"msgtype": "m.text", "body": body.removeprefix("* ")},
            "m.relates_to": {"rel_type": "m.replace", "event_id": request_id},
        }
        await sim.append_raw(ROOM, ALICE, edit)
    await barrier(sim)
    bodies = [p["content"]["body"] for p in prompts(sim)]
    assert len(bodies) == 2 and not any("deploy now" in b for b in bodies), bodies  # the first and the barrier
    _healthy(await matrix_health(gw))


# -- documented shapes, made hostile --------------------------------------------------------------
def _template(name: str) -> dict[str, Any]:
    """A fixture event without the ids the simulator assigns (event_id, room_id, sender), sent now."""
    event = fixture(name)
    for key in ("event_id", "room_id", "sender", "unsigned"):
        event.pop(key, None)
    event["origin_server_ts"] = now_ms()  # a request from the fixture's 2023 would have expired
    return event


# State and other timeline events a room shows (spec "Room Events"), beside the fixtures.
OTHERS: tuple[dict[str, Any], ...] = (
    {"type": "m.room.name", "state_key": "", "content": {"name": "ops"}},
    {"type": "m.room.member", "state_key": MALLORY, "content": {"membership": "join", "displayname": "m"}},
    {"type": "m.room.power_levels", "state_key": "", "content": {"users": {ALICE: 100}}},
    {"type": "m.room.encrypted", "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}},
    {"type": "m.sticker", "content": {"body": "hi", "url": "mxc://sim.local/x", "info": {}}},
    {"type": "m.room.tombstone", "state_key": "", "content": {"replacement_room": "!new:sim.local"}},
    {"type": "org.example.custom", "content": {"x": 1}},
)
text = st.sampled_from(["", "!approve", "!approve ", "!approve-once x", "* !approve edited", "hi", "✅", "$x"])


@st.composite
def hostile_event(draw: st.DrawFn, prompt_id: str) -> dict[str, Any]:
    """A message, reaction, redaction or other room event with one to three fields null,
    omitted or of another type (a reaction's target is the live prompt half of the time)."""
    kind = draw(st.sampled_from(["m.room.message", "m.reaction", "m.room.redaction", "other"]))
    event = copy.deepcopy(draw(st.sampled_from(OTHERS))) if kind == "other" else _template(kind)
    if kind == "m.reaction" and draw(st.booleans()):
        event["content"]["m.relates_to"]["event_id"] = prompt_id
    if kind == "m.room.message":
        event["content"]["body"] = draw(text)
    return draw(st.one_of(mutated(event), nulled(event)))


async def _append(sim: MatrixHomeserver, sender: str, event: dict[str, Any]) -> None:
    event.setdefault("type", "org.example.untyped")  # the spec requires it; the simulator reads it
    if event.get("type") == "m.room.member" and not isinstance(event.get("content"), dict):
        event["content"] = {}  # the simulator reads a member event's content to find invites
    await sim.append_raw(ROOM, sender, event)


_TARGETS: dict[int, str] = {}  # the simulator's id -> the prompt the reactions aim at


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # examples share one gateway: shrinking cannot replay one alone
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_hostile_room_events_never_stop_the_loop_and_each_request_is_answered_once(
    sim: MatrixHomeserver, gw: GatewayHarness, data: st.DataObject
) -> None:
    """Before: a message without `content` (nio raises KeyError parsing it) failed every /sync
    from then on; the bot answered nothing more."""
    if id(sim) not in _TARGETS:  # one gateway and one prompt for every example
        _TARGETS[id(sim)] = (await request(sim, "the target"))["event_id"]
    events = data.draw(st.lists(hostile_event(_TARGETS[id(sim)]), min_size=1, max_size=4))
    for event in events:
        await _append(sim, data.draw(st.sampled_from([ALICE, BOB, MALLORY])), event)
    try:  # a request after the batch: answered once (the batch may hold requests of its own)
        prompt = await request(sim, f"after {len(sim.events)}")
    except TimeoutError:
        raise AssertionError(f"no answer after {events}; {await gw.healthz()}") from None
    request_id = prompt["content"]["m.relates_to"]["event_id"]
    assert [p["content"]["m.relates_to"]["event_id"] for p in prompts(sim)].count(request_id) == 1
    _healthy(await matrix_health(gw))


# -- /sync answers with optional fields null or left out -----------------------------------------
# The spec's /sync answer requires only `next_batch` (and a timeline's `events`); every other
# field may be omitted, and some servers send null for one instead. A server sends the same
# answer again to the same request, so each reshaped answer is served on every retry.
SYNC_EXAMPLES = 60  # answers reshaped, each followed by a barrier request (one gateway for all)
MALFORMED_SERVED = 3  # a malformed answer is served this often, then the server is well again


def _nulls(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with null for each optional field of its rooms and events."""
    for room in body["rooms"]["join"].values():
        room["timeline"] |= {"prev_batch": None, "limited": None}
        room |= dict.fromkeys(("state", "ephemeral", "account_data", "unread_notifications"))
        for event in room["timeline"]["events"]:
            event["unsigned"] = None
    return body | dict.fromkeys(("presence", "account_data", "to_device", "device_lists"))


async def test_a_sync_answer_with_its_optional_fields_null_is_handled(
    sim: MatrixHomeserver, gw: GatewayHarness
) -> None:
    """Before: `prev_batch: null` (or any of these) failed the whole /sync, nio's schema wanting
    a string, again on every retry: the bot answered nothing more."""

    def nulls(body: dict[str, Any]) -> dict[str, Any]:
        sim.reshape_sync = nulls  # every answer: this server always sends them
        return _nulls(body)

    sim.reshape_sync = nulls
    await request(sim, "deploy")
    await barrier(sim)
    _healthy(await matrix_health(gw))


async def test_a_sync_answer_without_next_batch_is_retried_from_the_same_token_and_counted(
    sim: MatrixHomeserver, gw: GatewayHarness
) -> None:
    """A malformed answer (no `next_batch`, the one field the spec requires) never moves the
    token: /healthz says degraded while it lasts and counts it; the batch is handled after."""

    def malformed(body: dict[str, Any]) -> dict[str, Any]:
        sim.reshape_sync = malformed  # every answer, until the test stops it
        return body | {"next_batch": None}

    sim.reshape_sync = malformed
    token = rows(gw.database_path, "matrix", SYNC)[sim.bot_user].value["next_batch"]
    request_id = await sim.send_message(ROOM, BOB, "!approve deploy")
    await sim.wait_for(lambda recs: len([r for r in recs if r.kind == "sync_cached"]) >= 2)  # retried
    status, body = await gw.healthz()
    health = body["adapters"]["matrix"]
    assert health["status"] == "degraded" and "sync" in health["sync_error"] and health["syncs_malformed"] >= 2
    assert not [p for p in prompts(sim) if p["content"]["m.relates_to"]["event_id"] == request_id]
    assert rows(gw.database_path, "matrix", SYNC)[sim.bot_user].value["next_batch"] == token
    sim.reshape_sync = None
    await barrier(sim)
    assert [p["content"]["m.relates_to"]["event_id"] for p in prompts(sim)].count(request_id) == 1
    _healthy(await matrix_health(gw))


def _sync_member(path: tuple[Any, ...]) -> bool:
    """A member of the answer's own objects, or an event's `unsigned` (events' other fields are
    the property above)."""
    items = [i for i, step in enumerate(path) if isinstance(step, int)]
    return not items or path[items[0] + 1 :] == ("unsigned",)


@settings(
    max_examples=SYNC_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_optional_sync_field_null_or_absent_loses_nothing_the_answer_carries(
    sim: MatrixHomeserver, gw: GatewayHarness, data: st.DataObject
) -> None:
    """A request's /sync answer with one to three fields null or left out: the request is
    answered once if the answer still carries it (or was malformed, and so retried), else never;
    the loop goes on (the next request is answered once) and /healthz is ok."""
    request = {**_template("m.room.message"), "content": {"msgtype": "m.text", "body": "!approve x"}, "unsigned": {}}
    shape = sync_body(  # the answer the request will come in, with a stand-in for it
        [*sim.events, {**request, "event_id": "$e", "room_id": ROOM, "sender": BOB}],
        since=len(sim.events),
        joined=sim.joined,
        bot_user=sim.bot_user,
        limit=50,
        room_state=lambda _: [],
    )
    changes = data.draw(nullings(shape, _sync_member), label="changes")
    answer: list[dict[str, Any]] = []  # as sent
    served = 0

    def reshape(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal served
        answer[:] = answer or [null_out(copy.deepcopy(body), changes)]
        malformed = not isinstance(answer[0].get("next_batch"), str)
        if body["next_batch"] != shape["next_batch"] or (malformed and served == MALFORMED_SERVED):
            return body  # a later answer, or the server is well again
        served += 1
        sim.reshape_sync = reshape
        return copy.deepcopy(answer[0])

    sim.reshape_sync = reshape
    request_id = await sim.append_raw(ROOM, BOB, request)
    # the bot has moved past the reshaped answer before the barrier's event is sent
    await sim.wait_for(
        lambda recs: any(r.kind.startswith("sync_") and r.payload["since"] == shape["next_batch"] for r in recs)
    )
    await barrier(sim)
    sim.reshape_sync = None
    malformed = not isinstance(answer[0].get("next_batch"), str)
    carried = malformed or request_id in json.dumps(answer[0])
    answered = [p["content"]["m.relates_to"]["event_id"] for p in prompts(sim)].count(request_id)
    assert answered == carried, changes
    health = await matrix_health(gw)
    _healthy(health)
    assert health["syncs_malformed"] >= malformed * MALFORMED_SERVED
