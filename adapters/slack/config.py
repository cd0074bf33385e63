"""The `[adapters.slack]` table as a typed settings model (gateway.settings), checked at start.

Each key is one field: its type, its default and what it means. The gateway validates the
table strictly and applies `CHATSTATE_SLACK_<KEY>` variables typed as TOML values
(`CHATSTATE_SLACK_THREAD_TTL_MS=5000` is an integer); docs/migrations/slack.md lists them.
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from chatstate.gateway.sdk import AdapterSettings

# Defaults, one unit a line (issue 5; the table in docs/migrating-an-adapter.md).
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

Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
Positive = Annotated[int, Field(gt=0)]


class SlackSettings(AdapterSettings):
    """Everything the Slack adapter reads from its config table."""

    adapter_id = "slack"

    # verifies every Events API request (v0 HMAC); secret. Socket Mode requests are not signed
    # (the app-level token authenticates the link), so there it may be left out.
    signing_secret: Text = "unused"
    bot_token: Text  # xoxb-... for the Web API; secret
    api_base_url: Text = DEFAULT_API_BASE_URL  # a simulator's in tests
    account_id: Text = DEFAULT_ACCOUNT_ID
    agent_id: Text = DEFAULT_AGENT_ID
    require_mention: bool = True  # channel messages need an @mention ...
    require_explicit_mention: bool = False  # ... and true turns off thread/reply implicit mentions
    thread_ttl_ms: Positive = THREAD_TTL_MS
    thread_max_entries: Positive = THREAD_MAX_ENTRIES
    threads_per_user: Positive = THREADS_PER_USER
    event_ttl_ms: Positive = EVENT_TTL_MS
    event_max_entries: Positive = EVENT_MAX_ENTRIES
    event_lease_ms: Positive = EVENT_LEASE_MS
    ack_budget_s: Annotated[float, Field(gt=0)] = ACK_BUDGET_S
    transport: Literal["http", "socket"] = "http"  # `transport`, not `mode` (the store/legacy key)
    app_token: Text | None = None  # app-level token (xapp-...), required for transport = "socket"
    socket_ping_interval_s: Annotated[float, Field(gt=0)] = SOCKET_PING_INTERVAL_S

    @field_validator("api_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _transport_keys(self) -> Self:
        if self.transport == "socket" and self.app_token is None:
            raise ValueError(
                'adapters.slack.app_token: required for transport = "socket" (or set CHATSTATE_SLACK_APP_TOKEN)'
            )
        if self.transport == "http" and "signing_secret" not in self.model_fields_set:
            raise ValueError("adapters.slack.signing_secret: required (or set CHATSTATE_SLACK_SIGNING_SECRET)")
        return self
