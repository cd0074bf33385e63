"""Slack's wire, and nothing else: verify an inbound request, parse an event, call the Web API.

Everything here is slack-sdk used as its docs say: `SignatureVerifier` for the v0 request
signature and `AsyncWebClient(base_url=...)` for `auth.test` and `chat.postMessage`, so the
only thing a test swaps is the far end (the simulator's URL). No state lives here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from chatstate.gateway import ingress

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
RETRY_NUM_HEADER = "X-Slack-Retry-Num"
RETRY_REASON_HEADER = "X-Slack-Retry-Reason"
MESSAGE_EVENTS = ("app_mention", "message")  # the event types the bot may answer
REPLY_METADATA_TYPE = "chatstate_reply"  # message metadata on each reply: which event it answers
# Shapes of the ids that end up in state keys and Web API calls (issue 15): Slack's ids are short
# uppercase words and its timestamps "<seconds>.<micro>"; anything else is a 400 before any
# side effect, so a key can never pass the store's 512-byte limit after the reply is posted.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TS_PATTERN = re.compile(r"[0-9]{1,12}\.[0-9]{1,8}")


class RequestVerifier:
    """Check Slack's `X-Slack-Signature` (v0, HMAC-SHA256) and the 5-minute timestamp window."""

    def __init__(self, signing_secret: str) -> None:
        self._verifier = SignatureVerifier(signing_secret)

    def is_valid(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """True only for a correctly signed, fresh request; never raises on junk headers.

        A signature or timestamp that is not short printable ASCII is wrong before it reaches
        `hmac.compare_digest` (which raises TypeError for a non-ASCII str, issue 15).
        """
        signature = ingress.credential(headers, SIGNATURE_HEADER)
        timestamp = ingress.credential(headers, TIMESTAMP_HEADER)
        if signature is None or timestamp is None:
            return False
        try:
            return self._verifier.is_valid(body, timestamp, signature)
        except (ValueError, TypeError, UnicodeDecodeError):  # a non-numeric timestamp, a non-UTF-8 body
            return False


@dataclass(frozen=True)
class SlackMessage:
    """One user message the bot may answer, from an `event_callback` envelope."""

    team_id: str
    event_id: str
    event_type: str  # "app_mention" or "message"
    channel: str
    channel_type: str | None  # "channel", "group", "im", "mpim"; app_mention has none
    user: str
    text: str
    ts: str
    thread_ts: str | None = None
    parent_user_id: str | None = None

    @property
    def thread_root(self) -> str:
        """The thread this message belongs to: its `thread_ts`, or its own `ts` if top-level.

        Participation is always keyed by this, never by a child message's `ts`.
        """
        return self.thread_ts or self.ts

    def mentions(self, user_id: str) -> bool:
        return f"<@{user_id}>" in self.text


def parse_message(envelope: Mapping[str, Any]) -> SlackMessage | None:
    """Return the user message in an `event_callback`, or None for anything the bot ignores.

    Ignored: other envelope or event types, message subtypes (edits, deletes, joins, bot
    messages) and anything posted by a bot, which includes our own replies. Raises
    ingress.BadInput (400) for an id or timestamp that is present but not Slack's shape.
    """
    event = envelope.get("event")
    if envelope.get("type") != "event_callback" or not isinstance(event, Mapping):
        return None
    if event.get("type") not in MESSAGE_EVENTS or event.get("subtype") or event.get("bot_id"):
        return None
    fields = (envelope.get("team_id"), envelope.get("event_id"), event.get("channel"), event.get("user"), event.get("ts"))
    if not all(isinstance(f, str) and f for f in fields):
        return None
    team_id, event_id, channel, user, ts = cast("tuple[str, str, str, str, str]", fields)  # checked just above
    thread_ts = event.get("thread_ts") or None
    parent_user_id = event.get("parent_user_id") or None
    for name, value, pattern in (
        ("team_id", team_id, ID_PATTERN), ("event_id", event_id, ID_PATTERN), ("channel", channel, ID_PATTERN),
        ("user", user, ID_PATTERN), ("ts", ts, TS_PATTERN), ("thread_ts", thread_ts, TS_PATTERN),
        ("parent_user_id", parent_user_id, ID_PATTERN),
    ):
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            raise ingress.BadInput(f"event field {name} is not a Slack id")
    text = event.get("text")
    channel_type = event.get("channel_type")
    return SlackMessage(
        team_id=team_id,
        event_id=event_id,
        event_type=event["type"],
        channel=channel,
        channel_type=channel_type if isinstance(channel_type, str) else None,
        user=user,
        text=text if isinstance(text, str) else "",
        ts=ts,
        thread_ts=thread_ts,
        parent_user_id=parent_user_id,
    )


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot is, from `auth.test`."""

    user_id: str
    team_id: str
    bot_id: str | None


class SlackApi:
    """The Web API calls the adapter makes, through one `AsyncWebClient` and one HTTP session."""

    def __init__(self, *, token: str, base_url: str) -> None:
        self._token = token
        self._base_url = base_url
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()
        self._client = AsyncWebClient(token=self._token, base_url=self._base_url, session=self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._client = None

    @property
    def client(self) -> AsyncWebClient:
        if self._client is None:
            raise RuntimeError("SlackApi.open() first")
        return self._client

    async def auth_test(self) -> BotIdentity:
        """Call `auth.test`. Raises slack_sdk.errors.SlackApiError (e.g. invalid_auth)."""
        resp = await self.client.auth_test()
        return BotIdentity(user_id=resp["user_id"], team_id=resp["team_id"], bot_id=resp.get("bot_id"))

    async def post_message(self, *, channel: str, text: str, thread_ts: str, event_id: str) -> str:
        """Post `text` into the thread `thread_ts` of `channel`; returns the new message's ts.

        The message carries metadata naming the `event_id` it answers, so a retry after a crash
        can find it (`answered`). Raises slack_sdk.errors.SlackApiError (ok=false) and
        aiohttp.ClientError (network).
        """
        metadata = {"event_type": REPLY_METADATA_TYPE, "event_payload": {"event_id": event_id}}
        resp = await self.client.chat_postMessage(channel=channel, text=text, thread_ts=thread_ts, metadata=metadata)
        return str(resp["ts"])

    async def answered(self, *, channel: str, thread_ts: str, after_ts: str, event_id: str) -> bool:
        """Whether the thread already holds our reply to `event_id` (posted after `after_ts`).

        Only a retried event whose earlier attempt may have died between posting and marking
        the event done needs this. Raises as `post_message`.
        """
        resp = await self.client.conversations_replies(
            channel=channel, ts=thread_ts, oldest=after_ts, include_all_metadata=True, limit=200
        )
        for message in resp.get("messages") or []:
            meta = message.get("metadata") or {}
            if meta.get("event_type") == REPLY_METADATA_TYPE and (meta.get("event_payload") or {}).get("event_id") == event_id:
                return True
        return False
