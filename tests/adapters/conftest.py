"""Fixtures every adapter folder shares: `gw`, a real gateway subprocess in store mode against
the folder's own `sim` fixture (its platform simulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.harness import GatewayHarness


@pytest.fixture
async def gw(sim: SimulatorServer, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """A gateway running `sim`'s adapter in store mode against `sim`."""
    async with GatewayHarness([sim], modes="store", state_dir=tmp_path / "state") as h:
        yield h
