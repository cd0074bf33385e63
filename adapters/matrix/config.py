"""The `[adapters.matrix]` table as a typed settings model (gateway.settings), checked at start.

    [adapters.matrix]
    enabled = true
    mode = "store"                  # or "legacy": in-memory targets and sync token (the "before")
    homeserver = "https://matrix.example.org"
    access_token = "syt_..."        # or CHATSTATE_MATRIX_ACCESS_TOKEN
    approvers = ["@alice:example.org"]   # env: a TOML array, or comma-separated
    approval_ttl_ms = 1800000       # how long a prompt can be answered (default 30 min)
    sync_timeout_ms = 30000         # /sync long-poll

Every key has a `CHATSTATE_MATRIX_<KEY>` variable typed as in TOML.
To add a key: add one annotated field here (with a default unless it is required).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from chatstate.gateway.settings import AdapterSettings

DEFAULT_APPROVAL_TTL_MS = 30 * 60 * 1000  # 30 min, like the reference system's exec approvals
DEFAULT_SYNC_TIMEOUT_MS = 30_000  # Matrix clients' customary long-poll

Text = Annotated[str, Field(min_length=1, pattern=r"\S")]


class MatrixSettings(AdapterSettings):
    """Everything the Matrix adapter reads from its config table."""

    adapter_id = "matrix"

    homeserver: Text
    access_token: Text  # secret
    approvers: tuple[str, ...] = Field((), strict=False)  # Matrix user ids allowed to approve
    approval_ttl_ms: Annotated[int, Field(ge=1)] = DEFAULT_APPROVAL_TTL_MS
    sync_timeout_ms: Annotated[int, Field(ge=0)] = DEFAULT_SYNC_TIMEOUT_MS

    @field_validator("homeserver", "access_token")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip().rstrip("/") if value.startswith("http") else value.strip()

    @field_validator("approvers")
    @classmethod
    def _user_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        users = tuple(u.strip() for u in value if u.strip())
        bad = [u for u in users if not (u.startswith("@") and ":" in u)]
        if bad:
            raise ValueError(f"not Matrix user ids: {', '.join(bad)}")  # user ids, not secrets
        return users

