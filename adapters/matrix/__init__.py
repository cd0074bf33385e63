"""Matrix adapter (matrix-nio): approval prompts answered by reaction, across restarts.

A migration recipe in five files and a transport: `config.py` (the `[adapters.matrix]` table),
`platform.py` (nio client, commands, event contents, idempotent sends), `state.py` (reaction
targets, the sync token, the gate's claims, the quota), `handlers.py` (each event through
`sdk.InboundGate`: prompt on `!approve`, resolve on an approver's reaction), `sync.py` (the
/sync loop), `plugin.py` (wiring; `mode = "legacy"` is the in-memory "before"). Pending
approvals live in the core store (`sdk.ApprovalService`).
"""
