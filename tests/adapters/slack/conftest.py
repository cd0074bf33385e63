"""Fixtures for the Slack adapter tests: the simulator (`gw` runs a real gateway on it)."""

from __future__ import annotations

import pytest

from chatstate.gateway.sim.slack import SlackSimulator


@pytest.fixture
def slack() -> SlackSimulator:
    return SlackSimulator()


@pytest.fixture
def sim(slack: SlackSimulator) -> SlackSimulator:
    """The simulator the shared `gw` fixture (tests/adapters/conftest.py) plays against."""
    return slack
