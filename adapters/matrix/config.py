"""The `[adapters.matrix]` table: one annotated field per key, with its default and why; each is also
`CHATSTATE_MATRIX_<KEY>`, typed as in TOML (gateway.settings; docs/migrations/matrix.md lists them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from chatstate.gateway.sdk import AdapterSettings, HttpUrl, Text

Positive = Annotated[int, Field(ge=1)]


class MatrixSettings(AdapterSettings):
    """Everything the Matrix adapter reads from its config table."""

    adapter_id = "matrix"

    homeserver: HttpUrl
    access_token: Text  # secret
    approvers: tuple[str, ...] = Field((), strict=False)  # Matrix user ids allowed to approve
    approval_ttl_ms: Positive = 30 * 60 * 1000  # how long a prompt can be answered (like exec approvals)
    sync_timeout_ms: Annotated[int, Field(ge=0)] = 30_000  # /sync long-poll, Matrix clients' custom
    sync_timeline_limit: Positive = 50  # events per room per /sync (Synapse's own default is 10)
    backfill_max_events: Positive = 1_000  # /messages back-fill per room per sync (reported if hit)
    event_max_attempts: Positive = 3  # tries of one failing event before it is recorded and skipped
    # After this another device may take over a claimed, unfinished event: longer than one event's
    # work (a send nio retries after a 429 included); a restart of the same device need not wait.
    event_lease_ms: Positive = 30_000
    auto_join: bool = True  # join rooms when invited by an allowed inviter
    auto_join_inviters: tuple[str, ...] = Field((), strict=False)  # who may invite; empty: the approvers
    max_pending_per_requester: Positive = 5  # one person's flood cannot crowd out others' prompts

    @property
    def inviters(self) -> tuple[str, ...]:
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
