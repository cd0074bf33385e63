"""Microsoft Teams adapter (Bot Framework, botbuilder-core): a sent-message cache that survives
restarts, so a reply to the bot's earlier message is still `reply_to_bot`, and one answer per
activity through the SDK's gate.

Files, in the order a migration reads: `platform.py` (the wire: authenticate, parse, send, with
`auth.py`, `keys.py` and `clients.py` for tokens, signing keys and connector clients),
`state.py` (namespaces, keys, values, TTLs, caps), `handlers.py` (when to answer; the gate's
work and check), `config.py` (the `[adapters.teams]` table), `plugin.py` (wiring).
"""
