"""The `[adapters.discord]` table as a typed settings model (gateway.settings), checked at start.

Keys (besides the gateway's `enabled` and `mode`), each `CHATSTATE_DISCORD_<KEY>` in the
environment, typed as in TOML:
  public_key    application public key, 64 hex characters (verifies interactions)   required
  bot_token     bot token for REST calls (`Authorization: Bot <token>`)              required
  api_base_url  REST base URL; a simulator's in tests                    default Discord v10
  ttl_ms        registry entry lifetime in ms (tests shorten it)             default 30 min
  max_entries   entries kept per registry                                       default 500
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

from typing import Annotated

from nacl.signing import VerifyKey
from pydantic import Field

from chatstate.adapters.discord.platform import DEFAULT_API_BASE, load_verify_key
from chatstate.gateway.settings import AdapterSettings

Text = Annotated[str, Field(min_length=1)]


class DiscordSettings(AdapterSettings):
    """Everything the Discord adapter reads from its config table."""

    adapter_id = "discord"

    public_key: Text  # hex, from the developer portal
    bot_token: Text  # secret
    api_base_url: Text = DEFAULT_API_BASE
    ttl_ms: Annotated[int, Field(ge=1)] | None = None  # None = the registry default (30 min)
    max_entries: Annotated[int, Field(ge=1)] | None = None  # None = the registry default (500)

    def verify_key(self) -> VerifyKey:
        """The Ed25519 key from `public_key`; raises ValueError naming the key (offline check)."""
        try:
            return load_verify_key(self.public_key)
        except ValueError as exc:
            raise ValueError(f"adapters.discord.{exc}") from None
