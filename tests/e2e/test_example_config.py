"""fixtures/gateway.example.toml is a config a person can start from: the gateway accepts it and
every adapter's own parser accepts its table, so no key in it is a guess."""

from __future__ import annotations

from pathlib import Path

from chatstate.adapters.discord.config import DiscordConfig
from chatstate.adapters.matrix.config import parse_config as matrix_config
from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.teams.auth import build_authentication
from chatstate.adapters.teams.state import spec_from_config as teams_spec
from chatstate.gateway.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "gateway.example.toml"


def test_example_config_loads_and_every_adapter_accepts_its_table(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, env={}, state_dir=tmp_path)
    tables = {name: dict(a.table) for name, a in config.adapters.items()}
    assert set(tables) == {"echo", "slack", "discord", "teams", "matrix"}

    slack = SlackSettings.from_config(tables["slack"])
    assert (slack.thread_ttl_ms, slack.thread_max_entries) == (24 * 3600 * 1000, 5_000)
    assert (slack.event_ttl_ms, slack.event_max_entries) == (3600 * 1000, 50_000)
    discord = DiscordConfig.from_table(tables["discord"])
    assert (discord.ttl_ms, discord.max_entries) == (30 * 60 * 1000, 500)
    build_authentication(tables["teams"])
    spec = teams_spec(tables["teams"])
    assert (spec.namespace, spec.ttl_ms, spec.max_entries) == ("msteams.sent-messages", 24 * 3600 * 1000, 1_000)
    matrix = matrix_config(tables["matrix"])
    assert matrix.approvers == ("@alice:example.org",)


def test_every_key_in_the_example_is_one_an_adapter_reads() -> None:
    """A key no code reads would be silently ignored: each must appear in its adapter's source."""
    config = load_config(EXAMPLE, env={})
    root = EXAMPLE.parents[1]
    sources = {
        "slack": "adapters/slack/config.py",
        "discord": "adapters/discord/config.py",
        "teams": "adapters/teams",
        "matrix": "adapters/matrix/config.py",
        "echo": "gateway/echo.py",
    }
    for name, where in sources.items():
        path = root / where
        text = "".join(p.read_text() for p in (sorted(path.glob("*.py")) if path.is_dir() else [path]))
        for key in config.adapters[name].table:
            if key in ("enabled", "mode"):
                continue
            assert f'"{key}"' in text, f"[adapters.{name}] {key} is not read by {where}"
