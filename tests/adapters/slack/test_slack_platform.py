"""The Slack wire: signature checks (against the simulator's independent v0 signer), event
parsing over the documented payload shapes in fixtures/slack/, and the config table."""

from __future__ import annotations

import json
import time

import pytest
from slack_helpers import load_fixture

from chatstate.adapters.slack.config import SlackSettings
from chatstate.adapters.slack.platform import RequestVerifier, parse_message
from chatstate.gateway.exits import ConfigError
from chatstate.gateway.sim.slack import sign

SECRET = "s3cret"


def headers(body: bytes, *, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sign(secret, stamp, body)}


def test_verifier_accepts_only_a_fresh_correct_signature() -> None:
    verifier = RequestVerifier(SECRET)
    body = json.dumps(load_fixture("app_mention")).encode()
    assert verifier.is_valid(body, headers(body))
    assert not verifier.is_valid(body, headers(body, secret="other"))
    assert not verifier.is_valid(body + b" ", headers(body))  # body changed after signing
    assert not verifier.is_valid(body, headers(body, ts=int(time.time()) - 6 * 60))  # stale
    assert not verifier.is_valid(body, {})
    assert not verifier.is_valid(body, {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"})


def test_parse_mention_and_thread_root() -> None:
    mention = parse_message(load_fixture("app_mention"))
    assert mention is not None
    assert (mention.team_id, mention.event_id, mention.event_type) == ("T0SIM", "Ev0FIXMENTION", "app_mention")
    assert mention.thread_ts is None and mention.thread_root == mention.ts == "1700000000.000100"
    assert mention.mentions("U0BOT")

    child = parse_message(load_fixture("message_in_thread"))
    assert child is not None
    assert child.thread_root == "1700000000.000100" != child.ts  # the root, never the child ts

    to_bot = parse_message(load_fixture("message_parent_user_id"))
    assert to_bot is not None and to_bot.parent_user_id == "U0BOT"


def test_retry_fixture_is_the_same_event() -> None:
    retry = load_fixture("retry")
    assert retry["headers"]["X-Slack-Retry-Num"] == "1"
    assert parse_message(retry["body"]) == parse_message(load_fixture("app_mention"))


@pytest.mark.parametrize(
    "change",
    [
        {"subtype": "message_changed"},
        {"subtype": "bot_message"},
        {"bot_id": "B0BOT"},
        {"type": "reaction_added"},
        {"user": None},
    ],
)
def test_parse_ignores_what_the_bot_must_not_answer(change: dict[str, object]) -> None:
    payload = load_fixture("message_in_thread")
    payload["event"].update(change)
    assert parse_message(payload) is None


def test_parse_ignores_other_envelopes() -> None:
    assert parse_message(load_fixture("url_verification")) is None


def test_settings_defaults_and_env_strings() -> None:
    s = SlackSettings.from_table({"signing_secret": "a", "bot_token": "b", "api_base_url": "http://x/api"})
    assert (s.thread_ttl_ms, s.thread_max_entries) == (24 * 3600 * 1000, 5_000)
    assert (s.event_ttl_ms, s.event_max_entries) == (3600 * 1000, 50_000)
    assert s.api_base_url == "http://x/api/" and s.require_mention and not s.require_explicit_mention
    env = SlackSettings.from_table(
        {"signing_secret": "a", "bot_token": "b"},
        env={"CHATSTATE_SLACK_THREAD_TTL_MS": "1500", "CHATSTATE_SLACK_REQUIRE_EXPLICIT_MENTION": "true"},
    )
    assert env.thread_ttl_ms == 1500 and env.require_explicit_mention


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"bot_token": "b"}, "signing_secret"),
        ({"signing_secret": "a"}, "bot_token"),
        ({"signing_secret": "a", "bot_token": "b", "thread_ttl_ms": 0}, "thread_ttl_ms"),
        ({"signing_secret": "a", "bot_token": "b", "require_mention": "maybe"}, "require_mention"),
    ],
)
def test_settings_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"adapters.slack.{key}"):
        SlackSettings.from_table(table)
