"""What each interaction costs the store, counted with `state.op_counts()` in an in-process
gateway; and why a panel's entries are written before the panel is posted, not with the done
mark: a SIGKILL at the post."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatstate.gateway.app import build_app
from chatstate.gateway.config import parse_config
from chatstate.gateway.registry import load_plugins
from chatstate.gateway.sim.discord import DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.state import op_counts

WRITES = ("register", "register_if_absent", "compare_and_set", "consume", "delete", "delete_if", "commit")


@contextlib.asynccontextmanager
async def served(sim: DiscordSimulator, state_dir: Path) -> AsyncIterator[None]:
    """The real gateway app, in this process (so `op_counts` sees its store), with `sim` on it."""
    async with sim:
        table = {**sim.gateway_config(), "mode": "store"}
        config = parse_config({"state": {"dir": str(state_dir)}, "adapters": {"discord": table}}, env={})
        async with TestClient(TestServer(build_app(config, load_plugins(config)))) as client:
            sim.gateway_url = str(client.make_url("")).rstrip("/")
            yield


def writes_since(before: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in op_counts().items() if op in WRITES and n != before.get(op, 0)}


async def test_each_interaction_is_its_claim_and_one_done_transaction(tmp_path: Path) -> None:
    """A click or submit: the claim, then its state with the done mark in one transaction. A
    single-use click adds the atomic claim of its use; a panel, its entries (one transaction)."""
    sim = DiscordSimulator()
    async with served(sim, tmp_path):
        before = op_counts()
        message = await sim.post_panel()
        assert writes_since(before) == {"register_if_absent": 1, "commit": 2}  # was 7: five registers

        before = op_counts()
        assert "refreshed by" in (await sim.click(message, "Refresh")).content
        assert writes_since(before) == {"register_if_absent": 1, "commit": 1}

        before = op_counts()
        assert (await sim.click(message, "Approve")).content.startswith("Approved by")
        assert writes_since(before) == {"register_if_absent": 2, "commit": 1}  # the use, then the entry's removal

        modal = await sim.click(message, "Feedback")
        before = op_counts()
        submitted = await sim.submit_modal(modal.data, {"comment": "ok"}, message=message)
        assert submitted.content.endswith("feedback received: ok")
        assert writes_since(before) == {"register_if_absent": 1, "consume": 1, "commit": 1}


async def test_a_sigkill_at_the_post_leaves_a_panel_whose_buttons_work(tmp_path: Path) -> None:
    """Killed the moment Discord takes the panel, before the done mark: the entries are already
    on disk, so the panel on screen approves exactly once (with the done mark, never)."""
    sim = DiscordSimulator()
    async with GatewayHarness([sim], modes="store", state_dir=tmp_path / "state") as gw:
        pid = gw.pid
        assert pid is not None
        sim.on_message = lambda _m: os.kill(pid, signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await sim.post_panel()
        sim.on_message = None
        await gw.kill()  # reaps it (its exit code depends on who saw the SIGKILL first)
        await gw.start()
        [message] = sim.messages.values()
        assert (await sim.click(message, "Approve")).content.startswith("Approved by")
        assert (await sim.click(message, "Approve")).content == "You already used this component."
