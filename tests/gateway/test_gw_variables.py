"""CHATSTATE_* variables that change nothing are named at start, with the closest real name,
and a variable for an external plugin without a table says which line to add."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gw_helpers import EXT_PLUGINS_DIR, SECRET

from chatstate.gateway.config import parse_config
from chatstate.gateway.launch import config_path
from chatstate.gateway.registry import variable_warnings
from chatstate.gateway.sim.harness import run_gateway_cli


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSTATE_")}
    return {**env, "PYTHONPATH": str(EXT_PLUGINS_DIR), **extra}


async def test_a_misspelt_variable_is_named_with_the_closest_known_one(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[adapters.echo]\nsecret = "{SECRET}"\n')
    env = _env(CHATSTATE_GATEWAY_PROT="9999", CHATSTATE_SLACK_BOT_TOKEN="xoxb-never-shown")
    args = ("start", "--config", str(config), "--state-dir", str(tmp_path / "s"), "--check-only")
    for _ in range(2):  # the same on every start
        result = await run_gateway_cli(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0
        assert result.stderr.splitlines() == [
            "gateway: warning: CHATSTATE_GATEWAY_PROT is not a chatstate variable and changes nothing "
            "(did you mean CHATSTATE_GATEWAY_PORT?)",
            "gateway: warning: CHATSTATE_SLACK_BOT_TOKEN changes nothing: the config has no [adapters.slack] "
            "table, and a bundled adapter runs only when its table is there",
        ]
        assert "xoxb-never-shown" not in result.stderr


def test_known_variables_and_those_of_external_plugins_are_not_warned_about() -> None:
    env = {
        "CHATSTATE_HOME": "/x",
        "CHATSTATE_GATEWAY_PORT": "1",
        "CHATSTATE_ECHO_SECRET": "s",
        "CHATSTATE_ECHO_REPLY": "a:b",
        "CHATSTATE_EXT_SLOW_FIFO": "/f",
    }
    raw = {"external_plugins": ["gw_ext_plugin:SlowStartPlugin"], "adapters": {"echo": {}, "ext-slow": {}}}
    sys.path.insert(0, str(EXT_PLUGINS_DIR))
    try:
        assert variable_warnings(parse_config(raw, env=env)) == []
    finally:
        sys.path.remove(str(EXT_PLUGINS_DIR))


async def test_a_variable_for_an_external_plugin_without_a_table_says_what_to_add(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('external_plugins = ["gw_ext_plugin:SlowStartPlugin"]\n')
    env = _env(CHATSTATE_EXT_SLOW_FIFO=str(tmp_path / "fifo"))
    result = await run_gateway_cli(
        "start", "--config", str(config), "--state-dir", str(tmp_path / "s"), "--check-only", env=env
    )
    assert result.returncode == 2
    assert result.stderr == (
        "gateway: config error: adapters.ext-slow: CHATSTATE_EXT_SLOW_FIFO is set, but variables only fill in a "
        f"table that is in the config, and there is no [adapters.ext-slow] table; add that line to {config}\n"
    )
    config.write_text('external_plugins = ["gw_ext_plugin:SlowStartPlugin"]\n[adapters.ext-slow]\n')
    result = await run_gateway_cli(
        "start", "--config", str(config), "--state-dir", str(tmp_path / "s"), "--check-only", env=env
    )
    assert result.returncode == 0, result.stderr


async def test_an_empty_config_variable_is_unset_not_the_current_folder(tmp_path: Path) -> None:
    env = _env(CHATSTATE_GATEWAY_CONFIG="", CHATSTATE_HOME=str(tmp_path / "home"))
    started = await run_gateway_cli("start", "--state-dir", str(tmp_path / "s"), "--check-only", env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    inspected = await run_gateway_cli("state", "inspect", env=env, cwd=tmp_path)
    assert "no state database at " + str(tmp_path / "home") in inspected.stderr
    assert "directory" not in started.stderr + inspected.stderr


def test_an_empty_path_variable_is_unset_not_the_current_folder(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert parse_config({}, env={"CHATSTATE_STATE_DIR": "", "CHATSTATE_HOME": home}).state_dir == Path(home)
    assert (
        parse_config({}, env={"CHATSTATE_STATE_DIR": " ", "CHATSTATE_HOME": " "}).state_dir
        == Path.home() / ".chatstate"
    )
    assert config_path({"CHATSTATE_GATEWAY_CONFIG": " "}) is None
    assert config_path({"CHATSTATE_GATEWAY_CONFIG": "gw.toml"}) == "gw.toml"
