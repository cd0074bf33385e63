"""fixtures/gateway.example.toml is a config a person can start from: the gateway accepts it and
every adapter's own parser accepts its table, so no key in it is a guess."""

from __future__ import annotations

import re
from pathlib import Path

from chatstate.adapters.discord.config import DiscordSettings
from chatstate.adapters.matrix.config import MatrixSettings
from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.teams.auth import build_authentication
from chatstate.adapters.teams.config import TeamsSettings
from chatstate.adapters.teams.state import spec_from_config as teams_spec
from chatstate.gateway.config import load_config
from chatstate.gateway.registry import BUNDLED_SETTINGS, import_object

EXAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "gateway.example.toml"


def test_example_config_loads_and_every_adapter_accepts_its_table(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, env={}, state_dir=tmp_path)
    tables = {name: dict(a.table) for name, a in config.adapters.items()}
    assert set(tables) == {"echo", "slack", "discord", "teams", "matrix"}

    slack = SlackSettings.from_table(tables["slack"])
    assert (slack.thread_ttl_ms, slack.thread_max_entries) == (24 * 3600 * 1000, 5_000)
    assert (slack.event_ttl_ms, slack.event_max_entries) == (3600 * 1000, 50_000)
    discord = DiscordSettings.from_table(tables["discord"])
    assert (discord.ttl_ms, discord.max_entries) == (30 * 60 * 1000, 500)
    discord.verify_key()
    teams = TeamsSettings.from_table(tables["teams"])
    build_authentication(teams)
    spec = teams_spec(teams)
    assert (spec.namespace, spec.ttl_ms, spec.max_entries) == ("msteams.sent-messages", 24 * 3600 * 1000, 1_000)
    matrix = MatrixSettings.from_table(tables["matrix"])
    assert matrix.approvers == ("@alice:example.org",)


def test_the_example_shows_every_key_of_every_bundled_adapter() -> None:
    """Unknown keys are refused by each settings type; the other way round, every key an adapter
    has appears in the example (set or commented out), so the file documents them all."""
    text = EXAMPLE.read_text()
    for adapter_id, spec in BUNDLED_SETTINGS.items():
        settings_type = import_object(spec, key=adapter_id)
        for key in settings_type.model_fields:
            assert re.search(rf"^#? ?{key} = ", text, re.M), (
                f"[adapters.{adapter_id}] {key} is missing from the example"
            )
