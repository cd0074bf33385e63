"""Fixtures for the Matrix adapter tests: the homeserver simulator (`gw` runs a real gateway on
it), a private Synapse per test session (the real-homeserver tier), and the plugin's runtime
over one SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from runtime_support import FileRuntime
from synapse_driver import SynapseRoomDriver
from synapse_install import synapse_python
from synapse_server import SynapseServer

from chatstate.gateway.sim.matrix import MatrixHomeserver


@pytest.fixture
def sim() -> MatrixHomeserver:
    return MatrixHomeserver()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[FileRuntime]:
    rt = FileRuntime("matrix", tmp_path / "state.sqlite")
    yield rt
    await rt.close()


@pytest.fixture(scope="session")
def synapse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """One Synapse for the session. A missing or broken Synapse fails the tier, never skips."""
    try:
        server = SynapseServer(tmp_path_factory.mktemp("synapse"), synapse_python())
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def synapse(synapse_server: SynapseServer) -> AsyncIterator[SynapseRoomDriver]:
    """This test's bot device and room on the session Synapse (the bot joined out of band)."""
    driver = SynapseRoomDriver(synapse_server)
    try:
        await driver.open()
        yield driver
    finally:
        await driver.stop()
        synapse_server.reset_ratelimit(driver.bot_user)
