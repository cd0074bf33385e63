"""Matrix adapter (matrix-nio): approval prompts answered by reaction, across restarts.

A migration recipe in five files and a transport:
  config.py   — the `[adapters.matrix]` table
  platform.py — the Matrix I/O: nio client, command parsing, event contents, idempotent sends
  state.py    — what it keeps: reaction targets, the sync token, the gate's claims, the quota
  handlers.py — each event through `sdk.InboundGate`: prompt on `!approve` (within the
                requester's quota), resolve on an approver's reaction, bounded retries
  sync.py     — the /sync loop: a per-start filter, back-fill of limited timelines, invites,
                `next_batch` saved after each handled batch
  plugin.py   — the gateway plugin; `mode = "legacy"` is the in-memory "before"
Pending approvals themselves live in the core store (`sdk.ApprovalService`).
"""
