"""The platform module: Ed25519 verification, parsing the documented payloads, response bodies."""

from __future__ import annotations

import json

import discord
import pytest
from nacl.signing import SigningKey

from chatstate.adapters.discord import handlers
from chatstate.adapters.discord import platform as wire
from chatstate.adapters.discord.config import DiscordSettings
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sim.discord import fixture

KEY = SigningKey(bytes(range(32)))
VERIFY = wire.load_verify_key(KEY.verify_key.encode().hex())


def signed(body: bytes, timestamp: str = "1700000000") -> dict[str, str | None]:
    return {"signature": KEY.sign(timestamp.encode() + body).signature.hex(), "timestamp": timestamp}


def test_verify_accepts_only_the_signature_of_timestamp_plus_body() -> None:
    body = json.dumps(fixture("ping")).encode()
    good = signed(body)
    assert wire.verify(VERIFY, body=body, **good)
    assert not wire.verify(VERIFY, body=body + b" ", **good)
    assert not wire.verify(VERIFY, body=body, signature=good["signature"], timestamp="1700000001")
    other = SigningKey(bytes(range(1, 33)))
    assert not wire.verify(
        VERIFY, body=body, signature=other.sign(b"1700000000" + body).signature.hex(), timestamp="1700000000"
    )
    for signature in (None, "", "not hex", "ab" * 10):
        assert not wire.verify(VERIFY, body=body, signature=signature, timestamp="1700000000")
    assert not wire.verify(VERIFY, body=body, signature=good["signature"], timestamp=None)


@pytest.mark.parametrize("bad", ["", "xyz", "ab" * 31, "ab" * 33])
def test_config_rejects_a_public_key_that_is_not_32_hex_bytes(bad: str) -> None:
    with pytest.raises((ValueError, ConfigError), match="adapters.discord.public_key"):
        DiscordSettings.from_table({"public_key": bad, "bot_token": "t"}).verify_key()


def test_config_takes_integers_from_environment_variables() -> None:
    config = DiscordSettings.from_table(
        {"public_key": KEY.verify_key.encode().hex(), "bot_token": "t", "max_entries": 7},
        env={"CHATSTATE_DISCORD_TTL_MS": "2500"},
    )
    assert (config.ttl_ms, config.max_entries, config.api_base_url) == (2500, 7, discord.http.Route.BASE)
    with pytest.raises(ConfigError, match="adapters.discord.ttl_ms"):
        DiscordSettings.from_table({"public_key": KEY.verify_key.encode().hex(), "bot_token": "t", "ttl_ms": 0})
    with pytest.raises(ConfigError, match="adapters.discord.ttl_ms"):  # TOML has types: no strings for integers
        DiscordSettings.from_table({"public_key": KEY.verify_key.encode().hex(), "bot_token": "t", "ttl_ms": "2500"})
    with pytest.raises(ConfigError, match="adapters.discord.bot_token"):
        DiscordSettings.from_table({"public_key": KEY.verify_key.encode().hex()})


def test_parse_reads_every_fixture() -> None:
    ping = wire.parse(json.dumps(fixture("ping")).encode())
    assert ping.type is discord.InteractionType.ping

    command = wire.parse(json.dumps(fixture("application_command")).encode())
    assert command.type is discord.InteractionType.application_command
    assert (command.command, command.options, command.user_id) == (
        "panel",
        {"restrict_to": "1100000000000000002"},
        "1100000000000000002",
    )

    button = wire.parse(json.dumps(fixture("component_button")).encode())
    assert button.type is discord.InteractionType.component
    assert button.component_type is discord.ComponentType.button
    assert (button.custom_id, button.channel_id) == ("approve:0000000000000000", "1010000000000000001")

    select = wire.parse(json.dumps(fixture("component_select")).encode())
    assert select.component_type is discord.ComponentType.string_select
    assert select.values == ["green"]

    submit = wire.parse(json.dumps(fixture("modal_submit")).encode())
    assert submit.type is discord.InteractionType.modal_submit
    assert submit.fields == {"comment": "Ship it"}


def test_parse_reads_label_wrapped_modal_inputs_and_dm_users() -> None:
    payload = fixture("modal_submit")
    payload["data"]["components"] = [
        {"type": 18, "id": 1, "component": {"type": 4, "id": 2, "custom_id": "comment", "value": "via label"}}
    ]
    payload["user"] = payload.pop("member")["user"]  # a DM carries `user`, not `member`
    parsed = wire.parse(json.dumps(payload).encode())
    assert (parsed.fields, parsed.user_id) == ({"comment": "via label"}, "1100000000000000002")


def test_parse_reads_a_null_optional_field_as_absent() -> None:
    """Optional fields sent as null (options, values, a text input's value) read as absent: a
    400 would leave the user's command or click unanswered, and a null comment is not "None"."""
    command = fixture("application_command")
    command["data"]["options"] = None
    assert wire.parse(json.dumps(command).encode()).options == {}
    select = fixture("component_select")
    select["data"]["values"] = None
    assert wire.parse(json.dumps(select).encode()).values == []
    submit = fixture("modal_submit")
    submit["data"]["components"][0]["components"][0]["value"] = None
    assert wire.parse(json.dumps(submit).encode()).fields == {"comment": ""}


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"type": 99}', b'{"type": 3}', b'{"type": 3, "user": {"id": "1"}, "data": {}}']
)
def test_parse_rejects_what_discord_would_not_send(body: bytes) -> None:
    with pytest.raises(wire.BadRequest):
        wire.parse(body)


async def test_responses_use_discord_types_and_flags() -> None:
    assert wire.pong() == {"type": 1}
    ephemeral = wire.message("hi", ephemeral=True)
    assert ephemeral["type"] == discord.InteractionResponseType.channel_message.value
    assert discord.MessageFlags._from_value(ephemeral["data"]["flags"]).ephemeral
    assert ephemeral["data"]["allowed_mentions"] == {"parse": []}
    assert "flags" not in wire.message("hi")["data"]
    assert wire.update("x")["type"] == discord.InteractionResponseType.message_update.value
    panel = handlers.build_panel(allowed_user_ids=[])
    modal_id, entry = next(iter(panel.modals.items()))
    opened = wire.modal(handlers.build_modal(modal_id, entry))
    assert opened["type"] == discord.InteractionResponseType.modal.value
    assert opened["data"]["custom_id"] == modal_id
