"""Discord adapter: HTTP interactions, components and modals that survive restarts.

A migration recipe, one file per step:
  platform.py  platform I/O: Ed25519 verify, parse interactions, responses, message posts
  ui.py        the messages, built with discord.ui (View, Button, Select, Modal)
  state.py     the state it keeps (namespaces, entry shape, TTL, cap) and its legacy twin
  bot.py       peek -> check -> consume, and the answers
  config.py    the `[adapters.discord]` table
  plugin.py    the gateway plugin
"""

from typing import Any

__all__ = ["DiscordPlugin"]


def __getattr__(name: str) -> Any:
    """`DiscordPlugin` is imported on first use, not with the package: the gateway checks a disabled
    adapter's table against its `config` module without importing the adapter or its SDK."""
    if name == "DiscordPlugin":
        from chatstate.adapters.discord.plugin import DiscordPlugin

        return DiscordPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
