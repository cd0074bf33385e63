"""Fixtures for the Slack adapter tests: the simulator and a real gateway subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.slack import SlackSimulator


@pytest.fixture
def slack() -> SlackSimulator:
    return SlackSimulator()


@pytest.fixture
async def gw(slack: SlackSimulator, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """A gateway running the Slack adapter in store mode against `slack`."""
    async with GatewayHarness([slack], modes="store", state_dir=tmp_path / "state") as h:
        yield h
