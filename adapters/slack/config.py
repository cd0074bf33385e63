"""The `[adapters.slack]` table, checked once at start into one frozen dataclass.

Values may arrive as strings (a `CHATSTATE_SLACK_<KEY>` environment override is always a
string), so integers and booleans accept their string spellings too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Defaults, one unit a line (DESIGN.md §3 and issue 5).
DEFAULT_API_BASE_URL = "https://slack.com/api/"
DEFAULT_ACCOUNT_ID = "default"  # the bot account this gateway runs as (part of the thread key)
DEFAULT_AGENT_ID = "main"  # stored with each participation row: which agent replied
THREAD_TTL_MS = 24 * 60 * 60 * 1000  # answer untagged follow-ups for 24 h after the last reply
THREAD_MAX_ENTRIES = 5_000
THREADS_PER_USER = 500  # threads one user may make the bot follow at once: 10% of the 5,000 cap
EVENT_TTL_MS = 60 * 60 * 1000  # a done event_id is remembered 1 h (Slack retries within ~5 min)
EVENT_MAX_ENTRIES = 50_000
EVENT_LEASE_MS = 60 * 1000  # a claimed-but-unfinished event may be retaken after this
ACK_BUDGET_S = 2.5  # Slack wants a 2xx within 3 s; we wait at most this long for the reply
TRANSPORTS = ("http", "socket")  # Events API request URL, or Socket Mode (issue 19)
SOCKET_PING_INTERVAL_S = 5.0  # slack-sdk's default; its pong watchdog reconnects after 4 misses


@dataclass(frozen=True)
class SlackSettings:
    """Everything the Slack adapter reads from its config table."""

    signing_secret: str
    bot_token: str
    api_base_url: str = DEFAULT_API_BASE_URL
    account_id: str = DEFAULT_ACCOUNT_ID
    agent_id: str = DEFAULT_AGENT_ID
    require_mention: bool = True
    require_explicit_mention: bool = False
    thread_ttl_ms: int = THREAD_TTL_MS
    thread_max_entries: int = THREAD_MAX_ENTRIES
    threads_per_user: int = THREADS_PER_USER
    event_ttl_ms: int = EVENT_TTL_MS
    event_max_entries: int = EVENT_MAX_ENTRIES
    event_lease_ms: int = EVENT_LEASE_MS
    ack_budget_s: float = ACK_BUDGET_S
    transport: str = "http"  # `transport`, not `mode`: `mode` is the gateway's store/legacy key
    app_token: str = ""  # app-level token (xapp-...), required for transport = "socket"
    socket_ping_interval_s: float = SOCKET_PING_INTERVAL_S

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> SlackSettings:
        """Check the adapter's table. Raises ValueError naming the key (the gateway exits 2)."""
        base = str(_get(table, "api_base_url", str, DEFAULT_API_BASE_URL))
        transport = _get(table, "transport", str, "http")
        if transport not in TRANSPORTS:
            raise ValueError(f"adapters.slack.transport: must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        socket = transport == "socket"
        return cls(
            # Socket Mode requests are not signed (the app-level token authenticates the link)
            signing_secret=_get(table, "signing_secret", str, "unused") if socket else _required(table, "signing_secret"),
            bot_token=_required(table, "bot_token"),
            api_base_url=base if base.endswith("/") else base + "/",
            account_id=_get(table, "account_id", str, DEFAULT_ACCOUNT_ID),
            agent_id=_get(table, "agent_id", str, DEFAULT_AGENT_ID),
            require_mention=_get(table, "require_mention", bool, True),
            require_explicit_mention=_get(table, "require_explicit_mention", bool, False),
            thread_ttl_ms=_get(table, "thread_ttl_ms", int, THREAD_TTL_MS),
            thread_max_entries=_get(table, "thread_max_entries", int, THREAD_MAX_ENTRIES),
            threads_per_user=_get(table, "threads_per_user", int, THREADS_PER_USER),
            event_ttl_ms=_get(table, "event_ttl_ms", int, EVENT_TTL_MS),
            event_max_entries=_get(table, "event_max_entries", int, EVENT_MAX_ENTRIES),
            event_lease_ms=_get(table, "event_lease_ms", int, EVENT_LEASE_MS),
            ack_budget_s=_get(table, "ack_budget_s", float, ACK_BUDGET_S),
            transport=transport,
            app_token=_required(table, "app_token") if socket else "",
            socket_ping_interval_s=_get(table, "socket_ping_interval_s", float, SOCKET_PING_INTERVAL_S),
        )


def _required(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"adapters.slack.{key}: required (or set CHATSTATE_SLACK_{key.upper()})")
    return value


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    name = f"adapters.slack.{key}"
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{name}: must be a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: must be a number, got {value!r}") from None
        if number <= 0:
            raise ValueError(f"{name}: must be > 0, got {number}")
        return number
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: must be a non-empty string")
    return value
