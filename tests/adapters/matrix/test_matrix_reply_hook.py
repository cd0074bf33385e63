"""The user's reply hook on Matrix: with a hook, a plain text message in a room is answered by
it, once, also across a restart; `!approve` stays the approval flow; the bot's own messages are
never fed back to it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matrix_helpers import barrier, request

from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.matrix import MatrixHomeserver

HOOK = textwrap.dedent(
    """
    async def answer(message):
        return f"heard {message.user} in {message.conversation}: {message.text}"
    """
)


def answers(sim: MatrixHomeserver) -> list[str]:
    return [s["content"]["body"] for s in sim.sent("m.room.message") if s["content"]["body"].startswith("heard ")]


async def test_plain_messages_go_to_the_hook_once_across_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "matrix_logic.py").write_text(HOOK)
    sim = MatrixHomeserver()
    async with GatewayHarness(
        [sim],
        adapters={"matrix": {"reply": "matrix_logic:answer"}},
        state_dir=tmp_path / "state",
        pythonpath=[folder],
    ) as gw:
        await sim.send_message(sim.room, sim.alice, "hello bot")
        prompt = await request(sim, "deploy prod")  # the approval flow is untouched by the hook
        assert prompt["content"]["body"].startswith("Approval needed: deploy prod")
        assert answers(sim) == [f"heard {sim.alice} in {sim.room}: hello bot"]
        assert await gw.kill() == -9
        await gw.start()
        await sim.send_message(sim.room, sim.alice, "again")
        await barrier(sim)
        assert answers(sim) == [
            f"heard {sim.alice} in {sim.room}: hello bot",  # not answered a second time
            f"heard {sim.alice} in {sim.room}: again",
        ]
