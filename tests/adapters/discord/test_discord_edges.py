"""Discord's documented edge behaviours, one simulator switch each (`DiscordEdges`), against a
real gateway; what users saw is read from the simulator's records."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatstate.gateway.sim.discord import ALICE, BOB, DiscordEdges, DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness

ALREADY_USED = ("This component was already used.", "You already used this component.")


async def wait_for_log(gw: GatewayHarness, event: str, *, code: int, timeout_s: float = 10.0) -> None:
    """The gateway logs the handled refusal right after the simulator sent it; the log file is
    written by another process, so poll it briefly (a deadline, not a synchronisation)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not any(e.get("event") == event and e.get("code") == code for e in gw.logs()):
        assert asyncio.get_running_loop().time() < deadline, f"no {event} {code} in the log"
        await asyncio.sleep(0.05)


def approvals(sim: DiscordSimulator) -> list[dict[str, object]]:
    return [a for a in sim.answers() if str(a["content"]).startswith("Approved by")]


async def test_slow_work_is_deferred_within_3_s_and_finished_through_the_webhook(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(deadline=True, slow_messages_s=3.5))
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        message = await sim.post_panel()  # the message post alone takes 3.5 s
        assert sim.hits["deadline_missed"] == 0 and sim.hits["deferred"] == 1
        [edit] = sim.recorded("edit_original")
        assert f"message {message['id']}" in edit.payload["request"]["content"]


async def test_an_expired_token_is_handled_not_crashed_on(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(deadline=True, slow_messages_s=3.0, token_ttl_s=2.5))
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        reply = await sim.deliver(sim.interaction("application_command", user_id=ALICE))
        assert reply.type == 5  # deferred in time...
        await sim.wait_for(lambda _r: bool(sim.recorded("webhook_refused")))
        assert sim.hits["token_expired"] == 1  # ...finished too late
        assert len(sim.recorded("message_create")) == 1  # the panel itself was posted
        status, health = await gw.healthz()  # answered after the refusal was handled
        assert status == 200 and health["adapters"]["discord"]["status"] == "ok"
        await wait_for_log(gw, "discord_interaction_gone", code=50027)
        panel = next(iter(sim.messages.values()))
        assert (await sim.click(panel, "Refresh")).status == 200  # still serving


async def test_a_missed_deadline_kills_the_token_and_the_late_answer_gets_10062(tmp_path: Path) -> None:
    # Discord's deadline shortened below the adapter's deferral point: the interaction fails
    sim = DiscordSimulator(edges=DiscordEdges(deadline=True, deadline_s=1.0, slow_messages_s=3.0))
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        await sim.deliver(sim.interaction("application_command", user_id=ALICE))
        assert sim.hits["deadline_missed"] == 1  # the user saw "This interaction failed"
        await sim.wait_for(lambda _r: bool(sim.recorded("webhook_refused")))
        assert sim.hits["unknown_interaction"] == 1
        await wait_for_log(gw, "discord_interaction_gone", code=10062)
        status, health = await gw.healthz()
        assert status == 200 and health["adapters"]["discord"]["status"] == "ok"


async def test_a_second_response_40060_is_handled_not_crashed_on(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(deadline=True, slow_messages_s=3.0, already_acknowledged=True))
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        reply = await sim.deliver(sim.interaction("application_command", user_id=ALICE))
        assert reply.type == 5
        await sim.wait_for(lambda _r: bool(sim.recorded("webhook_refused")))
        assert sim.hits["already_acknowledged"] == 1
        status, health = await gw.healthz()
        assert status == 200 and health["adapters"]["discord"]["status"] == "ok"
        await wait_for_log(gw, "discord_interaction_gone", code=40060)


async def test_a_429_on_message_create_is_honoured_per_bucket(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(rate_limits=True, bucket_size=1, bucket_window_s=1.0))
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        first, second = await asyncio.gather(sim.post_panel(), sim.post_panel())
        assert first["id"] != second["id"]
        assert len(sim.recorded("message_create")) == 2
        # the bot waited for the bucket (X-RateLimit-Remaining: 0 / Reset-After) or the 429
        assert sim.hits["rate_limited"] <= 1


async def test_a_429_on_the_webhook_is_honoured(tmp_path: Path) -> None:
    sim = DiscordSimulator(
        edges=DiscordEdges(deadline=True, slow_messages_s=2.6, rate_limits=True, bucket_size=1, bucket_window_s=1.0)
    )
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        # two deferred commands in two channels finish together: one webhook bucket, one slot
        a = sim.interaction("application_command", user_id=ALICE)
        b = sim.interaction("application_command", user_id=BOB)
        b["channel_id"] = "1010000000000000009"
        replies = await asyncio.gather(sim.deliver(a), sim.deliver(b))
        assert [r.type for r in replies] == [5, 5]
        await sim.wait_for(lambda recs: sum(r.kind == "edit_original" for r in recs) == 2, timeout=15)
        assert all("Panel posted" in r.payload["request"]["content"] for r in sim.recorded("edit_original"))


async def test_a_double_click_on_a_single_use_button_has_one_effect(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(double_click=True))
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        message = await sim.post_panel()
        await sim.click(message, "Approve", user_id=ALICE)
        late = await sim.deliver(sim.click_payload(message, "Approve", user_id=BOB))  # after both
        assert len(approvals(sim)) == 1
        losers = [a for a in sim.answers() if not str(a["content"]).startswith(("Approved by", "Panel posted"))]
        assert [a["content"] in ALREADY_USED and a["ephemeral"] for a in losers] == [True, True], losers
        assert late.content == "This component was already used."


async def test_rate_limit_waits_are_bounded(tmp_path: Path) -> None:
    sim = DiscordSimulator(edges=DiscordEdges(rate_limits=True, bucket_size=0, bucket_window_s=0.3))
    async with GatewayHarness([sim], state_dir=tmp_path / "state"):
        reply = await sim.deliver(sim.interaction("application_command", user_id=ALICE))
        assert reply.status == 200
        answers = [a["content"] for a in sim.answers()]
        if reply.type == 5:  # the retries outlasted the deferral point: the answer is an edit
            await sim.wait_for(lambda _r: bool(sim.recorded("edit_original")))
            answers = [a["content"] for a in sim.answers()]
        assert answers == ["Could not post the panel; try again."]
        assert sim.hits["rate_limited"] == 4  # the call and its 3 retries, then it gave up
        assert sim.recorded("message_create") == []
