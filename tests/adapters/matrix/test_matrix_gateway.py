"""End to end: a Matrix user talks to a real gateway subprocess through the homeserver simulator."""

from __future__ import annotations

import json

from gateway.sim.harness import GatewayHarness
from gateway.sim.matrix import MatrixHomeserver
from matrix_helpers import ALICE, PENDING, REACTIONS, ROOM, outcomes, request, rows, seeds


async def test_prompt_is_seeded_and_its_target_is_on_disk(sim: MatrixHomeserver, gw: GatewayHarness) -> None:
    prompt = await request(sim, "deploy prod")
    assert seeds(sim, prompt["event_id"]) == ["✅", "♾️", "❌"]
    key = json.dumps([sim.bot_user, ROOM, prompt["event_id"]], separators=(",", ":"))
    stored = rows(gw.database_path, "matrix", REACTIONS)
    assert list(stored) == [key]
    await sim.react(ROOM, ALICE, prompt["event_id"], "✅")
    await sim.wait_for(lambda _: len(outcomes(sim)) == 1)
    print(outcomes(sim), rows(gw.database_path, "core:approvals", PENDING))
