"""The Discord bot's REST calls (the outbound half of the wire, split from platform.py for size):
post a message, answer an interaction through its callback (Gateway transport), edit or follow
up an answer through the interaction webhook, with Discord's rate limits honoured. Why aiohttp and not discord.py's `HTTPClient`: platform.py's docstring.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import discord
from discord.http import handle_message_parameters

from chatstate.adapters.discord.platform import Interaction

REQUEST_TIMEOUT_S = 10.0  # a send that takes longer fails; its entries are forgotten
RESPONSE_DEADLINE_S = 3.0  # Discord takes an interaction's initial response this long after it arrives
RATE_LIMIT_RETRIES = 3  # a call answered 429 is tried again at most this often
MAX_RETRY_AFTER_S = 10.0  # a longer `retry_after` fails the call instead of waiting
GONE_CODES = {10062: "unknown interaction", 50027: "invalid webhook token", 40060: "already acknowledged"}


class RestError(Exception):
    """Discord refused a REST call or could not be reached."""


class InteractionGone(RestError):
    """The interaction can take no (more) answers: its token expired or was never valid
    (10062 Unknown interaction, 50027 Invalid Webhook Token), or it was already answered
    (40060). Nothing to retry; `code` says which."""

    def __init__(self, code: int) -> None:
        super().__init__(f"interaction gone: {code} {GONE_CODES.get(code, '')}".strip())
        self.code = code


class DiscordRest:
    """One aiohttp session for the bot's REST calls; open in `start`, close in `stop`."""

    def __init__(self, *, api_base: str, bot_token: str) -> None:
        self.api_base = api_base.rstrip("/")
        self._headers = {
            "Authorization": f"Bot {bot_token}",
            "User-Agent": f"DiscordBot (https://github.com/Rapptz/discord.py {discord.__version__}) chatstate",
        }
        self._session: aiohttp.ClientSession | None = None
        # per-route buckets from X-RateLimit-*: route -> (remaining, monotonic time of reset)
        self._buckets: dict[str, tuple[int, float]] = {}

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_message(self, channel_id: str, *, content: str, view: discord.ui.View) -> dict[str, Any]:
        """POST /channels/{channel_id}/messages; returns Discord's message object.

        Raises RestError for a non-2xx answer or a connection failure.
        """
        with handle_message_parameters(
            content=content, view=view, allowed_mentions=discord.AllowedMentions.none()
        ) as params:
            payload = params.payload
        return await self._call(
            "POST",
            f"/channels/{channel_id}/messages",
            payload,
            route=f"POST /channels/{channel_id}/messages",
            what="create message",
        )

    async def callback(self, it: Interaction, response: dict[str, Any], *, received_at: float) -> None:
        """POST the initial response of `it` (received at monotonic `received_at`) to
        `/interactions/{id}/{token}/callback`: how the Gateway transport answers what the HTTP
        transport answers in its response body. A 429 is retried after its `retry_after` while
        that still lands within RESPONSE_DEADLINE_S of `received_at`; later, Discord has
        failed the interaction anyway.

        Raises InteractionGone (10062 past the deadline, 40060 answered already) and RestError.
        """
        await self._call(
            "POST",
            f"/interactions/{it.id}/{it.token}/callback",
            response,
            route=f"callback {it.id}",
            what="interaction callback",
            deadline=received_at + RESPONSE_DEADLINE_S,
        )

    async def edit_original(self, it: Interaction, data: dict[str, Any]) -> dict[str, Any]:
        """PATCH the deferred (or original) response of `it` through its webhook.

        Raises InteractionGone (token expired / unknown / already answered) and RestError.
        """
        return await self._call(
            "PATCH",
            f"/webhooks/{it.application_id}/{it.token}/messages/@original",
            data,
            route=f"webhook {it.application_id}",
            what="edit original",
        )

    async def followup(self, it: Interaction, data: dict[str, Any]) -> dict[str, Any]:
        """POST a follow-up message to `it`'s webhook; raises as `edit_original`."""
        return await self._call(
            "POST",
            f"/webhooks/{it.application_id}/{it.token}",
            data,
            route=f"webhook {it.application_id}",
            what="follow-up",
        )

    async def _call(
        self, method: str, path: str, payload: Any, *, route: str, what: str, deadline: float | None = None
    ) -> dict[str, Any]:
        """One REST call with Discord's rate limits honoured: wait out an exhausted bucket
        (`X-RateLimit-Remaining: 0` until `Reset-After`), and on 429 wait `retry_after` (the JSON
        body, else Retry-After) and try again, at most RATE_LIMIT_RETRIES times and never
        longer than MAX_RETRY_AFTER_S a wait, nor past `deadline` (monotonic), if given.
        Raises InteractionGone and RestError."""
        assert self._session is not None, "open() first"
        url = self.api_base + path
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            await self._wait_for_bucket(route, deadline)
            try:
                async with self._session.request(method, url, json=payload) as resp:
                    self._remember_bucket(route, resp.headers)
                    body = await resp.json() if resp.content_type == "application/json" else {}
                    if resp.status == 429 and attempt < RATE_LIMIT_RETRIES:
                        wait = _retry_after(body, resp.headers)
                        if wait is not None and _in_time(wait, deadline):
                            await asyncio.sleep(wait)
                            continue
                    if resp.status >= 300:
                        code = body.get("code") if isinstance(body, dict) else None
                        if code in GONE_CODES:
                            raise InteractionGone(int(code))
                        raise RestError(f"{what}: HTTP {resp.status}")
                    return dict(body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RestError(f"{what}: {type(exc).__name__}") from None
        raise RestError(f"{what}: still rate limited after {RATE_LIMIT_RETRIES} retries")

    async def _wait_for_bucket(self, route: str, deadline: float | None) -> None:
        remaining, reset_at = self._buckets.get(route, (1, 0.0))
        wait = reset_at - time.monotonic()
        if remaining <= 0 and 0 < wait <= MAX_RETRY_AFTER_S and _in_time(wait, deadline):
            await asyncio.sleep(wait)

    def _remember_bucket(self, route: str, headers: Any) -> None:
        try:
            remaining = int(headers["X-RateLimit-Remaining"])
            reset_after = float(headers["X-RateLimit-Reset-After"])
        except (KeyError, ValueError):
            return
        self._buckets[route] = (remaining, time.monotonic() + reset_after)


def _retry_after(body: Any, headers: Any) -> float | None:
    """Seconds a 429 asks to wait (JSON `retry_after`, else Retry-After), or None if too long."""
    value = body.get("retry_after") if isinstance(body, dict) else None
    if value is None:
        value = headers.get("Retry-After")
    try:
        wait = float(value)
    except (TypeError, ValueError):
        return None
    return wait if 0 <= wait <= MAX_RETRY_AFTER_S else None


def _in_time(wait_s: float, deadline: float | None) -> bool:
    """Whether a call retried after `wait_s` still lands before `deadline` (monotonic; None: no limit)."""
    return deadline is None or time.monotonic() + wait_s < deadline
