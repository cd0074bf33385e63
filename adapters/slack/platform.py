"""Slack's wire, and nothing else: verify an inbound request, parse an event, call the Web API,
all with slack-sdk as its docs say (`SignatureVerifier`, `AsyncWebClient(base_url=...)`), so a
test swaps only the far end (the simulator's URL). No state lives here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from chatstate.gateway.sdk import CredentialRefused, Refused, ingress

MESSAGE_EVENTS = ("app_mention", "message")  # the event types the bot may answer
REPLY_METADATA_TYPE = "chatstate_reply"  # message metadata on each reply: which event it answers
# chat.postMessage's errors that the same post meets on every retry (the rest, auth ones included, may pass later)
FINAL_ERRORS = {"channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text", "restricted_action"}
USER_SUBTYPES = ("thread_broadcast",)  # message subtypes that are still a user talking to us
# Web API retries (slack-sdk's own handlers), bounded: each caps the attempts it may add.
RATE_LIMIT_RETRIES = 2  # 429: wait Retry-After (+ <1 s jitter), then again
MAX_RETRY_AFTER_S = 20  # a longer Retry-After fails the call instead: Slack's event retry comes later
SERVER_ERROR_RETRIES = 2  # 500/503
CONNECTION_RETRIES = 2  # reset / disconnected
# Slack retries a failed event delivery three times (at once, after 1 min, after 5 min), then
# drops it: the third retry is its last attempt (X-Slack-Retry-Num / Socket Mode retry_attempt).
LAST_RETRY = 3
# Shapes of the ids that end up in state keys and Web API calls: Slack's ids are short words and
# its timestamps "<seconds>.<micro>"; anything else is a 400 before any side effect, so a key
# can never pass the store's 512-byte limit after the reply is posted.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TS_PATTERN = re.compile(r"[0-9]{1,12}\.[0-9]{1,8}")


class RequestVerifier:
    """Slack's v0 request signature (HMAC-SHA256) and 5-minute window: slack-sdk's `SignatureVerifier`."""

    def __init__(self, signing_secret: str) -> None:
        self._verifier = SignatureVerifier(signing_secret)

    def is_valid(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """True only for a correctly signed, fresh request. Junk in a header (a timestamp that is
        no number, a non-ASCII signature, on which `hmac.compare_digest` raises) is a wrong
        signature, never an error."""
        try:
            return self._verifier.is_valid_request(body, headers)
        except (ValueError, TypeError):
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
        """The thread this message belongs to (its `thread_ts`, or its own `ts` if top-level):
        participation is always keyed by this, never by a child message's `ts`."""
        return self.thread_ts or self.ts

    def mentions(self, user_id: str) -> bool:
        return f"<@{user_id}>" in self.text


def is_last_attempt(retry_num: object) -> bool:
    """Is this delivery Slack's last attempt at the event (its third retry)? A missing or
    malformed retry number counts as an earlier attempt."""
    text = str(retry_num) if isinstance(retry_num, int | str) else ""
    return text.isascii() and text.isdecimal() and int(text) >= LAST_RETRY


def parse_message(envelope: Mapping[str, Any]) -> SlackMessage | None:
    """Return the user message in an `event_callback`, or None for anything the bot ignores.

    Ignored: other envelope or event types, message subtypes (edits `message_changed`, deletes
    `message_deleted`, joins, `bot_message`) and anything posted by a bot, which includes our
    own replies coming back as `message` events. A `thread_broadcast` (a thread reply also
    shown in the channel) is a user's thread reply like any other. Raises ingress.BadInput
    (400) for an id or timestamp that is present but not Slack's shape.
    """
    event = envelope.get("event")
    if envelope.get("type") != "event_callback" or not isinstance(event, Mapping):
        return None
    subtype = event.get("subtype")
    if event.get("type") not in MESSAGE_EVENTS or (subtype and subtype not in USER_SUBTYPES) or event.get("bot_id"):
        return None
    ids: dict[str, Any] = {"team_id": envelope.get("team_id"), "event_id": envelope.get("event_id")}
    ids |= {name: event.get(name) for name in ("channel", "user", "ts")}
    if not all(isinstance(value, str) and value for value in ids.values()):
        return None
    optional: dict[str, Any] = {name: event.get(name) or None for name in ("thread_ts", "parent_user_id")}
    for name, value in (ids | optional).items():
        pattern = TS_PATTERN if name.endswith("ts") else ID_PATTERN
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            raise ingress.BadInput(f"event field {name} is not a Slack id")
    text, channel_type = event.get("text"), event.get("channel_type")
    return SlackMessage(
        event_type=event["type"],
        channel_type=channel_type if isinstance(channel_type, str) else None,
        text=text if isinstance(text, str) else "",
        **ids,
        **optional,
    )


@dataclass
class _Post:
    """The chat.postMessage in flight in this task, for the retry guard (a ContextVar: the
    client-wide retry handlers cannot see the JSON body of the call they retry)."""

    channel: str
    thread_ts: str
    event_id: str
    found_ts: str | None = None


_POSTING: ContextVar[_Post | None] = ContextVar("slack_posting", default=None)
FindReply = Callable[[_Post], Awaitable[str | None]]


