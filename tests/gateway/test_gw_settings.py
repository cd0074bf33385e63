"""The typed config layer, through real `chatstate start` processes: unknown keys
anywhere exit 2 naming the key and the known ones, environment variables are typed as TOML, and no
error ever shows a value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gw_helpers import SECRET, bump

from chatstate.gateway.config import GatewaySettings, StateSettings, TopLevelSettings, parse_config
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.registry import BUNDLED_SETTINGS, import_object
from chatstate.gateway.settings import AdapterSettings, describe, env_prefix
from chatstate.gateway.sim.harness import GatewayHarness, run_gateway_cli

DOCS = Path(__file__).resolve().parents[2] / "docs"
SLACK = {"signing_secret": "slack-signing-value", "bot_token": "xoxb-token-value"}


async def _start(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    result = await run_gateway_cli(
        "start",
        "--config",
        str(path),
        "--state-dir",
        str(tmp_path / "s"),
        "--port",
        "0",
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("toml", "key", "known"),
    [
        (f'[adapters.echo]\nsecret = "{SECRET}"\nmax_entires = 5\n', "adapters.echo.max_entires", "max_entries"),
        # a disabled adapter's typo fails too, before anyone switches it on
        ("[adapters.slack]\nenabled = false\nthread_ttl_msec = 5\n", "adapters.slack.thread_ttl_msec", "thread_ttl_ms"),
        ("[gateway]\nprot = 80\n", "gateway.prot", "port"),
        ('[state]\ndri = "x"\n', "state.dri", "dir"),
        ('trusted_plugin = ["x"]\n', "trusted_plugin", "trusted_plugins"),
    ],
)
async def test_unknown_keys_exit_2_naming_the_key_and_the_known_ones(
    tmp_path: Path, toml: str, key: str, known: str
) -> None:
    code, stderr = await _start(tmp_path, toml)
    assert code == 2, stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("gateway:")]  # the rest is the JSON log
    assert line.startswith(f"gateway: config error: {key}: unknown key; known keys: ")
    assert known in line.split("known keys: ")[1].split(", ")


async def test_environment_values_are_typed_as_in_toml(tmp_path: Path) -> None:
    env = {
        "CHATSTATE_SLACK_ENABLED": "false",
        "CHATSTATE_ECHO_MAX_ENTRIES": "2",
        "CHATSTATE_GATEWAY_ACCESS_LOG": "false",
        "CHATSTATE_STATE_SWEEP_INTERVAL_S": "30",
    }
    h = GatewayHarness(adapters={"echo": {"secret": SECRET}, "slack": SLACK}, env=env, state_dir=tmp_path / "s")
    async with h:
        _, body = await h.healthz()
        assert set(body["adapters"]) == {"echo"}  # CHATSTATE_SLACK_ENABLED=false switched it off
        assert body["sweeper"]["interval_s"] == 30.0
        for key in ("a", "b", "c"):
            await bump(h, key)
        assert not any(e["event"] == "http_request" for e in h.logs())  # access_log = false
    opened = [e for e in h.logs() if e["event"] == "store_opened"]
    assert opened[0]["max_entries"] == 2


def test_the_issue_examples_parse() -> None:
    config = parse_config(
        {"adapters": {"teams": {"app_id": "a"}, "slack": {}}},
        env={"CHATSTATE_TEAMS_SENT_TTL_MS": "5000", "CHATSTATE_SLACK_ENABLED": "false"},
    )
    assert config.adapters["slack"].enabled is False
    teams_type = import_object(BUNDLED_SETTINGS["teams"], key="teams")
    teams = teams_type.from_table(config.adapters["teams"].table, env=config.adapters["teams"].env)
    assert teams.sent_ttl_ms == 5000
    with pytest.raises(ConfigError, match=r"gateway.port: .*integer.*\$CHATSTATE_GATEWAY_PORT"):
        parse_config({}, env={"CHATSTATE_GATEWAY_PORT": "80.5"})
    with pytest.raises(ConfigError, match="gateway.port"):  # TOML has types: a string port is wrong
        parse_config({"gateway": {"port": "80"}}, env={})


async def test_no_error_shows_a_value(tmp_path: Path) -> None:
    toml = (
        '[adapters.slack]\nsigning_secret = "slack-signing-value"\nbot_token = "xoxb-token-value"\n'
        'thread_ttl_ms = "ttl-secret-value"\n'
    )
    code, stderr = await _start(tmp_path, toml)
    assert code == 2 and "adapters.slack.thread_ttl_ms" in stderr
    code2, stderr2 = await _start(
        tmp_path, f'[adapters.echo]\nsecret = "{SECRET}"\n', env={"CHATSTATE_ECHO_MAX_ENTRIES": "env-secret-value"}
    )
    assert code2 == 2 and "$CHATSTATE_ECHO_MAX_ENTRIES" in stderr2
    for text in (stderr, stderr2):
        for value in ("slack-signing-value", "xoxb-token-value", "ttl-secret-value", "env-secret-value", SECRET):
            assert value not in text


def test_every_key_and_variable_is_documented() -> None:
    """docs/gateway.md and docs/migrations/<adapter>.md name each key's environment variable."""
    gateway_doc = (DOCS / "gateway.md").read_text()
    tables = [
        (TopLevelSettings, "CHATSTATE_"),
        (GatewaySettings, env_prefix("gateway")),
        (StateSettings, env_prefix("state")),
    ]
    for cls, prefix in tables:
        for key, var, _type in describe(cls, prefix=prefix):
            assert f"`{var}`" in gateway_doc, f"{var} ({key}) is not in docs/gateway.md"
    for adapter_id, spec in BUNDLED_SETTINGS.items():
        doc = gateway_doc if adapter_id == "echo" else (DOCS / "migrations" / f"{adapter_id}.md").read_text()
        for key, var, _type in describe(import_object(spec, key=adapter_id), prefix=env_prefix(adapter_id)):
            if key not in AdapterSettings.model_fields:  # enabled/mode: CHATSTATE_<ID>_ENABLED in gateway.md
                assert f"`{var}`" in doc, f"{var} ({key}) is not documented for {adapter_id}"
    assert "`CHATSTATE_<ID>_ENABLED`" in gateway_doc and "`CHATSTATE_<ID>_MODE`" in gateway_doc


