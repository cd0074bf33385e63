"""The `[adapters.matrix]` table as a typed settings model (gateway.settings), checked at start.

    [adapters.matrix]
    enabled = true
    mode = "store"                  # or "legacy": in-memory targets and sync token (the "before")
    homeserver = "https://matrix.example.org"
    access_token = "syt_..."        # or CHATSTATE_MATRIX_ACCESS_TOKEN
    approvers = ["@alice:example.org"]   # env: a TOML array, or comma-separated
    approval_ttl_ms = 1800000       # how long a prompt can be answered (default 30 min)
    sync_timeout_ms = 30000         # /sync long-poll
    sync_timeline_limit = 50        # timeline events per room per /sync (our uploaded filter)
    backfill_max_events = 1000      # /messages back-fill bound per room per sync (reported if hit)
    event_max_attempts = 3          # tries of one failing event before it is recorded and skipped
    event_lease_ms = 30000          # another device may take over a claimed, unfinished event after this
    auto_join = true                # join rooms when invited by an allowed inviter
    auto_join_inviters = []         # who may invite the bot (default: the approvers)
    max_pending_per_requester = 5   # open approvals one requester may hold

Every key has a `CHATSTATE_MATRIX_<KEY>` variable typed as in TOML.
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from chatstate.gateway.sdk import AdapterSettings

DEFAULT_APPROVAL_TTL_MS = 30 * 60 * 1000  # 30 min, like the reference system's exec approvals
DEFAULT_SYNC_TIMEOUT_MS = 30_000  # Matrix clients' customary long-poll
DEFAULT_TIMELINE_LIMIT = 50  # Synapse's own default without a filter is 10
DEFAULT_BACKFILL_MAX_EVENTS = 1_000  # per room per sync
DEFAULT_EVENT_MAX_ATTEMPTS = 3
# Longer than one event's work takes (a send nio retries after a 429 included), so no other
# device takes over an event still being worked on (a restart of the same device need not wait).
DEFAULT_EVENT_LEASE_MS = 30_000
DEFAULT_MAX_PENDING_PER_REQUESTER = 5  # one person's flood cannot crowd out others' prompts

Text = Annotated[str, Field(min_length=1, pattern=r"\S")]


class MatrixSettings(AdapterSettings):
    """Everything the Matrix adapter reads from its config table."""

    adapter_id = "matrix"

    homeserver: Text
    access_token: Text  # secret
    approvers: tuple[str, ...] = Field((), strict=False)  # Matrix user ids allowed to approve
    approval_ttl_ms: Annotated[int, Field(ge=1)] = DEFAULT_APPROVAL_TTL_MS
    sync_timeout_ms: Annotated[int, Field(ge=0)] = DEFAULT_SYNC_TIMEOUT_MS
    sync_timeline_limit: Annotated[int, Field(ge=1)] = DEFAULT_TIMELINE_LIMIT
    backfill_max_events: Annotated[int, Field(ge=1)] = DEFAULT_BACKFILL_MAX_EVENTS
    event_max_attempts: Annotated[int, Field(ge=1)] = DEFAULT_EVENT_MAX_ATTEMPTS
    event_lease_ms: Annotated[int, Field(ge=1)] = DEFAULT_EVENT_LEASE_MS
    auto_join: bool = True
    auto_join_inviters: tuple[str, ...] = Field((), strict=False)  # empty: the approvers
    max_pending_per_requester: Annotated[int, Field(ge=1)] = DEFAULT_MAX_PENDING_PER_REQUESTER

    @property
    def inviters(self) -> tuple[str, ...]:
        """Whose invites `auto_join` accepts: `auto_join_inviters`, else the approvers."""
        return self.auto_join_inviters or self.approvers

    @field_validator("homeserver", "access_token")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip().rstrip("/") if value.startswith("http") else value.strip()

    @field_validator("approvers", "auto_join_inviters")
    @classmethod
    def _user_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        users = tuple(u.strip() for u in value if u.strip())
        bad = [u for u in users if not (u.startswith("@") and ":" in u)]
        if bad:
            raise ValueError(f"not Matrix user ids: {', '.join(bad)}")  # user ids, not secrets
        return users
