"""Fixtures for the Discord adapter tests: the Discord simulator (`gw` runs a real gateway on it)."""

from __future__ import annotations

import pytest

from chatstate.gateway.sim.discord import DiscordSimulator


@pytest.fixture
def sim() -> DiscordSimulator:
    return DiscordSimulator()
