"""Fixtures for the gateway tests: a real gateway subprocess running the echo plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_helpers import SECRET

from chatstate.gateway.sim.harness import GatewayHarness


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with GatewayHarness(adapters={"echo": {"secret": SECRET}}, state_dir=tmp_path / "state") as h:
        yield h
