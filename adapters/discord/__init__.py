"""Discord adapter: HTTP interactions and the Gateway, components and modals that survive restarts.

One file per step of the recipe: platform.py (the wire: verify, parse, respond, REST), state.py
(namespaces, entries, TTL, cap), handlers.py (the gate's work), config.py, plugin.py (wiring),
and the Gateway transport, gateway_client.py.
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
