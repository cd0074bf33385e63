"""The `[adapters.teams]` table as a typed settings model (gateway.settings), checked at start.

Keys (besides `enabled` and `mode`), each `CHATSTATE_TEAMS_<KEY>` in the environment, typed as
in TOML (`CHATSTATE_TEAMS_SENT_TTL_MS=5000` is the integer 5000):
  app_id               the bot's Microsoft app id                                   required
  app_password         client secret for Azure AD (when no simulator is configured)
  openid_metadata_url  a local Bot Connector simulator's OpenID metadata, with
  token_issuer         ... the issuer of its tokens, and
  connector_token      ... the static token the bot presents to it
  sent_ttl_ms          msteams.sent-messages row lifetime                         default 24 h
  sent_max_entries     rows kept                                                 default 1,000
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from chatstate.adapters.teams.state import SENT_MAX_ENTRIES, SENT_TTL_MS
from chatstate.gateway.settings import AdapterSettings

Text = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(ge=1)]


class TeamsSettings(AdapterSettings):
    """Everything the Teams adapter reads from its config table."""

    adapter_id = "teams"

    app_id: Text
    app_password: Text | None = None  # secret; Azure only
    openid_metadata_url: Text | None = None  # set = talk to a local simulator instead of Azure
    token_issuer: Text | None = None
    connector_token: Text | None = None  # secret
    sent_ttl_ms: Positive = SENT_TTL_MS
    sent_max_entries: Positive = SENT_MAX_ENTRIES

    def check_credentials(self) -> None:
        """Azure needs `app_password`; a simulator needs `token_issuer` and `connector_token`.

        Raises ValueError naming the missing key (offline: nothing is fetched).
        """
        needed = ("app_password",) if self.openid_metadata_url is None else ("token_issuer", "connector_token")
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(f"adapters.teams.{key}: required (or set CHATSTATE_TEAMS_{key.upper()})")