class _CheckBeforeRetry(AsyncRetryHandler):
    """Mixin for the handlers of *ambiguous* failures (5xx, connection reset): Slack may have
    posted the message and lost only the answer, so before retrying chat.postMessage ask the
    thread whether our reply (found by its event_id metadata) is already there."""

    def __init__(self, find_reply: FindReply, *, max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.find_reply = find_reply

    async def _can_retry_async(self, **call: Any) -> bool:
        if not await super()._can_retry_async(**call):
            return False
        post = _POSTING.get()
        if post is None or not call["request"].url.endswith("/chat.postMessage"):
            return True
        post.found_ts = await self.find_reply(post)
        return post.found_ts is None


class CheckedServerErrorRetryHandler(_CheckBeforeRetry, AsyncServerErrorRetryHandler):
    """slack-sdk's 500/503 handler, checking the thread before posting again."""


class CheckedConnectionErrorRetryHandler(_CheckBeforeRetry, AsyncConnectionErrorRetryHandler):
    """slack-sdk's connection-reset handler, checking the thread before posting again."""


class BoundedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """slack-sdk's 429 handler (waits Retry-After), refusing waits over MAX_RETRY_AFTER_S."""

    async def _can_retry_async(self, **call: Any) -> bool:
        if not await super()._can_retry_async(**call):
            return False
        headers = call["response"].headers  # the 429 handler only retries a response
        retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), ["1"])
        try:
            return int(retry_after[0]) <= MAX_RETRY_AFTER_S
        except (TypeError, ValueError):
            return False


def sdk_logger() -> logging.Logger:
    """slack-sdk formats each call's debug lines, emitted or not, while its logger's own level is
    unset: this child carries the level logging has at start, so nothing is formatted needlessly."""
    parent = logging.getLogger("slack_sdk.web.async_base_client")
    logger = parent.getChild("chatstate")
    logger.setLevel(parent.getEffectiveLevel())
    return logger


class SlackApi:
    """The Web API calls the adapter makes, through one `AsyncWebClient` and one HTTP session
    (made on the running loop), with slack-sdk's retry handlers: 429 (Retry-After honoured),
    500/503 and connection resets, each bounded; the last two check the thread before posting
    again."""

    def __init__(self, *, token: str, base_url: str) -> None:
        self._session = aiohttp.ClientSession()
        self.client = AsyncWebClient(
            token=token,
            base_url=base_url,
            session=self._session,
            logger=sdk_logger(),
            retry_handlers=[
                BoundedRateLimitRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
                CheckedServerErrorRetryHandler(self._find_posted, max_retry_count=SERVER_ERROR_RETRIES),
                CheckedConnectionErrorRetryHandler(self._find_posted, max_retry_count=CONNECTION_RETRIES),
            ],
        )

    async def close(self) -> None:
        await self._session.close()

    async def auth_test(self) -> str:
        """The bot's user id, from `auth.test`. Raises CredentialRefused (Slack answered, e.g. invalid_auth)."""
        try:
            return str((await self.client.auth_test())["user_id"])
        except SlackApiError as exc:  # the token is invalid, revoked, or not a bot token
            raise CredentialRefused("slack", "bot_token", f"auth.test: {exc.response.get('error')}") from exc

    async def post_message(self, *, channel: str, text: str, thread_ts: str, event_id: str) -> str:
        """Post `text` into the thread `thread_ts` of `channel`; returns the new message's ts.

        The message carries metadata naming the `event_id` it answers, so a retry after a crash
        can find it (`find_reply`), and so can the retry guard after an ambiguous failure: when
        the call fails with a 5xx or no answer, the thread is checked and a reply found there
        counts as posted (no second post). Raises `Refused` for an error no retry helps, else
        slack_sdk.errors.SlackApiError (ok=false, or retries exhausted), aiohttp.ClientError.
        """
        metadata = {"event_type": REPLY_METADATA_TYPE, "event_payload": {"event_id": event_id}}
        post = _Post(channel, thread_ts, event_id)
        token = _POSTING.set(post)
        try:
            resp = await self.client.chat_postMessage(
                channel=channel, text=text, thread_ts=thread_ts, metadata=metadata
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            # 5xx or no answer: the call may have taken effect (429 or ok=false: it did not)
            ambiguous = exc.response.status_code >= 500 if isinstance(exc, SlackApiError) else True
            if post.found_ts is None and ambiguous:
                post.found_ts = await self._find_posted(post)
            if post.found_ts is not None:
                return post.found_ts
            data = exc.response.data if isinstance(exc, SlackApiError) and not ambiguous else None
            if isinstance(data, dict) and data.get("error") in FINAL_ERRORS:
                raise Refused(f"chat.postMessage: {data['error']}") from exc
            raise
        finally:
            _POSTING.reset(token)
        return str(resp["ts"])

    async def _find_posted(self, post: _Post) -> str | None:
        """The ts of our reply to `post.event_id` in its thread, or None (never raises: an
        unreadable thread counts as not posted, the caller's failure stands)."""
        token = _POSTING.set(None)  # the lookup is not the post: no guard for its own retries
        try:
            return await self.find_reply(channel=post.channel, thread_ts=post.thread_ts, event_id=post.event_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError):
            return None
        finally:
            _POSTING.reset(token)

    async def find_reply(
        self, *, channel: str, thread_ts: str, event_id: str, after_ts: str | None = None
    ) -> str | None:
        """The ts of our reply to `event_id` in the thread (posted after `after_ts`, default the
        root), or None. Only an event whose earlier attempt may have died between posting and
        its done mark, or a post that failed ambiguously, needs this. Raises as `post_message`."""
        resp = await self.client.conversations_replies(
            channel=channel, ts=thread_ts, oldest=after_ts or thread_ts, include_all_metadata=True, limit=200
        )
        for message in resp.get("messages") or []:
            meta = message.get("metadata") or {}
            if (
                meta.get("event_type") == REPLY_METADATA_TYPE
                and (meta.get("event_payload") or {}).get("event_id") == event_id
            ):
                return str(message.get("ts"))
        return None
