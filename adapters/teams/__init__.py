"""Microsoft Teams adapter (Bot Framework, botbuilder-core): a sent-message cache that survives
restarts, so a reply to the bot's earlier message is still `reply_to_bot`.

Files, in the order a migration reads: `connector.py` (platform I/O: authenticate, parse, send),
`auth.py` (who may call, how the bot calls out), `state.py` (namespace, key, value, TTL, cap,
legacy twin), `sent.py` (the one recording function), `bot.py` (the ActivityHandler),
`plugin.py` (wiring).
"""

from chatstate.adapters.teams.plugin import TeamsPlugin

__all__ = ["TeamsPlugin"]
