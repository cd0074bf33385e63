"""End to end: a Matrix user talks to a real gateway subprocess through the homeserver simulator.

What the room sees before and after SIGTERM/SIGKILL restarts, and what is on disk. "Nothing
happened" is asserted after a barrier (a later request's complete prompt): the bot handles
events in stream order, so by then it has handled, and ignored, everything before it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Literal

import pytest
from matrix_helpers import (
    ALICE,
    BOB,
    MALLORY,
    PENDING,
    REACTIONS,
    ROOM,
    SYNC,
    barrier,
    expired_notices,
    outcomes,
    prompts,
    request,
    rows,
    seeds,
)

from chatstate.adapters.matrix import platform
from chatstate.gateway.sim.harness import GatewayHarness, GatewayStartError
from chatstate.gateway.sim.matrix import MatrixHomeserver

DEFAULT_TTL_MS = 30 * 60 * 1000
CLOCK_READ_TOLERANCE_MS = 1_000


def target_key(sim: MatrixHomeserver, prompt: dict) -> str:
    return json.dumps([sim.bot_user, ROOM, prompt["event_id"]], separators=(",", ":"))


def approval_of(prompt: dict) -> str:
    return prompt["content"][platform.APPROVAL_FIELD]["id"]


def outcome_bodies(sim: MatrixHomeserver) -> list[str]:
    return [o["content"]["body"] for o in outcomes(sim)]


async def test_prompt_target_and_approval_are_on_disk_when_the_prompt_is_complete(
    sim: MatrixHomeserver, gw: GatewayHarness
) -> None:
    prompt = await request(sim, "deploy prod")
    assert prompt["content"]["body"].startswith("Approval needed: deploy prod (requested by @alice:sim.local)")
    assert seeds(sim, prompt["event_id"]) == ["✅", "♾️", "❌"]

    targets = rows(gw.database_path, "matrix", REACTIONS)
    assert list(targets) == [target_key(sim, prompt)]
    row = targets[target_key(sim, prompt)]
    assert row.value == {
        "version": 1,
        "target": {"approval_id": approval_of(prompt), "decisions": ["allow-once", "allow-always", "deny"]},
    }
    approval = rows(gw.database_path, "core:approvals", PENDING)[approval_of(prompt)]
    assert approval.value["action"] == "deploy prod" and approval.value["requested_by"] == ALICE
    # the target lives as long as the approval (TTL = its remaining lifetime); each write stamps
    # the store's clock a moment after the adapter's, so allow that read-to-read drift only
    announced = prompt["content"][platform.APPROVAL_FIELD]["expires_at"]
    assert abs(row.expires_at - announced) < CLOCK_READ_TOLERANCE_MS
    assert abs(approval.expires_at - announced) < CLOCK_READ_TOLERANCE_MS
    # the approval lives DEFAULT_TTL_MS from the request; its row, the part still left at the write
    assert approval.value["expires_at"] - approval.value["created_at"] == DEFAULT_TTL_MS
    assert DEFAULT_TTL_MS - CLOCK_READ_TOLERANCE_MS < approval.expires_at - approval.created_at <= DEFAULT_TTL_MS
    assert set(rows(gw.database_path, "matrix", SYNC)) == {sim.bot_user}

    status, health = await gw.healthz()
    matrix = health["adapters"]["matrix"]
    assert (status, matrix["status"], matrix["mode"], matrix["user"]) == (200, "ok", "store", sim.bot_user)
    assert {s["namespace"]: s["mode"] for s in matrix["stores"]} == {
        REACTIONS: "store",
        SYNC: "store",
        PENDING: "store",
        "matrix.handled-events": "store",
        "matrix.requester-slots": "store",
    }


async def test_approve_once_offers_only_its_decisions_and_refuses_the_others(
    sim: MatrixHomeserver, gw: GatewayHarness
) -> None:
    prompt = await request(sim, "rotate keys", command="!approve-once")
    assert seeds(sim, prompt["event_id"]) == ["✅", "❌"]
    await sim.react(ROOM, ALICE, prompt["event_id"], "♾️")
    await barrier(sim)
    assert outcomes(sim) == []
    assert target_key(sim, prompt) in rows(gw.database_path, "matrix", REACTIONS)

    await sim.react(ROOM, ALICE, prompt["event_id"], "❌")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    assert outcome_bodies(sim) == ["❌ rotate keys: denied by @alice:sim.local"]


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_prompt_survives_restart_and_resolves_exactly_once(
    sim: MatrixHomeserver, gw: GatewayHarness, kind: Literal["term", "kill"]
) -> None:
    prompt = await request(sim, "deploy prod")
    assert await gw.restart(kind) == (0 if kind == "term" else -9)

    await sim.react(ROOM, BOB, prompt["event_id"], "♾️")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    await sim.react(ROOM, ALICE, prompt["event_id"], "✅")  # a second reaction after resolution
    await barrier(sim)

    assert outcome_bodies(sim) == ["♾️ deploy prod: approved always by @bob:sim.local"]
    assert expired_notices(sim) == []
    assert target_key(sim, prompt) not in rows(gw.database_path, "matrix", REACTIONS)
    assert approval_of(prompt) not in rows(gw.database_path, "core:approvals", PENDING)
    # the request before the restart was not handled again: one prompt for it, one for the barrier
    assert len(prompts(sim)) == 2


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_reaction_sent_while_down_is_handled_once_after_restart(
    sim: MatrixHomeserver, gw: GatewayHarness, kind: Literal["term", "kill"]
) -> None:
    prompt = await request(sim, "drop table")
    await (gw.stop() if kind == "term" else gw.kill())
    await sim.react(ROOM, ALICE, prompt["event_id"], "❌")
    await gw.start()

    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    await gw.restart(kind)  # the reaction is behind the saved token now: never handled again
    await barrier(sim)
    assert outcome_bodies(sim) == ["❌ drop table: denied by @alice:sim.local"]
    assert len(prompts(sim)) == 2
    if kind == "term":  # a graceful stop finishes its batch and saves the token: no replay at all
        assert sim.recorded("room_send_retry") == []


async def test_others_bot_other_emoji_and_other_events_are_ignored(sim: MatrixHomeserver, gw: GatewayHarness) -> None:
    prompt = await request(sim, "deploy prod")
    other = await request(sim, "unrelated")
    await sim.react(ROOM, MALLORY, prompt["event_id"], "✅")  # not an approver
    await sim.react(ROOM, sim.bot_user, prompt["event_id"], "✅")  # the bot's own account
    await sim.react(ROOM, ALICE, prompt["event_id"], "👍")  # not a decision
    request_event = next(e for e in sim.events if e["content"].get("body") == "!approve deploy prod")
    await sim.react(ROOM, ALICE, request_event["event_id"], "✅")  # not a prompt
    await barrier(sim)

    assert outcomes(sim) == [] and expired_notices(sim) == []
    assert {target_key(sim, prompt), target_key(sim, other)} <= set(rows(gw.database_path, "matrix", REACTIONS))

    await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    assert outcome_bodies(sim) == ["✅ deploy prod: approved once by @alice:sim.local"]


async def test_redactions_do_nothing(sim: MatrixHomeserver, gw: GatewayHarness) -> None:
    prompt = await request(sim, "deploy prod")
    await gw.stop()
    reaction = await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
    await sim.redact(ROOM, ALICE, reaction)  # withdrawn before the bot saw it
    await gw.start()
    await barrier(sim)
    assert outcomes(sim) == []
    assert target_key(sim, prompt) in rows(gw.database_path, "matrix", REACTIONS)

    reaction = await sim.react(ROOM, BOB, prompt["event_id"], "✅")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    await sim.redact(ROOM, BOB, reaction)  # withdrawn after it counted: the decision stands
    await barrier(sim)
    assert outcome_bodies(sim) == ["✅ deploy prod: approved once by @bob:sim.local"]
    assert target_key(sim, prompt) not in rows(gw.database_path, "matrix", REACTIONS)


async def test_expired_approval_says_so_across_a_restart(sim: MatrixHomeserver, tmp_path: Path) -> None:
    ttl_ms = 1500
    async with GatewayHarness(
        [sim], modes="store", state_dir=tmp_path / "state", adapters={"matrix": {"approval_ttl_ms": ttl_ms}}
    ) as gw:
        prompt = await request(sim, "deploy prod")
        expires_at = prompt["content"][platform.APPROVAL_FIELD]["expires_at"]
        await gw.restart("kill")
        # waiting for a deadline, not for an event: expiry is the passage of time itself
        await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 0.05)

        await sim.react(ROOM, MALLORY, prompt["event_id"], "✅")  # non-approvers still get nothing
        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        await sim.wait_for(lambda _: len(expired_notices(sim)) == 1)
        await barrier(sim)
        assert outcomes(sim) == [] and len(expired_notices(sim)) == 1
        assert target_key(sim, prompt) not in rows(gw.database_path, "matrix", REACTIONS)


async def test_a_request_finished_after_its_approval_expired_does_not_reopen_it(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    """SIGKILL mid-request (the prompt is sent, the event not yet marked handled); the next
    start finishes the request after the approval's announced expiry. The approval counts from
    the request, so the replay opens nothing new and a decision gets "expired", not "approved"."""
    ttl_ms = 1500
    async with GatewayHarness(
        [sim], modes="store", state_dir=tmp_path / "state", adapters={"matrix": {"approval_ttl_ms": ttl_ms}}
    ) as gw:
        sim.hold_sends = asyncio.get_running_loop().create_future()
        sim.send_arrived.clear()
        await sim.send_message(ROOM, ALICE, "!approve deploy prod")
        await asyncio.wait_for(sim.send_arrived.wait(), 15)  # the prompt is on its way
        await gw.kill()
        sim.hold_sends.set_result(None)
        sim.hold_sends = None
        await sim.wait_for(lambda _: len(prompts(sim)) == 1)
        [prompt] = prompts(sim)
        expires_at = prompt["content"][platform.APPROVAL_FIELD]["expires_at"]
        # waiting for a deadline, not for an event: expiry is the passage of time itself
        await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 0.05)
        await gw.start()  # finishes the request it was killed in

        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        await sim.wait_for(lambda _: len(expired_notices(sim)) == 1)
        await barrier(sim)
        assert outcomes(sim) == [] and len(expired_notices(sim)) == 1
        assert len(prompts(sim)) == 2  # the original and the barrier's: the replay posted no new one
        assert approval_of(prompt) not in rows(gw.database_path, "core:approvals", PENDING)


async def test_legacy_mode_forgets_prompts_and_missed_reactions_on_restart(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    async with GatewayHarness([sim], modes="legacy", state_dir=tmp_path / "state") as gw:
        first = await request(sim, "warm up")  # legacy works while it is up...
        await sim.react(ROOM, ALICE, first["event_id"], "✅")
        await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
        prompt = await request(sim, "deploy prod")
        missed = await request(sim, "restart db")
        await gw.restart("term")

        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")  # ...but forgot the prompt
        await barrier(sim)
        assert len(outcomes(sim)) == 1

        await gw.stop()
        await sim.react(ROOM, ALICE, missed["event_id"], "✅")  # and skips what it missed
        await gw.start()
        await barrier(sim)
        assert len(outcomes(sim)) == 1
        assert rows(gw.database_path, "matrix", REACTIONS) == rows(gw.database_path, "matrix", SYNC) == {}
        assert rows(gw.database_path, "core:approvals", PENDING) == {}

        fresh = await request(sim, "after restart")  # a prompt of this run still works
        await sim.react(ROOM, ALICE, fresh["event_id"], "✅")
        await sim.wait_for(lambda _: len(outcomes(sim)) == 2)


async def test_a_refused_access_token_stops_the_gateway_from_starting(sim: MatrixHomeserver, tmp_path: Path) -> None:
    with pytest.raises(GatewayStartError) as failed:
        async with GatewayHarness(
            [sim], state_dir=tmp_path / "state", adapters={"matrix": {"access_token": "syt_revoked"}}
        ):
            pass
    assert failed.value.exit_code not in (None, 0)
    assert "whoami failed" in failed.value.log_tail and "syt_revoked" not in failed.value.log_tail
