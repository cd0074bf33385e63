"""Fixtures for the Teams adapter tests: the Bot Connector simulator and a database path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botframework.connector.auth import JwtTokenExtractor

from chatstate import state
from chatstate.gateway.sim.teams import TeamsSimulator


@pytest.fixture
async def sim() -> AsyncIterator[TeamsSimulator]:
    async with TeamsSimulator() as simulator:
        yield simulator


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return state.database_path(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_signing_key_cache() -> None:
    """botframework-connector caches each OpenID metadata URL's keys for a day, process-wide;
    a later simulator that happens to get a freed port again has a new key."""
    JwtTokenExtractor.metadataCache.clear()
