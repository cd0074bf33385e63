"""A token the platform refuses stops `chatstate start` with one line naming the key and the
variable to fix, never the token: the check each SDK makes at login (Slack's auth.test, Discord's
GET /users/@me, Matrix's whoami), against the simulators. Discord over HTTP used to start green
and fail only at the bot's first message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chatstate.gateway.sim.discord import DiscordSimulator
from chatstate.gateway.sim.harness import free_port, run_gateway_cli
from chatstate.gateway.sim.matrix import MatrixHomeserver
from chatstate.gateway.sim.slack import SlackSimulator
from chatstate.gateway.sim.tomlwrite import dumps

WRONG = "wrong-token-never-shown"
CASES = {  # adapter: (simulator, the token's key, the platform's reason as the line gives it)
    "slack": (SlackSimulator, "bot_token", "auth.test: invalid_auth"),
    "discord": (DiscordSimulator, "bot_token", "GET users: HTTP 401"),
    "matrix": (MatrixHomeserver, "access_token", "whoami failed: M_UNKNOWN_TOKEN Unrecognised access token"),
}


@pytest.mark.parametrize("adapter", list(CASES))
async def test_a_refused_token_names_the_key_and_variable_to_fix(adapter: str, tmp_path: Path) -> None:
    simulator, key, reason = CASES[adapter]
    sim = simulator()
    await sim.start()
    try:
        table = sim.gateway_config()
        config = tmp_path / "gw.toml"
        write = lambda token: config.write_text(  # noqa: E731
            dumps({"gateway": {"port": free_port()}, "adapters": {adapter: {**table, key: token}}})
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTATE_")}
        args = ("start", "--config", str(config), "--state-dir", str(tmp_path / "s"), "--detach")
        write(WRONG)
        refused = await run_gateway_cli(*args, env=env)
        assert refused.returncode == 1, refused
        [line] = refused.stderr.splitlines()
        variable = f"CHATSTATE_{adapter.upper()}_{key.upper()}"
        said = f"adapters.{adapter}: start failed: CredentialRefused: the platform refused {key} ({reason}): "
        assert said + f"fix [adapters.{adapter}] {key} (or ${variable}, which wins)" in line
        logged = (tmp_path / "s" / "gateway.log").read_text()
        assert WRONG not in refused.stdout + refused.stderr + logged
        write(table[key])  # the right one: it starts, and stops
        started = await run_gateway_cli(*args, env=env)
        assert started.returncode == 0 and json.loads(started.stdout)["pid"], started
        assert (await run_gateway_cli("stop", "--state-dir", str(tmp_path / "s"), env=env)).returncode == 0
    finally:
        await sim.stop()
