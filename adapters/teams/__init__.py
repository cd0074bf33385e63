"""Microsoft Teams (botbuilder-core): sent-message rows that survive restarts, one answer per
activity. Files in reading order: `state.py`, `platform.py` (the wire; with `auth.py`: who may
call the bot, and `clients.py`: connector clients reused), `handlers.py`, `config.py`, `plugin.py`.
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
