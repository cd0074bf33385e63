"""The `[adapters.matrix]` table, checked once at start.

    [adapters.matrix]
    enabled = true
    mode = "store"                  # or "legacy": in-memory targets and sync token (the "before")
    homeserver = "https://matrix.example.org"
    access_token = "syt_..."        # or CHATSTATE_MATRIX_ACCESS_TOKEN
    approvers = ["@alice:example.org"]   # env: comma-separated
    approval_ttl_ms = 1800000       # how long a prompt can be answered (default 30 min)
    sync_timeout_ms = 30000         # /sync long-poll
    sync_timeline_limit = 50        # timeline events per room per /sync (our uploaded filter)
    backfill_max_events = 1000      # /messages back-fill bound per room per sync (reported if hit)
    event_max_attempts = 3          # tries of one failing event before it is recorded and skipped
    auto_join = true                # join rooms when invited by an allowed inviter
    auto_join_inviters = []         # who may invite the bot (default: the approvers)
    max_pending_per_requester = 5   # open approvals one requester may hold (issue 15 quota)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_APPROVAL_TTL_MS = 30 * 60 * 1000  # 30 min, like the reference system's exec approvals
DEFAULT_SYNC_TIMEOUT_MS = 30_000  # Matrix clients' customary long-poll
DEFAULT_TIMELINE_LIMIT = 50  # Synapse's own default without a filter is 10
DEFAULT_BACKFILL_MAX_EVENTS = 1_000  # per room per sync (issue 13)
DEFAULT_EVENT_MAX_ATTEMPTS = 3
DEFAULT_MAX_PENDING_PER_REQUESTER = 5  # one person's flood cannot crowd out others' prompts


@dataclass(frozen=True)
class MatrixConfig:
    homeserver: str
    access_token: str
    approvers: tuple[str, ...]
    approval_ttl_ms: int = DEFAULT_APPROVAL_TTL_MS
    sync_timeout_ms: int = DEFAULT_SYNC_TIMEOUT_MS
    sync_timeline_limit: int = DEFAULT_TIMELINE_LIMIT
    backfill_max_events: int = DEFAULT_BACKFILL_MAX_EVENTS
    event_max_attempts: int = DEFAULT_EVENT_MAX_ATTEMPTS
    auto_join: bool = True
    auto_join_inviters: tuple[str, ...] = ()  # empty: the approvers
    max_pending_per_requester: int = DEFAULT_MAX_PENDING_PER_REQUESTER

    @property
    def inviters(self) -> tuple[str, ...]:
        return self.auto_join_inviters or self.approvers


def parse_config(table: Mapping[str, Any]) -> MatrixConfig:
    """Check the adapter table. Raises ValueError naming the key (the gateway exits 2)."""
    return MatrixConfig(
        homeserver=_text(table, "homeserver").rstrip("/"),
        access_token=_text(table, "access_token"),
        approvers=_users(table.get("approvers", ())),
        approval_ttl_ms=_int(table, "approval_ttl_ms", DEFAULT_APPROVAL_TTL_MS, minimum=1),
        sync_timeout_ms=_int(table, "sync_timeout_ms", DEFAULT_SYNC_TIMEOUT_MS, minimum=0),
        sync_timeline_limit=_int(table, "sync_timeline_limit", DEFAULT_TIMELINE_LIMIT, minimum=1),
        backfill_max_events=_int(table, "backfill_max_events", DEFAULT_BACKFILL_MAX_EVENTS, minimum=1),
        event_max_attempts=_int(table, "event_max_attempts", DEFAULT_EVENT_MAX_ATTEMPTS, minimum=1),
        auto_join=_bool(table, "auto_join", True),
        auto_join_inviters=_users(table.get("auto_join_inviters", ()), key="auto_join_inviters"),
        max_pending_per_requester=_int(
            table, "max_pending_per_requester", DEFAULT_MAX_PENDING_PER_REQUESTER, minimum=1
        ),
    )


def _text(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"adapters.matrix.{key}: required, a non-empty string")
    return value.strip()


def _users(value: Any, *, key: str = "approvers") -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value  # env overrides are strings
    if not isinstance(items, (list, tuple)) or not all(isinstance(u, str) for u in items):
        raise ValueError(f"adapters.matrix.{key}: must be a list of Matrix user ids")
    users = tuple(u.strip() for u in items if u.strip())
    bad = [u for u in users if not (u.startswith("@") and ":" in u)]
    if bad:
        raise ValueError(f"adapters.matrix.{key}: not Matrix user ids: {', '.join(bad)}")
    return users


def _bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        value = value.strip().lower() in ("true", "1")  # env overrides are strings
    if not isinstance(value, bool):
        raise ValueError(f"adapters.matrix.{key}: must be true or false")
    return value


def _int(table: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"adapters.matrix.{key}: must be an integer >= {minimum}")
    return value
