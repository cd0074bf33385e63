"""Matrix adapter (matrix-nio): approval prompts answered by reaction, across restarts.

A migration recipe in five files:
  platform.py — the Matrix I/O: nio client, command parsing, event contents, idempotent sends
  state.py    — what it keeps: reaction targets and the sync token (namespace, key, value, TTL, cap)
  handlers.py — prompt on `!approve`, resolve on an approver's reaction
  sync.py     — the /sync loop that saves `next_batch` after each handled batch
  plugin.py   — the gateway plugin; `mode = "legacy"` is the in-memory "before"
Pending approvals themselves live in the core store (`gateway/approvals.py`).
"""

from chatstate.adapters.matrix.plugin import MatrixPlugin

__all__ = ["MatrixPlugin"]