@pytest.mark.parametrize(
    ("toml", "env", "line"),
    [
        # a secret pasted as blanks: pydantic's "should match pattern '\S'" said neither what nor how
        (
            "[adapters.slack]\n",
            {"CHATSTATE_SLACK_SIGNING_SECRET": "   ", "CHATSTATE_SLACK_BOT_TOKEN": "xoxb-token-value"},
            "adapters.slack.signing_secret: must not be empty or blank (from $CHATSTATE_SLACK_SIGNING_SECRET)",
        ),
        ('[adapters.echo]\nsecret = ""\n', {}, "adapters.echo.secret: must not be empty or blank"),
        # a homeserver without its scheme passed --check-only and failed at start with
        # aiohttp's NonHttpUrlClientError (exit 1) or InvalidUrlClientError (exit 2)
        (
            '[adapters.matrix]\nhomeserver = "matrix.example.org"\napprovers = ["@you:example.org"]\n',
            {"CHATSTATE_MATRIX_ACCESS_TOKEN": "syt_token_value"},
            "adapters.matrix.homeserver: must be a URL starting with https:// (or http://), e.g. https://matrix.example.org",
        ),
        (
            '[adapters.matrix]\nhomeserver = "127.0.0.1:8008"\napprovers = ["@you:example.org"]\n',
            {"CHATSTATE_MATRIX_ACCESS_TOKEN": "syt_token_value"},
            "adapters.matrix.homeserver: must be a URL starting with https://",
        ),
        # a token of the wrong kind: xoxp- made the bot post as the installing user, xapp- failed at
        # start with Slack's not_allowed_token_type and no hint of the fix
        (
            "[adapters.slack]\n",
            {"CHATSTATE_SLACK_SIGNING_SECRET": "slack-signing-value", "CHATSTATE_SLACK_BOT_TOKEN": "xoxp-user-value"},
            "adapters.slack.bot_token: this is a user token (xoxp-...), but the key takes a bot token (xoxb-...)",
        ),
        (
            '[adapters.slack]\ntransport = "socket"\n',
            {"CHATSTATE_SLACK_BOT_TOKEN": "xapp-1-app-value", "CHATSTATE_SLACK_APP_TOKEN": "xapp-1-app-value"},
            "adapters.slack.bot_token: this is an app-level token (xapp-...), but the key takes a bot token (xoxb-...)",
        ),
        (
            '[adapters.slack]\ntransport = "socket"\n',
            {"CHATSTATE_SLACK_BOT_TOKEN": "xoxb-bot-value", "CHATSTATE_SLACK_APP_TOKEN": "xoxb-bot-value"},
            "adapters.slack.app_token: this is a bot token (xoxb-...), but the key takes an app-level token (xapp-...)",
        ),
        (
            "[adapters.teams]\n",
            {"CHATSTATE_TEAMS_APP_ID": " ", "CHATSTATE_TEAMS_APP_PASSWORD": "app-password-value"},
            "adapters.teams.app_id: must not be empty or blank (from $CHATSTATE_TEAMS_APP_ID)",
        ),
        # pydantic's "String should match pattern '^(redis|rediss|...)://'" showed a regex
        (
            "",
            {"CHATSTATE_STATE_URL": "redis//:redis-password-value@127.0.0.1:6379/0"},
            "state.url: must start with redis://, rediss:// (TLS), unix://, redis+sentinel:// or redis+cluster://",
        ),
    ],
    ids=[
        "blank-secret",
        "empty-secret",
        "homeserver-no-scheme",
        "homeserver-host-port",
        "user-token-as-bot-token",
        "app-token-as-bot-token",
        "bot-token-as-app-token",
        "blank-teams-app-id",
        "state-url-scheme",
    ],
)
async def test_check_only_names_a_blank_secret_a_token_of_the_wrong_kind_and_a_bad_homeserver(
    tmp_path: Path, toml: str, env: dict[str, str], line: str
) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(toml)
    env = {**os.environ, **env}
    result = await run_gateway_cli(
        "start", "--config", str(path), "--state-dir", str(tmp_path / "s"), "--check-only", env=env
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"gateway: config error: {line}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not any(value in result.stderr for value in ("syt_token_value", "-value"))  # no secret shown


def test_a_homeserver_url_loses_its_trailing_slash() -> None:
    matrix_type = import_object(BUNDLED_SETTINGS["matrix"], key="matrix")
    table = {"homeserver": " https://matrix.example.org/ ", "access_token": "t", "approvers": ["@a:b"]}
    assert matrix_type.from_table(table, env={}).homeserver == "https://matrix.example.org"
