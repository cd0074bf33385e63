"""The mention policy alone: no store, no HTTP (persistence is tested elsewhere)."""

from __future__ import annotations

import pytest

from chatstate.adapters.slack.handlers import MentionPolicy
from chatstate.adapters.slack.platform import SlackMessage

BOT = "U0BOT"


def msg(
    text: str = "hi",
    *,
    thread_ts: str | None = None,
    parent: str | None = None,
    user: str = "U0ALICE",
    event_type: str = "message",
    channel_type: str | None = "channel",
) -> SlackMessage:
    return SlackMessage("T1", "Ev1", event_type, "C1", channel_type, user, text, "2.000", thread_ts, parent)


@pytest.mark.parametrize(
    ("policy", "message", "participated", "expected"),
    [
        (
            MentionPolicy(),
            msg(f"<@{BOT}> hi", event_type="app_mention", channel_type=None),
            False,
            (True, "explicit_mention"),
        ),
        # an app_mention is Slack saying the bot was mentioned: a null text or the legacy
        # `<@U..|name>` form does not make it a message with no mention
        (MentionPolicy(), msg("", event_type="app_mention", channel_type=None), False, (True, "explicit_mention")),
        (MentionPolicy(), msg(f"<@{BOT}|bot> hi", event_type="app_mention"), False, (True, "explicit_mention")),
        (MentionPolicy(), msg(f"<@{BOT}> hi"), False, (False, "left_to_app_mention")),
        (MentionPolicy(), msg(f"<@{BOT}> hi", channel_type="im"), False, (True, "explicit_mention")),
        (MentionPolicy(), msg("hi", channel_type="im"), False, (True, "direct_message")),
        (MentionPolicy(), msg("hi"), True, (False, "no_mention")),  # top level: no thread
        (MentionPolicy(), msg("hi", thread_ts="1.000"), False, (False, "no_mention")),
        (MentionPolicy(), msg("hi", thread_ts="1.000"), True, (True, "bot_thread_participant")),
        (MentionPolicy(), msg("hi", thread_ts="1.000", parent=BOT), False, (True, "reply_to_bot")),
        (MentionPolicy(require_explicit_mention=True), msg("hi", thread_ts="1.000"), True, (False, "no_mention")),
        (
            MentionPolicy(require_explicit_mention=True),
            msg("hi", thread_ts="1.000", parent=BOT),
            False,
            (False, "no_mention"),
        ),
        (
            MentionPolicy(require_explicit_mention=True),
            msg(f"<@{BOT}> x", event_type="app_mention"),
            False,
            (True, "explicit_mention"),
        ),
        (MentionPolicy(require_mention=False), msg("hi"), False, (True, "mention_not_required")),
        (MentionPolicy(), msg(f"<@{BOT}> me", user=BOT, event_type="app_mention"), True, (False, "own_message")),
    ],
)
def test_decide(policy: MentionPolicy, message: SlackMessage, participated: bool, expected: tuple[bool, str]) -> None:
    assert policy.decide(message, BOT, participated=participated) == expected


def test_participation_is_read_only_when_it_can_change_the_answer() -> None:
    policy, strict = MentionPolicy(), MentionPolicy(require_explicit_mention=True)
    assert policy.needs_participation(msg("hi", thread_ts="1.000"), BOT)
    assert not policy.needs_participation(msg("hi"), BOT)  # top-level: no thread to look up
    assert not policy.needs_participation(msg("hi", thread_ts="1.000", parent=BOT), BOT)
    assert not policy.needs_participation(msg(f"<@{BOT}> x", thread_ts="1.000", event_type="app_mention"), BOT)
    assert not strict.needs_participation(msg("hi", thread_ts="1.000"), BOT)
