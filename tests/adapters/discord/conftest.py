"""Fixtures for the Discord adapter tests: a Discord simulator and a real gateway subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstate.gateway.sim.discord import DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness


@pytest.fixture
def sim() -> DiscordSimulator:
    return DiscordSimulator()


@pytest.fixture
async def gw(sim: DiscordSimulator, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """A gateway running the Discord adapter in store mode against `sim`."""
    async with GatewayHarness([sim], modes="store", state_dir=tmp_path / "state") as h:
        yield h
