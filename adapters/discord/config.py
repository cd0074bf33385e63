"""The `[adapters.discord]` table: one annotated field per key, with its default and why; each is also
`CHATSTATE_DISCORD_<KEY>`, typed as in TOML (gateway.settings; docs/migrations/discord.md lists them)."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from nacl.signing import VerifyKey
from pydantic import Field

from chatstate.adapters.discord.platform import DEFAULT_API_BASE, load_verify_key
from chatstate.gateway.sdk import AdapterSettings, Text

DEFAULT_PANELS_PER_USER = 10  # x 4 components = 40 of the registry's 500: no one user can fill it
Positive = Annotated[int, Field(ge=1)]


class DiscordSettings(AdapterSettings):
    """Everything the Discord adapter reads from its config table."""

    adapter_id = "discord"

    public_key: Text | None = None  # 64 hex, verifies interactions; required for transport = "http"
    bot_token: Text  # `Authorization: Bot <token>` for REST and the Gateway; secret
    api_base_url: Text = DEFAULT_API_BASE  # a simulator's in tests
    ttl_ms: Positive | None = None  # registry entry lifetime; None = 30 min
    max_entries: Positive | None = None  # entries kept per registry; None = 500
    timestamp_window_s: Positive = 300  # a signed interaction older (or newer) than this is refused
    panels_per_user: Positive = DEFAULT_PANELS_PER_USER  # live /panel messages one user may have
    # "http" (the interactions endpoint) or "gateway" (the websocket); not `mode`, which is the
    # gateway's store/legacy key
    transport: Literal["http", "gateway"] = "http"
    intents: Annotated[int, Field(ge=0)] = 0  # a discord.Intents value; INTERACTION_CREATE needs none
    reidentify_delay_s: Annotated[float, Field(gt=0, le=60)] = 5.0  # upper bound of the wait before IDENTIFY
    shard_lease_ms: Positive = 15_000  # how long one gateway holds the shard's session unrenewed
    # who holds the shard lease: a restart with the same id re-takes it at once, another waits
    gateway_id: Text = Field(default_factory=socket.gethostname)

    def check(self) -> None:
        """The public key parses (and is there for transport = "http"); ValueError naming it."""
        self.verify_key()

    def verify_key(self) -> VerifyKey | None:
        """The Ed25519 key (None only with transport = "gateway" and no key). Raises ValueError
        naming the key when it is missing for HTTP or not 32 hex bytes (run by `check`)."""
        if self.public_key is not None:
            try:
                return load_verify_key(self.public_key)
            except ValueError as exc:
                raise ValueError(f"adapters.discord.{exc}") from None
        if self.transport == "http":
            raise ValueError(
                'adapters.discord.public_key: required for transport = "http" (or set CHATSTATE_DISCORD_PUBLIC_KEY)'
            )
        return None
