"""Matrix adapter (matrix-nio): approval prompts answered by reaction, across restarts.

Read it as a migration recipe (docs/migrations/matrix.md): the five files of every adapter, and
`sync.py`, the /sync loop. Pending approvals live in the core store (`sdk.ApprovalService`).
"""
