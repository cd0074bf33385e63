"""The bot's REST calls to Discord (create message), against a configurable API base URL.

Why aiohttp and not discord.py's `HTTPClient`: its base URL is `discord.http.Route.BASE`, a
class variable shared by the whole process, and `HTTPClient.static_login` always calls
`GET /users/@me` on it; pointing one bot at a simulator would repoint every discord.py user in
the gateway. So the request is ours (aiohttp, `Authorization: Bot <token>`), while the body is
discord.py's: `handle_message_parameters` serializes content, allowed mentions and the
`discord.ui.View` exactly as `Messageable.send` would.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import discord
from discord.http import Route, handle_message_parameters

DEFAULT_API_BASE = Route.BASE  # https://discord.com/api/v10
REQUEST_TIMEOUT_S = 10.0  # a send that takes longer fails; its entries are forgotten


class RestError(Exception):
    """Discord refused a REST call or could not be reached."""


class DiscordRest:
    """One aiohttp session for the bot's REST calls; open in `start`, close in `stop`."""

    def __init__(self, *, api_base: str, bot_token: str) -> None:
        self.api_base = api_base.rstrip("/")
        self._headers = {
            "Authorization": f"Bot {bot_token}",
            "User-Agent": f"DiscordBot (https://github.com/Rapptz/discord.py {discord.__version__}) chatstate",
        }
        self._session: aiohttp.ClientSession | None = None

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
        assert self._session is not None, "open() first"
        with handle_message_parameters(
            content=content, view=view, allowed_mentions=discord.AllowedMentions.none()
        ) as params:
            payload = params.payload
        url = f"{self.api_base}/channels/{channel_id}/messages"
        try:
            async with self._session.post(url, json=payload) as resp:
                if resp.status >= 300:
                    raise RestError(f"create message: HTTP {resp.status}")
                return dict(await resp.json())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RestError(f"create message: {type(exc).__name__}") from None
