"""Config parsing: every key checked, the offending key named, env and CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatstate.adapters.slack.config import SlackSettings
from chatstate.gateway.config import load_config, parse_config
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sim.tomlwrite import dumps

EXAMPLE = Path(__file__).parents[2] / "fixtures" / "gateway.example.toml"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert (config.host, config.port, config.sweep_interval_s) == ("127.0.0.1", 8787, 60.0)
    assert [a.id for a in config.enabled_adapters()] == ["echo"]
    assert config.adapters["slack"].enabled is False


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, env={"CHATSTATE_HOME": str(tmp_path)})
    assert config.state_dir == tmp_path
    assert config.plugin_max_live_rows == 50_000 and config.adapters == {}


def test_env_overrides_and_supplies_adapter_secrets() -> None:
    raw = {"adapters": {"slack": {"signing_secret": "from-file"}, "ms-teams": {}}}
    env = {
        "CHATSTATE_SLACK_SIGNING_SECRET": "from-env",
        "CHATSTATE_SLACK_BOT_TOKEN": "xoxb",
        "CHATSTATE_MS_TEAMS_APP_PASSWORD": "pw",
        "CHATSTATE_DISCORD_PUBLIC_KEY": "no table",
    }
    config = parse_config(raw, env=env)
    slack = config.adapters["slack"]
    settings = SlackSettings.from_table(slack.table, env=slack.env)
    assert (settings.signing_secret, settings.bot_token) == ("from-env", "xoxb")
    assert config.adapters["ms-teams"].env == {"CHATSTATE_MS_TEAMS_APP_PASSWORD": "pw"}
    assert "discord" not in config.adapters


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    raw = {"gateway": {"host": "0.0.0.0", "port": 1}, "state": {"dir": "/nowhere"}}
    config = parse_config(raw, env={}, state_dir=tmp_path, host="127.0.0.2", port=0)
    assert (config.host, config.port, config.state_dir) == ("127.0.0.2", 0, tmp_path)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"gateway": {"port": 70000}}, "gateway.port"),
        ({"gateway": {"port": True}}, "gateway.port"),
        ({"gateway": {"host": ""}}, "gateway.host"),
        ({"gateway": {"log_level": "loud"}}, "gateway.log_level"),
        ({"gateway": {"drain_timeout_s": -1}}, "gateway.drain_timeout_s"),
        ({"gateway": {"access_log": "yes"}}, "gateway.access_log"),
        ({"state": {"url": "http://x"}}, "state.url"),
        ({"state": {"plugin_max_live_rows": 0}}, "state.plugin_max_live_rows"),
        ({"state": {"sweep_interval_s": "60"}}, "state.sweep_interval_s"),
        ({"state": {"colour": 1}}, "state.colour"),
        ({"state": 3}, "state"),
        ({"trusted": []}, "trusted"),
        ({"trusted_plugins": "slack"}, "trusted_plugins"),
        ({"external_plugins": ["no_colon"]}, "external_plugins[0]"),
        ({"adapters": {"echo": 1}}, "adapters.echo"),
        ({"adapters": {"echo": {"enabled": "yes"}}}, "adapters.echo.enabled"),
        ({"adapters": {"echo": {"mode": "memory"}}}, "adapters.echo.mode"),
    ],
)
def test_bad_values_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert info.value.key == key
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ({"gatway": {"port": 1}}, "[gatway]: unknown table (did you mean [gateway]?)"),
        ({"adapter": {"echo": {}}}, "[adapter]: unknown table (did you mean [adapters]?)"),
        ({"misc": {}}, "[misc]: unknown table"),
    ],
)
def test_a_mistyped_table_is_named_as_a_table_with_the_real_ones(raw: dict, said: str) -> None:
    with pytest.raises(ConfigError) as info:  # not "unknown key; known keys: trusted_plugins, external_plugins"
        parse_config(raw, env={})
    assert str(info.value) == f"config error: {said}; the tables are [gateway], [state] and [adapters.<id>]"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_a_config_saved_as_utf16_is_a_config_error_and_a_utf8_bom_is_read(tmp_path: Path) -> None:
    """An editor's encodings: UTF-16 was a UnicodeDecodeError traceback (exit 1), a BOM 'Invalid statement'."""
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text("[gateway]\nport = 8788\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"not valid TOML \(not UTF-8 at byte 0\); save it as UTF-8") as info:
        load_config(utf16, env={})
    assert info.value.code == 2
    bom = tmp_path / "bom.toml"
    bom.write_text("[gateway]\nport = 8788\n", encoding="utf-8-sig")
    assert load_config(bom, env={}).port == 8788


def test_toml_writer_round_trips() -> None:
    import tomllib

    doc = {
        "trusted_plugins": ["a"],
        "gateway": {"host": "h", "port": 1, "x": 1.5, "y": False},
        "adapters": {"echo": {"secret": 'q"\n\\'}, "a.b": {}},
    }
    assert tomllib.loads(dumps(doc)) == doc
    with pytest.raises(TypeError):
        dumps({"x": None})


def test_a_relative_state_dir_in_the_file_is_in_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dir = "state"` meant the current folder's: `status` or `stop` with the same config, run from
    another folder, found no gateway (and a start from `/` made `/state`)."""
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "gw.toml"
    config.write_text('[state]\ndir = "state"\n')
    monkeypatch.chdir(tmp_path)
    for path in (config, "cfg/gw.toml"):
        assert load_config(path, env={}).state_dir == tmp_path / "cfg" / "state"
    # a variable and --state-dir are the command line's: the current folder's
    assert load_config(config, env={"CHATSTATE_STATE_DIR": "here"}).state_dir == tmp_path / "here"
    assert load_config(config, env={}, state_dir="here").state_dir == tmp_path / "here"
