"""The Matrix adapter against a real Synapse (issue 13): the restart scenarios an operator runs,
and one test for each way the real server differed from our simulator.

Each test gets a fresh bot device and room on the session's Synapse (`synapse` fixture) and a
real gateway subprocess (`GatewayHarness`); what the bot did is read from the room as alice
sees it. "Nothing happened" is asserted after a barrier request, as in the simulator tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from chatstate.gateway.sim.harness import GatewayHarness
from matrix_helpers import barrier, expired_notices, outcomes, prompts, request
from synapse_driver import SynapseRoomDriver


def bodies(hs: SynapseRoomDriver) -> list[str]:
    return [o["content"]["body"] for o in outcomes(hs)]


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_prompt_survives_restart_and_resolves_exactly_once(
    synapse: SynapseRoomDriver, tmp_path: Path, kind: Literal["term", "kill"]
) -> None:
    async with GatewayHarness([synapse], modes="store", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "deploy prod")
        assert await gw.restart(kind) == (0 if kind == "term" else -9)
        await synapse.react(synapse.room, synapse.bob, prompt["event_id"], "♾️")
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")  # after resolution
        await barrier(synapse)
        assert bodies(synapse) == [f"♾️ deploy prod: approved always by {synapse.bob}"]
        assert expired_notices(synapse) == [] and len(prompts(synapse)) == 2


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_reaction_sent_while_down_is_handled_once(
    synapse: SynapseRoomDriver, tmp_path: Path, kind: Literal["term", "kill"]
) -> None:
    async with GatewayHarness([synapse], modes="store", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "drop table")
        await (gw.stop() if kind == "term" else gw.kill())
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "❌")
        await gw.start()
        await synapse.wait_for(lambda _: len(outcomes(synapse)) == 1)
        await gw.restart(kind)
        await barrier(synapse)
        assert bodies(synapse) == [f"❌ drop table: denied by {synapse.alice}"]
        assert len(prompts(synapse)) == 2


async def test_legacy_mode_loses_the_prompt_and_the_reaction_sent_while_down(
    synapse: SynapseRoomDriver, tmp_path: Path
) -> None:
    async with GatewayHarness([synapse], modes="legacy", state_dir=tmp_path / "state") as gw:
        prompt = await request(synapse, "deploy prod")
        await gw.stop()
        await synapse.react(synapse.room, synapse.alice, prompt["event_id"], "✅")
        await gw.start()
        await barrier(synapse)
        assert outcomes(synapse) == []  # the "before": the reaction sent while down is lost
