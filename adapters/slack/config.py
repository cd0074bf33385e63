"""The `[adapters.slack]` table: one annotated field per key, with its default and why; each is also
`CHATSTATE_SLACK_<KEY>`, typed as in TOML (gateway.settings; docs/migrations/slack.md lists them)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from chatstate.gateway.sdk import AdapterSettings, Text, token_kind

TOKENS = {"xoxb-": "a bot token", "xapp-": "an app-level token", "xoxp-": "a user token"}  # Slack's, by prefix
Positive = Annotated[int, Field(gt=0)]


class SlackSettings(AdapterSettings):
    """Everything the Slack adapter reads from its config table; defaults one unit a line."""

    adapter_id = "slack"

    # verifies every Events API request (v0 HMAC); secret. Socket Mode requests are not signed
    # (the app-level token authenticates the link), so there it may be left out.
    signing_secret: Text = "unused"
    bot_token: Annotated[Text, token_kind("xoxb-", TOKENS)]  # xoxb-... for the Web API; secret
    api_base_url: Text = "https://slack.com/api/"  # a simulator's in tests
    account_id: Text = "default"  # the bot account this gateway runs as (part of the thread key)
    agent_id: Text = "main"  # stored with each participation row: which agent replied
    require_mention: bool = True  # channel messages need an @mention ...
    require_explicit_mention: bool = False  # ... and true turns off thread/reply implicit mentions
    thread_ttl_ms: Positive = 24 * 60 * 60 * 1000  # answer untagged follow-ups for 24 h after the last reply
    thread_max_entries: Positive = 5_000
    threads_per_user: Positive = 500  # threads one user may make the bot follow at once: 10% of the cap
    event_ttl_ms: Positive = 60 * 60 * 1000  # a done event_id is remembered 1 h (Slack retries within ~5 min)
    event_max_entries: Positive = 50_000
    event_lease_ms: Positive = 60 * 1000  # a claimed-but-unfinished event may be retaken after this
    ack_budget_s: Annotated[float, Field(gt=0)] = 2.5  # Slack wants a 2xx within 3 s; we wait this long at most
    transport: Literal["http", "socket"] = "http"  # Events API or Socket Mode; not `mode` (store/legacy)
    app_token: Annotated[Text, token_kind("xapp-", TOKENS)] | None = None  # required for transport = "socket"
    socket_ping_interval_s: Annotated[float, Field(gt=0)] = 5.0  # slack-sdk's; 4 missed pongs: a new link

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
