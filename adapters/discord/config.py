"""The `[adapters.discord]` table as a typed settings model (gateway.settings), checked at start.

Keys (besides the gateway's `enabled` and `mode`), each `CHATSTATE_DISCORD_<KEY>` in the
environment, typed as in TOML:
  public_key    application public key, 64 hex characters (verifies interactions)
                required for transport = "http" (gateway dispatches are not signed)
  bot_token     bot token for REST calls (`Authorization: Bot <token>`)              required
  api_base_url  REST base URL; a simulator's in tests                    default Discord v10
  ttl_ms        registry entry lifetime in ms (tests shorten it)             default 30 min
  max_entries   entries kept per registry                                       default 500
  timestamp_window_s  how far X-Signature-Timestamp may be from now, seconds     default 300
  panels_per_user     live /panel messages one user may have (fairness quota)     default 10
  transport     "http" (the interactions endpoint) or "gateway" (the websocket)  default http
                (`transport`, not `mode`: `mode` is the gateway's store/legacy key; issue 19)
  intents       discord.Intents value for IDENTIFY (INTERACTION_CREATE needs none)  default 0
  reidentify_delay_s  upper bound of the 1-5 s wait before a fresh IDENTIFY        default 5
  shard_lease_ms      how long one gateway holds the shard's session unrenewed  default 15000
  gateway_id          who holds the shard lease; a restart with the same id re-takes it at
                      once, another id waits for it to lapse              default: the host name
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from nacl.signing import VerifyKey
from pydantic import Field

from chatstate.adapters.discord.platform import DEFAULT_API_BASE, load_verify_key
from chatstate.gateway.sdk import AdapterSettings

DEFAULT_TIMESTAMP_WINDOW_S = 300  # 5 min: a signed interaction older (or newer) than this is refused
DEFAULT_PANELS_PER_USER = 10  # x 4 components = 40 of the registry's 500: no one user can fill it
TRANSPORTS = ("http", "gateway")

Text = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(ge=1)]


class DiscordSettings(AdapterSettings):
    """Everything the Discord adapter reads from its config table."""

    adapter_id = "discord"

    public_key: Text | None = None  # hex, from the developer portal; required for transport = "http"
    bot_token: Text  # secret
    api_base_url: Text = DEFAULT_API_BASE
    ttl_ms: Positive | None = None  # None = the registry default (30 min)
    max_entries: Positive | None = None  # None = the registry default (500)
    timestamp_window_s: Positive = DEFAULT_TIMESTAMP_WINDOW_S
    panels_per_user: Positive = DEFAULT_PANELS_PER_USER
    transport: Literal["http", "gateway"] = "http"
    intents: Annotated[int, Field(ge=0)] = 0  # a discord.Intents value
    reidentify_delay_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    shard_lease_ms: Positive = 15_000
    gateway_id: Text = Field(default_factory=socket.gethostname)

    def verify_key(self) -> VerifyKey | None:
        """The Ed25519 key from `public_key` (None only with transport = "gateway" and no key).

        Raises ValueError naming the key when it is missing for HTTP or not 32 hex bytes
        (offline: run by `check` before anything starts).
        """
        if self.public_key is None:
            if self.transport == "http":
                raise ValueError(
                    'adapters.discord.public_key: required for transport = "http" (or set CHATSTATE_DISCORD_PUBLIC_KEY)'
                )
            return None
        try:
            return load_verify_key(self.public_key)
        except ValueError as exc:
            raise ValueError(f"adapters.discord.{exc}") from None
