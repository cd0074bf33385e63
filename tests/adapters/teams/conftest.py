"""Fixtures for the Teams adapter tests: the Bot Connector simulator and a database path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import state
from gateway.sim.teams import TeamsSimulator


@pytest.fixture
async def sim() -> AsyncIterator[TeamsSimulator]:
    async with TeamsSimulator() as simulator:
        yield simulator  # type: ignore[misc]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return state.database_path(tmp_path)
