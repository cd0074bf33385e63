"""The `[adapters.teams]` table: one annotated field per key, with its default and why; each is also
`CHATSTATE_TEAMS_<KEY>`, typed as in TOML (gateway.settings; docs/migrations/teams.md lists them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from chatstate.adapters.teams.state import ACTIVITY_LEASE_MS, SENT_MAX_ENTRIES, SENT_PER_USER, SENT_TTL_MS
from chatstate.gateway.sdk import AdapterSettings, Text

Positive = Annotated[int, Field(ge=1)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class TeamsSettings(AdapterSettings):
    """Everything the Teams adapter reads from its config table."""

    adapter_id = "teams"

    app_id: Text
    app_password: Text | None = None  # secret; Azure only
    openid_metadata_url: Text | None = None  # set = talk to a local simulator instead of Azure
    token_issuer: Text | None = None
    connector_token: Text | None = None  # secret
    sent_ttl_ms: Positive = SENT_TTL_MS  # msteams.sent-messages row lifetime (tests shrink it)
    sent_max_entries: Positive = SENT_MAX_ENTRIES  # sent rows kept, oldest evicted first
    sent_per_user: Positive = SENT_PER_USER  # fairness quota: live sent rows one user's messages may cause
    activity_lease_ms: Positive = ACTIVITY_LEASE_MS  # one answer per activity
    # the signing-key (OpenID metadata) fetch (auth.SigningKeys), seconds
    openid_connect_timeout_s: PositiveSeconds = 3.0
    openid_read_timeout_s: PositiveSeconds = 5.0
    openid_total_timeout_s: PositiveSeconds = 10.0
    openid_retry_after_failure_s: PositiveSeconds = 30.0  # after a failed fetch, none for this long

    def check(self) -> None:
        """Azure needs `app_password`; a simulator needs `token_issuer` and `connector_token`.
        Raises ValueError naming the missing key (offline: nothing is fetched)."""
        needed = ("app_password",) if self.openid_metadata_url is None else ("token_issuer", "connector_token")
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(f"adapters.teams.{key}: required (or set CHATSTATE_TEAMS_{key.upper()})")
