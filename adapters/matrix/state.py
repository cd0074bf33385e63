"""What the Matrix adapter keeps: its rows of DESIGN.md §3's table, and nothing else.

| namespace | key | value | TTL / cap |
|---|---|---|---|
| `matrix.approval-reactions` | JSON `[account_id, room_id, event_id]` | `{version: 1, target}` | approval's remaining lifetime / 1,000 |
| `matrix.sync` | account_id (the bot's user id) | `{version: 1, next_batch}` | none / 16 |
| `matrix.handled-events` | JSON `[account_id, event_id]` | `{received_at, lease_until}`, then `{received_at, done_at}` | 24 h / 40,000 |
| `matrix.requester-quota` | JSON `[account_id, requester]` | `{b: {bucket: count}}` (`sdk.UserQuota`) | approval lifetime / 5,000 |

A reaction target says which approval a prompt event stands for and which decisions its
reactions may take; it is staged with the prompt's request event and taken with the reaction
that resolves it, each in that event's done transaction (`sdk.InboundGate`, whose claims are
`matrix.handled-events`: a replayed batch, a cached /sync answer, a new device or a second
gateway finds the claim and does nothing). The sync token is saved after each `/sync` batch has
been handled, so after a restart the bot resumes right after the last batch it finished. The
legacy twin is each `sdk.AdapterState` with `legacy=True`: all of it is gone after a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chatstate.gateway.sdk import Decision, StateSpec

REACTIONS = StateSpec("matrix.approval-reactions", ttl_ms=None, max_entries=1_000)  # TTL per row
SYNC = StateSpec("matrix.sync", ttl_ms=None, max_entries=16)  # one row per bot account
# Sized so the plugin's namespaces add up under the store's per-plugin ceiling (50,000 live rows,
# docs/state.md rule 10): 1,000 + 16 + 40,000 + 5,000. Over the ceiling the store evicts from
# the namespace being written, so a busy ledger can never shrink the reaction targets.
HANDLED = StateSpec("matrix.handled-events", ttl_ms=24 * 3600 * 1000, max_entries=40_000)  # >= 24 h
QUOTA_MAX_ENTRIES = 5_000  # requesters counted; evicting one only forgets what they hold open
VALUE_VERSION = 1


def quota_spec(approval_ttl_ms: int) -> StateSpec:
    return StateSpec("matrix.requester-quota", approval_ttl_ms, QUOTA_MAX_ENTRIES)


def json_key(*parts: str) -> str:
    """A store key of several ids: JSON `[...]`, no spaces (ids may hold any character)."""
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ReactionTarget:
    """The approval a prompt event stands for, and the decisions its reactions may take."""

    approval_id: str
    decisions: tuple[Decision, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VALUE_VERSION,
            "target": {"approval_id": self.approval_id, "decisions": list(self.decisions)},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ReactionTarget:
        """Rebuild a stored target. Raises ValueError for a row of another version."""
        if value.get("version") != VALUE_VERSION:
            raise ValueError(f"reaction target version {value.get('version')!r} is not {VALUE_VERSION}")
        return cls(value["target"]["approval_id"], tuple(value["target"]["decisions"]))
