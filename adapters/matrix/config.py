"""The `[adapters.matrix]` table, checked once at start.

    [adapters.matrix]
    enabled = true
    mode = "store"                  # or "legacy": in-memory targets and sync token (the "before")
    homeserver = "https://matrix.example.org"
    access_token = "syt_..."        # or CHATSTATE_MATRIX_ACCESS_TOKEN
    approvers = ["@alice:example.org"]   # env: comma-separated
    approval_ttl_ms = 1800000       # how long a prompt can be answered (default 30 min)
    sync_timeout_ms = 30000         # /sync long-poll
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_APPROVAL_TTL_MS = 30 * 60 * 1000  # 30 min, like the reference system's exec approvals
DEFAULT_SYNC_TIMEOUT_MS = 30_000  # Matrix clients' customary long-poll


@dataclass(frozen=True)
class MatrixConfig:
    homeserver: str
    access_token: str
    approvers: tuple[str, ...]
    approval_ttl_ms: int = DEFAULT_APPROVAL_TTL_MS
    sync_timeout_ms: int = DEFAULT_SYNC_TIMEOUT_MS


def parse_config(table: Mapping[str, Any]) -> MatrixConfig:
    """Check the adapter table. Raises ValueError naming the key (the gateway exits 2)."""
    return MatrixConfig(
        homeserver=_text(table, "homeserver").rstrip("/"),
        access_token=_text(table, "access_token"),
        approvers=_users(table.get("approvers", ())),
        approval_ttl_ms=_int(table, "approval_ttl_ms", DEFAULT_APPROVAL_TTL_MS, minimum=1),
        sync_timeout_ms=_int(table, "sync_timeout_ms", DEFAULT_SYNC_TIMEOUT_MS, minimum=0),
    )


def _text(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"adapters.matrix.{key}: required, a non-empty string")
    return value.strip()


def _users(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value  # env overrides are strings
    if not isinstance(items, (list, tuple)) or not all(isinstance(u, str) for u in items):
        raise ValueError("adapters.matrix.approvers: must be a list of Matrix user ids")
    users = tuple(u.strip() for u in items if u.strip())
    bad = [u for u in users if not (u.startswith("@") and ":" in u)]
    if bad:
        raise ValueError(f"adapters.matrix.approvers: not Matrix user ids: {', '.join(bad)}")
    return users


def _int(table: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"adapters.matrix.{key}: must be an integer >= {minimum}")
    return value
