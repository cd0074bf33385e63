"""The Teams adapter in a real gateway subprocess, restarted with SIGTERM and SIGKILL.

Every `sim.deliver` returns after the gateway finished the turn (the Bot Framework endpoint
answers once the bot's sends are done), so "not answered" is asserted right after it returns,
without waiting.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from teams_helpers import sent_rows

from chatstate import state
from chatstate.adapters.teams.state import NAMESPACE, SENT_MAX_ENTRIES, SENT_TTL_MS, sent_value
from chatstate.gateway.adapter_state import StateSpec
from chatstate.gateway.clock import now_ms
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.teams import TeamsSimulator, new_signing_key

CHANNEL = "19:general0123456789@thread.tacv2"
LAST_SECONDS_MS = 6_000  # how long before expiry the "closing" message is answered; margin for a slow box


def thread_reply(sim: TeamsSimulator, root_id: str, **fields: Any) -> dict[str, Any]:
    """A user's reply in the thread under the bot's message `root_id`."""
    return sim.activity(
        "message_reply", reply_to_id=root_id, conversation_id=f"{CHANNEL};messageid={root_id}", **fields
    )


@pytest.fixture
def teams_sim() -> TeamsSimulator:
    """Started and stopped by the harness."""
    return TeamsSimulator()


def harness(sim: TeamsSimulator, tmp_path: Path, *, mode: str = "store", **table: Any) -> GatewayHarness:
    return GatewayHarness(
        [sim],
        modes=mode,
        adapters={"teams": table} if table else None,
        state_dir=tmp_path / "state",
    )


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_reply_and_reaction_to_a_pre_restart_message_are_reply_to_bot(
    teams_sim: TeamsSimulator, tmp_path: Path, kind: str
) -> None:
    sim = teams_sim
    async with harness(sim, tmp_path) as gw:
        assert await sim.deliver(sim.activity("message_mention")) == 200
        [answer] = sim.sent()
        assert answer["text"] == "[mention] you said: hello there"
        await gw.restart(kind=kind)
        assert await sim.deliver(thread_reply(sim, answer["id"])) == 200
        assert sim.sent()[-1]["text"] == "[reply_to_bot] you said: thanks, and one more thing"
        assert await sim.deliver(sim.activity("message_reaction", reply_to_id=answer["id"])) == 200
        assert sim.sent()[-1]["text"] == "[reply_to_bot] thanks for the like"
        status, health = await gw.healthz()
        assert status == 200
        assert health["adapters"]["teams"]["state"][NAMESPACE]["mode"] == "store"


async def test_legacy_mode_forgets_the_bots_messages_on_restart(teams_sim: TeamsSimulator, tmp_path: Path) -> None:
    sim = teams_sim
    async with harness(sim, tmp_path, mode="legacy") as gw:
        await sim.deliver(sim.activity("message_mention"))
        [answer] = sim.sent()
        await sim.deliver(thread_reply(sim, answer["id"]))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")  # before the restart: in memory
        await gw.restart(kind="term")
        assert await sim.deliver(thread_reply(sim, answer["id"])) == 200
        assert len(sim.sent()) == 2  # the "before": the reply is not answered
        assert not gw.database_path.exists() or sent_rows(gw.database_path) == {}


async def test_expiry_counts_from_the_send_and_is_not_extended_across_restart(
    teams_sim: TeamsSimulator, tmp_path: Path
) -> None:
    sim = teams_sim
    async with harness(sim, tmp_path) as gw:
        await sim.deliver(sim.activity("message_mention"))
        [answer] = sim.sent()
        key = f"{CHANNEL}:{answer['id']}"
        original = sent_rows(gw.database_path)[key]
        assert original.expires_at == original.created_at + SENT_TTL_MS
        await gw.restart(kind="kill")
        await sim.deliver(thread_reply(sim, answer["id"]))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")
        assert sent_rows(gw.database_path)[key] == original  # the hit did not touch the stored row

        # Messages the bot sent long ago, written with an earlier clock as a previous process
        # would have; this process never saw them, exactly as after a restart.
        stale, closing = "1600000000001", "1600000000002"
        seed_at = now_ms()
        for activity_id, sent_ago_ms in ((stale, SENT_TTL_MS + 1_000), (closing, SENT_TTL_MS - LAST_SECONDS_MS)):
            sent_at = seed_at - sent_ago_ms
            with state.open_keyed_store(
                "teams",
                NAMESPACE,
                max_entries=SENT_MAX_ENTRIES,
                default_ttl_ms=SENT_TTL_MS,
                path=gw.database_path,
                clock=lambda t=sent_at: t,
            ) as store:
                store.register(f"{CHANNEL}:{activity_id}", sent_value(sent_at))
        count = len(sim.sent())
        await sim.deliver(thread_reply(sim, stale))
        assert len(sim.sent()) == count  # 24 h + 1 s after the send: no longer the bot's message
        await sim.deliver(thread_reply(sim, closing))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")  # seconds left: still recognised
        expires_at = sent_rows(gw.database_path)[f"{CHANNEL}:{closing}"].expires_at
        assert expires_at == seed_at + LAST_SECONDS_MS  # the hit kept the stored expiry
        # Wait out the original window (a deadline on the wall clock; there is no event to await):
        # the hit above cached the row; had it restarted the window, the bot would answer again.
        await _until(expires_at + 50)
        count = len(sim.sent())
        await sim.deliver(thread_reply(sim, closing, text="still there?"))
        assert len(sim.sent()) == count


async def test_cap_evicts_the_oldest_send_and_survives_restart(teams_sim: TeamsSimulator, tmp_path: Path) -> None:
    sim = teams_sim
    async with harness(sim, tmp_path, sent_max_entries=3) as gw:
        for n in range(4):
            await sim.deliver(sim.activity("message_mention", text=f"<at>chatstate</at> number {n}"))
        first, second, third, fourth = (a["id"] for a in sim.sent())
        assert list(sent_rows(gw.database_path, StateSpec(NAMESPACE, ttl_ms=SENT_TTL_MS, max_entries=3))) == [
            f"{CHANNEL}:{i}" for i in (second, third, fourth)
        ]
        await gw.restart(kind="kill")
        await sim.deliver(thread_reply(sim, first))
        assert len(sim.sent()) == 4  # the oldest was evicted: a reply to it needs a mention again
        await sim.deliver(thread_reply(sim, second))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")


async def test_unauthenticated_requests_get_401_and_write_nothing(teams_sim: TeamsSimulator, tmp_path: Path) -> None:
    sim = teams_sim
    async with harness(sim, tmp_path) as gw:
        activity = sim.activity("message_mention")
        assert await sim.deliver(activity, token=None) == 401
        assert await sim.deliver(activity, token=sim.token(key=new_signing_key())) == 401
        assert await sim.deliver(activity, token=sim.token(audience="another-bot")) == 401
        assert sim.sent() == []
        assert sent_rows(gw.database_path) == {}


async def _until(deadline_ms: int) -> None:
    """Return once the wall clock has passed `deadline_ms` (ms since epoch)."""
    delay = deadline_ms / 1000 - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
