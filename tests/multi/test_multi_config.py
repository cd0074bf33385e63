"""Choosing Redis for a gateway: `[state] url`, or CHATSTATE_STATE_URL over it."""

from __future__ import annotations

from pathlib import Path

from multi_helpers import stored, via

from chatstate.gateway.config import parse_config
from chatstate.gateway.sim.discord import DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness


def test_the_env_variable_wins_over_the_config_file() -> None:
    raw = {"state": {"url": "redis://127.0.0.1:1/0"}}
    assert parse_config(raw, env={}).state_url == "redis://127.0.0.1:1/0"
    assert (
        parse_config(raw, env={"CHATSTATE_STATE_URL": "redis://10.0.0.1:6379/2"}).state_url == "redis://10.0.0.1:6379/2"
    )
    assert parse_config({}, env={}).state_url is None  # SQLite stays the default


async def test_a_gateway_started_with_only_the_env_variable_writes_to_redis(shared_url: str, tmp_path: Path) -> None:
    sim = DiscordSimulator()
    async with GatewayHarness([sim], state_dir=tmp_path / "gw", env={"CHATSTATE_STATE_URL": shared_url}) as gw:
        message = await via(gw, sim).post_panel()
        approve = sim.component(message, "Approve")["custom_id"]
        assert approve in stored(shared_url, "discord", "discord.components")
        assert not gw.database_path.exists()  # nothing went to SQLite
        _, health = await gw.healthz()
        assert health["store"]["database_path"] == shared_url
