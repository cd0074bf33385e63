"""Fixtures for the Matrix adapter tests: a homeserver simulator and a real gateway subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatstate.gateway.sim.harness import GatewayHarness
from chatstate.gateway.sim.matrix import MatrixHomeserver


@pytest.fixture
def sim() -> MatrixHomeserver:
    return MatrixHomeserver()


@pytest.fixture
async def gw(sim: MatrixHomeserver, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """A gateway running the Matrix adapter in store mode against `sim`."""
    async with GatewayHarness([sim], modes="store", state_dir=tmp_path / "state") as h:
        yield h
