"""The `[adapters.discord]` table, checked once at start.

Keys (besides the gateway's `enabled` and `mode`):
  public_key    application public key, 64 hex characters (verifies interactions)   required
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
`public_key` is required only for transport = "http" (gateway dispatches are not signed).
`CHATSTATE_DISCORD_<KEY>` environment variables arrive as strings, so integers may be strings.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.signing import VerifyKey

from chatstate.adapters.discord.platform import DEFAULT_API_BASE, load_verify_key

DEFAULT_TIMESTAMP_WINDOW_S = 300  # 5 min: a signed interaction older (or newer) than this is refused
DEFAULT_PANELS_PER_USER = 10  # x 4 components = 40 of the registry's 500: no one user can fill it


TRANSPORTS = ("http", "gateway")


@dataclass(frozen=True)
class DiscordConfig:
    verify_key: VerifyKey | None  # None only with transport = "gateway"
    bot_token: str
    api_base_url: str = DEFAULT_API_BASE
    ttl_ms: int | None = None  # None = the registry default (30 min)
    max_entries: int | None = None  # None = the registry default (500)
    timestamp_window_s: int = DEFAULT_TIMESTAMP_WINDOW_S
    panels_per_user: int = DEFAULT_PANELS_PER_USER
    transport: str = "http"
    intents: int = 0
    reidentify_delay_s: float = 5.0
    shard_lease_ms: int = 15_000
    gateway_id: str = ""

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> DiscordConfig:
        """Check the table; raises ValueError naming the key (the gateway then exits 2)."""
        transport = str(table.get("transport") or "http")
        if transport not in TRANSPORTS:
            raise ValueError(f"adapters.discord.transport: must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        key = None
        if transport == "http" or table.get("public_key"):
            try:
                key = load_verify_key(_text(table, "public_key"))
            except ValueError as exc:
                raise ValueError(f"adapters.discord.{exc}") from None
        delay = table.get("reidentify_delay_s", 5.0)
        try:
            delay = float(delay)
        except (TypeError, ValueError):
            raise ValueError("adapters.discord.reidentify_delay_s: must be a number") from None
        if isinstance(table.get("reidentify_delay_s"), bool) or not 0 < delay <= 60:
            raise ValueError("adapters.discord.reidentify_delay_s: must be > 0 and <= 60")
        intents = table.get("intents", 0)
        if isinstance(intents, str) and intents.strip().isdigit():
            intents = int(intents)
        if isinstance(intents, bool) or not isinstance(intents, int) or intents < 0:
            raise ValueError("adapters.discord.intents: must be an integer >= 0 (a discord.Intents value)")
        return cls(
            verify_key=key,
            bot_token=_text(table, "bot_token"),
            api_base_url=str(table.get("api_base_url") or DEFAULT_API_BASE),
            ttl_ms=_positive_int(table, "ttl_ms"),
            max_entries=_positive_int(table, "max_entries"),
            timestamp_window_s=_positive_int(table, "timestamp_window_s") or DEFAULT_TIMESTAMP_WINDOW_S,
            panels_per_user=_positive_int(table, "panels_per_user") or DEFAULT_PANELS_PER_USER,
            transport=transport,
            intents=intents,
            reidentify_delay_s=delay,
            shard_lease_ms=_positive_int(table, "shard_lease_ms") or 15_000,
            gateway_id=str(table.get("gateway_id") or socket.gethostname()),
        )


def _text(table: Mapping[str, Any], name: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"adapters.discord.{name}: required (or set CHATSTATE_DISCORD_{name.upper()})")
    return value


def _positive_int(table: Mapping[str, Any], name: str) -> int | None:
    value = table.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"adapters.discord.{name}: must be an integer >= 1")
    return value
