"""Microsoft Teams adapter (Bot Framework, botbuilder-core): a sent-message cache that survives
restarts, so a reply to the bot's earlier message is still `reply_to_bot`.

Files, in the order a migration reads: `connector.py` (platform I/O: authenticate, parse, send),
`auth.py` (who may call, how the bot calls out), `state.py` (namespace, key, value, TTL, cap,
legacy twin), `sent.py` (the one recording function), `bot.py` (the ActivityHandler),
`plugin.py` (wiring).
"""

from typing import Any

__all__ = ["TeamsPlugin"]


def __getattr__(name: str) -> Any:
    """`TeamsPlugin` is imported on first use, not with the package: the gateway checks a disabled
    adapter's table against its `config` module without importing the adapter or its SDK."""
    if name == "TeamsPlugin":
        from chatstate.adapters.teams.plugin import TeamsPlugin

        return TeamsPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
