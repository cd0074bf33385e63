"""Exactly-once, measured: a burst of double clicks on single-use buttons through a hostile
Discord (every `DiscordEdges.hostile()` switch on) while the gateway is SIGKILLed and restarted
mid-burst; what users saw is counted from the simulator's records.

Discord never redelivers an interaction: a click that died with the gateway shows "This
interaction failed" and its user clicks again. So each button must end with exactly one
approval, or, when the kill fell between the consume and the answer, with its clicker's retry
told "You already used this component." (the documented refusal); never two approvals. A
retry once Discord has failed that click is shown its outcome instead (the last test).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from discord_helpers import kill_at_callback, rows

from chatstate.adapters.discord.platform import RESPONSE_DEADLINE_S
from chatstate.gateway.sim.discord import ALICE, BOB, DiscordEdges, DiscordSimulator
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator
from chatstate.gateway.sim.harness import GatewayHarness

PANELS = 40
YOU_ALREADY_USED = "You already used this component."
ALREADY_USED = "This component was already used."


def user(i: int) -> str:
    return str(1_100_000_000_000_002_000 + i)


async def double_click(sim: DiscordSimulator, message: dict[str, Any], who: str) -> bool:
    """Two interactions on Approve within milliseconds; True if at least one got an answer."""
    payloads = [sim.click_payload(message, "Approve", user_id=who) for _ in range(2)]
    sim.hit("double_click")
    results = await asyncio.gather(*(sim.deliver(p) for p in payloads), return_exceptions=True)
    return any(not isinstance(r, BaseException) and r.body is not None for r in results)


def outcome_per_panel(sim: DiscordSimulator, panels: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """panel id -> what its Approve clicks got: 'approved' and the refusals, by text."""
    by_interaction = {}
    for r in sim.records:
        if r.kind == "interaction_response" or r.kind == "interaction_failed":
            req = r.payload["request"]
            if req.get("type") == 3:
                by_interaction[req["id"]] = req["message"]["id"]
    out: dict[str, Counter[str]] = {p["id"]: Counter() for p in panels}
    for a in sim.answers():
        panel = by_interaction.get(a["interaction_id"])
        if panel in out:
            out[panel]["approved" if str(a["content"]).startswith("Approved by") else str(a["content"])] += 1
    return out


async def test_double_clicks_through_a_sigkill_approve_each_button_once(tmp_path: Path) -> None:
    sim = DiscordSimulator()
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        panels = [await sim.post_panel(user_id=user(i)) for i in range(PANELS)]  # under the per-user quota
        sim.edges = DiscordEdges.hostile()
        answered_before = len(sim.recorded("interaction_response"))
        clicks = [asyncio.create_task(double_click(sim, panel, user(i))) for i, panel in enumerate(panels)]
        await sim.wait_for(lambda _r: len(sim.recorded("interaction_response")) - answered_before >= 6)
        assert await gw.kill() == -9  # mid-burst: the other clicks are in flight and die with it
        await gw.start()
        answered = await asyncio.gather(*clicks)
        retried = 0
        for i, (panel, ok) in enumerate(zip(panels, answered)):
            if not ok:  # "This interaction failed": the user clicks again
                retried += 1
                try:
                    await sim.deliver(sim.click_payload(panel, "Approve", user_id=user(i)))
                except aiohttp.ClientError:
                    raise AssertionError("the restarted gateway did not answer") from None
        outcomes = outcome_per_panel(sim, panels)
        summary = Counter(
            "approved once"
            if o["approved"] == 1
            else ("refused: already used by you" if o["approved"] == 0 and o[YOU_ALREADY_USED] else repr(dict(o)))
            for o in outcomes.values()
        )
        print(
            f"\ndiscord sigkill burst: {PANELS} buttons double-clicked, users retried {retried}, "
            f"outcomes {dict(summary)}, hits {dict(sim.hits)}"
        )
        assert all(o["approved"] <= 1 for o in outcomes.values()), outcomes  # never two effects
        assert set(summary) <= {"approved once", "refused: already used by you"}, outcomes


async def test_a_click_killed_before_its_answer_shows_its_outcome_when_clicked_again(tmp_path: Path) -> None:
    """SIGKILL once the click has taken the button's use (committed) and before Discord has its
    answer (the callback is held, then dropped): the same user's next click, after Discord has
    failed the first, is shown what the first would have said, once; others are refused."""
    sim = DiscordGatewaySimulator(heartbeat_interval_ms=2_000)
    sim.extra_config["reidentify_delay_s"] = 0.2
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        first = await kill_at_callback(sim, gw, sim.click_payload(message, "Approve", user_id=ALICE), delivered=False)
        await gw.start()
        [use] = rows(gw.database_path, "discord.used").values()
        # the user clicks again once Discord has shown "This interaction failed" for the first
        await asyncio.sleep(max(0.0, use.value["used_at"] / 1000 + RESPONSE_DEADLINE_S - time.time()))
        again = await sim.click(message, "Approve", user_id=ALICE)
        assert (again.content, again.ephemeral) == (f"Approved by <@{ALICE}>.", False)
        assert (await sim.click(message, "Approve", user_id=ALICE)).content == YOU_ALREADY_USED
        assert (await sim.click(message, "Approve", user_id=BOB)).content == ALREADY_USED
        assert not first.answered.done() and not sim.callbacks(str(first.payload["id"]))
