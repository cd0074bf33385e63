"""Against the simulator: what a real homeserver does (limited timelines, a response
cache, redactions, 429s, 403s, invites, new devices) and the adapter's answer to each. The same
scenarios run against a real Synapse in test_matrix_synapse.py; these are the fast guards.

Each test here failed on the adapter before it handled these cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matrix_helpers import (
    ALICE,
    BOB,
    MALLORY,
    ROOM,
    SYNC,
    barrier,
    expired_notices,
    outcomes,
    prompts,
    request,
    rows,
    settled,
)

from chatstate import state
from chatstate.adapters.matrix import platform
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.matrix import SERVER_NAME, MatrixHomeserver

LOCKED = f"!locked:{SERVER_NAME}"  # a room the bot has joined but may not post in


def bodies(sim: MatrixHomeserver) -> list[str]:
    return [o["content"]["body"] for o in outcomes(sim)]


def actions(sim: MatrixHomeserver) -> list[str]:
    return [p["content"]["body"].split(": ", 1)[1].split(" (requested", 1)[0] for p in prompts(sim)]


async def matrix_health(gw: GatewayHarness) -> dict[str, Any]:
    status, body = await gw.healthz()
    assert status == 200
    return body["adapters"]["matrix"]


def harness(sim: MatrixHomeserver, tmp_path: Path, mode: str = "store", **matrix: Any) -> GatewayHarness:
    return GatewayHarness([sim], modes=mode, state_dir=tmp_path / "state", adapters={"matrix": matrix})


async def filler(sim: MatrixHomeserver, count: int, room: str = ROOM) -> None:
    for i in range(count):
        await sim.send_message(room, BOB, f"chatter {i}")


# -- 1/2: limited timelines are back-filled ----------------------------------------------------
async def test_a_reaction_followed_by_12_events_while_down_is_handled_in_order(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    async with harness(sim, tmp_path, sync_timeline_limit=5) as gw:
        prompt = await request(sim, "deploy prod")
        await gw.kill()
        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        await sim.send_message(ROOM, ALICE, "!approve first")
        await filler(sim, 12)
        await sim.send_message(ROOM, ALICE, "!approve last")
        await gw.start()
        await sim.wait_for(lambda _: len(outcomes(sim)) == 1 and len(prompts(sim)) == 3)
        assert bodies(sim) == [f"✅ deploy prod: approved once by {ALICE}"]
        assert actions(sim) == ["deploy prod", "first", "last"]  # back-filled events first, in order
        health = await matrix_health(gw)
        assert health["backfilled_events"] >= 10 and health["backfill_truncated"] == 0
        assert sim.recorded("messages")  # it paged /messages backwards
        assert all(r.payload["to"] is not None for r in sim.recorded("messages"))  # ...only to its own token


async def test_a_request_followed_by_12_messages_while_the_bot_is_throttled_is_prompted(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    async with harness(sim, tmp_path, sync_timeline_limit=5) as gw:
        await barrier(sim)
        sim.throttle(400, 400, 400)  # the next three sends get 429 M_LIMIT_EXCEEDED
        await sim.send_message(ROOM, ALICE, "!approve busy-1")
        await sim.wait_for(lambda recs: any(r.kind == "room_send_throttled" for r in recs))
        await sim.send_message(ROOM, ALICE, "!approve busy-2")  # arrives while the bot is busy
        await filler(sim, 12)
        await sim.wait_for(lambda _: actions(sim)[-2:] == ["busy-1", "busy-2"])
        health = await matrix_health(gw)
        assert health["events_failed"] == 0 and health["backfilled_events"] >= 1
        assert len(sim.recorded("room_send_throttled")) == 3


async def test_the_backfill_bound_cuts_short_and_says_so(sim: MatrixHomeserver, tmp_path: Path) -> None:
    async with harness(sim, tmp_path, sync_timeline_limit=2, backfill_max_events=3) as gw:
        await barrier(sim)
        await gw.stop()
        await sim.send_message(ROOM, ALICE, "!approve beyond the bound")
        await filler(sim, 10)
        await gw.start()
        await barrier(sim)
        assert "beyond the bound" not in actions(sim)
        health = await matrix_health(gw)
        assert health["backfill_truncated"] == 1
        assert health["last_backfill_truncated"] == {"room": ROOM, "backfilled": 3, "bound": 3}
        assert any(e.get("event") == "matrix_backfill_truncated" for e in gw.logs())


# -- 2/3: no replays, with or without the homeserver's help ------------------------------------
async def test_restarts_within_the_cache_window_replay_nothing_legacy_then_store(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    async with harness(sim, tmp_path, mode="legacy") as gw:
        prompt = await request(sim, "deploy prod")
        await request(sim, "restart db")
        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
        await gw.restart("term")  # legacy: a baseline sync whose answer must not be the cached one
        await barrier(sim)
        gw.modes = "store"  # the operator switches to store within the same two minutes
        gw.write_config()
        await gw.restart("term")
        await barrier(sim)
        assert actions(sim)[:2] == ["deploy prod", "restart db"] and len(prompts(sim)) == 4  # + 2 barriers
        assert len(outcomes(sim)) == 1
        assert sim.recorded("room_send_retry") == [] and sim.recorded("sync_cached") == []
        assert len({r.payload["filter_id"] for r in sim.recorded("filter_upload")}) == 3  # one per start


async def test_a_replayed_batch_on_a_new_device_acts_once(sim: MatrixHomeserver, tmp_path: Path) -> None:
    async with harness(sim, tmp_path) as gw:
        await barrier(sim)
        before = rows(gw.database_path, "matrix", SYNC)[sim.bot_user].value
        prompt = await request(sim, "deploy prod")
        await sim.react(ROOM, ALICE, prompt["event_id"], "❌")
        await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
        await gw.stop()
        # a crash after handling, before the token save: the token on disk is the older one...
        with state.open_keyed_store("matrix", SYNC, max_entries=16, path=gw.database_path) as tokens:
            tokens.register(sim.bot_user, before)
        sim.new_device()  # ...and the bot logs in anew: the homeserver's txn dedupe cannot help
        gw.write_config()
        await gw.start()
        await barrier(sim)
        assert actions(sim).count("deploy prod") == 1 and len(prompts(sim)) == 3  # + 2 barriers
        assert bodies(sim) == [f"❌ deploy prod: denied by {ALICE}"]
        assert (await matrix_health(gw))["replays_skipped"] >= 2  # the request and the reaction


async def test_two_gateways_on_one_redis_act_once(sim: MatrixHomeserver, tmp_path: Path, redis_url: str) -> None:
    from redis_support import with_prefix

    url = with_prefix(redis_url, f"matrix{tmp_path.name[-10:]}")
    config = {"state": {"url": url}}
    one = GatewayHarness([sim], config=config, state_dir=tmp_path / "a")
    async with one:
        sim.new_device()  # the second gateway is another device of the same bot account
        async with GatewayHarness([sim], config=config, state_dir=tmp_path / "b"):
            for i in range(5):
                await request(sim, f"job {i}")
            prompt = prompts(sim)[0]
            await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
            await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
            # the barrier comes from Bob: Alice's 5 requests fill her 5 slots, and the other
            # gateway may see the barrier before this one frees the resolved approval's slot
            await request(sim, f"barrier {len(sim.events)}", sender=BOB)
            assert actions(sim)[:5] == [f"job {i}" for i in range(5)] and len(prompts(sim)) == 6
            assert len(outcomes(sim)) == 1


async def test_a_sigkill_while_waiting_out_a_429_loses_nothing(sim: MatrixHomeserver, tmp_path: Path) -> None:
    async with harness(sim, tmp_path) as gw:
        await barrier(sim)
        sim.throttle(10_000)  # the prompt's send: nio sleeps 10 s, with the request claimed
        request_id = await sim.send_message(ROOM, ALICE, "!approve deploy prod")
        await sim.wait_for(lambda recs: any(r.kind == "room_send_throttled" for r in recs))
        await gw.kill()
        await gw.start()  # same device: takes over its dead run's lease, finds no prompt, posts it
        await sim.wait_for(lambda _: "deploy prod" in actions(sim))
        await barrier(sim)
        assert actions(sim).count("deploy prod") == 1
        await settled(gw.database_path)
        ledger = rows(gw.database_path, "matrix", "matrix.handled-events")
        assert "done_at" in ledger[json.dumps([sim.bot_user, request_id], separators=(",", ":"))].value


# -- 4: redactions -----------------------------------------------------------------------------
async def test_a_reaction_redacted_while_down_has_no_effect_even_from_a_cached_batch(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    sim.cache_ignores_filter = True  # defeat the fresh-filter defence: the re-fetch must hold
    async with harness(sim, tmp_path) as gw:
        prompt = await request(sim, "deploy prod")
        token = f"s{len(sim.events)}"
        await sim.wait_for(lambda recs: any(r.kind == "sync_wait" and r.payload["since"] == token for r in recs))
        await gw.kill()  # the long-poll stays open on the server...
        reaction = await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        # ...which answers it with the reaction and caches that answer
        await sim.wait_for(lambda recs: any(r.kind == "sync_answer" and r.payload["since"] == token for r in recs))
        await sim.redact(ROOM, ALICE, reaction)
        await gw.start()
        await barrier(sim)
        assert sim.recorded("sync_cached")  # the stale batch was served
        assert outcomes(sim) == [] and expired_notices(sim) == []
        assert any(e.get("event") == "matrix_reaction_withdrawn" for e in gw.logs())


# -- 5: one bad event never stops the bot ------------------------------------------------------
async def test_a_room_the_bot_may_not_post_in_does_not_stop_the_others(tmp_path: Path) -> None:
    sim = MatrixHomeserver(rooms=(ROOM, LOCKED))
    sim.forbid(LOCKED)
    async with harness(sim, tmp_path, event_max_attempts=3) as gw:
        await barrier(sim)
        await gw.stop()
        locked_request = await sim.send_message(LOCKED, ALICE, "!approve in the locked room")
        await sim.send_message(ROOM, ALICE, "!approve in the healthy room")
        await gw.start()
        await sim.wait_for(lambda _: "in the healthy room" in actions(sim))
        again = await sim.send_message(LOCKED, MALLORY, "!approve again")
        again_txn = platform.txn_id("prompt", again)
        await sim.wait_for(lambda recs: sum(r.payload.get("txn_id") == again_txn for r in recs) == 3)
        await barrier(sim)  # handled after that batch gave up: events in a batch go in order
        health = await matrix_health(gw)
        assert (health["status"], health["sync_error"], health["events_failed"]) == ("ok", None, 2)
        assert health["last_failed_event"]["room"] == LOCKED and "M_FORBIDDEN" in health["last_failed_event"]["error"]
        tries = [
            r
            for r in sim.recorded("room_send_forbidden")
            if r.payload["txn_id"] == platform.txn_id("prompt", locked_request)
        ]
        assert len(tries) == 3  # bounded retries, then given up
        await settled(gw.database_path)
        ledger = rows(gw.database_path, "matrix", "matrix.handled-events")
        assert (
            "done_at" in ledger[json.dumps([sim.bot_user, locked_request], separators=(",", ":"))].value
        )  # not retried
        assert sum(e.get("event") == "matrix_event_failed" for e in gw.logs()) == 2


async def test_a_throttled_send_waits_retry_after_ms_and_then_succeeds(sim: MatrixHomeserver, tmp_path: Path) -> None:
    async with harness(sim, tmp_path) as gw:
        await barrier(sim)
        sim.throttle(600, 600, 600)  # nio waits out two itself; the third reaches our retry
        await request(sim, "deploy prod")
        throttled = sim.recorded("room_send_throttled")
        first_prompt = next(
            r for r in sim.recorded("room_send") if r.payload["txn_id"] == throttled[0].payload["txn_id"]
        )
        assert len(throttled) == 3 and first_prompt.at - throttled[-1].at >= 0.6
        assert (await matrix_health(gw))["events_failed"] == 0


# -- 6: invites --------------------------------------------------------------------------------
@pytest.mark.parametrize("auto_join", [True, False])
async def test_invites_from_allowed_inviters_are_joined_and_others_ignored(
    sim: MatrixHomeserver, tmp_path: Path, auto_join: bool
) -> None:
    spam, team = f"!spam:{SERVER_NAME}", f"!team:{SERVER_NAME}"
    async with harness(sim, tmp_path, auto_join=auto_join) as gw:
        await sim.invite(spam, MALLORY)  # not an approver: never joined
        await sim.invite(team, BOB)
        await barrier(sim)
        joined = [r.payload["room_id"] for r in sim.recorded("join")]
        assert joined == ([team] if auto_join else [])
        health = await matrix_health(gw)
        assert (health["invites_joined"], health["invites_ignored"]) == ((1, 1) if auto_join else (0, 2))
        if auto_join:
            await request(sim, "deploy in team", room=team)


async def test_an_invite_sent_before_the_first_start_is_joined(sim: MatrixHomeserver, tmp_path: Path) -> None:
    team = f"!team:{SERVER_NAME}"
    await sim.start()  # the harness stops it
    await sim.invite(team, ALICE)  # before the gateway ever synced: in its baseline sync
    async with harness(sim, tmp_path):
        await request(sim, "deploy in team", room=team)


# -- the Matrix fairness quota ----------------------------------------------------------
def refusals(sim: MatrixHomeserver) -> list[dict[str, Any]]:
    return [s for s in sim.sent("m.room.message") if s["content"]["body"].startswith(platform.REFUSED_TEXT)]


async def test_one_requesters_flood_never_evicts_another_prompt_and_is_answered(
    sim: MatrixHomeserver, tmp_path: Path
) -> None:
    flood = 1_000
    async with harness(sim, tmp_path) as gw:
        prompt = await request(sim, "deploy prod")  # alice's prompt, posted before the flood
        for i in range(flood):
            await sim.send_message(ROOM, MALLORY, f"!approve spam {i}")
        await sim.wait_for(lambda _: len(refusals(sim)) == flood - 5, timeout=120)
        await barrier(sim)
        assert actions(sim).count("deploy prod") == 1
        assert [a for a in actions(sim) if a.startswith("spam")] == [f"spam {i}" for i in range(5)]  # the cap
        assert refusals(sim)[0]["content"]["body"].startswith(f"{platform.REFUSED_TEXT} for {MALLORY} (5 open)")
        await settled(gw.database_path)
        targets = rows(gw.database_path, "matrix", "matrix.approval-reactions")
        assert json.dumps([sim.bot_user, ROOM, prompt["event_id"]], separators=(",", ":")) in targets
        assert len(targets) == 1 + 5 + 1  # alice's, mallory's five, the barrier's

        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")  # still answerable after the flood
        await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
        spam_prompt = next(p for p in prompts(sim) if "spam 0" in p["content"]["body"])
        await sim.react(ROOM, BOB, spam_prompt["event_id"], "❌")  # resolving one frees her slot
        await sim.wait_for(lambda _: len(outcomes(sim)) == 2)
        await request(sim, "one more", sender=MALLORY)


async def test_a_reaction_to_an_evicted_prompt_says_expired(sim: MatrixHomeserver, tmp_path: Path) -> None:
    async with harness(sim, tmp_path) as gw:
        prompt = await request(sim, "deploy prod")
        await gw.stop()
        with state.open_keyed_store(
            "matrix", "matrix.approval-reactions", max_entries=1_000, path=gw.database_path
        ) as targets:
            assert targets.delete(
                json.dumps([sim.bot_user, ROOM, prompt["event_id"]], separators=(",", ":"))
            )  # evicted
        await gw.start()
        await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
        await sim.wait_for(lambda _: len(expired_notices(sim)) == 1)
        assert outcomes(sim) == []
