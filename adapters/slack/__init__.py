"""The Slack adapter: thread participation and event dedupe that survive restarts.

Read it as a migration recipe (docs/migrations/slack.md): `platform` is the Slack wire (verify,
parse, send via slack-sdk), `state` what the adapter keeps, `handlers` when and how to answer,
`config` the `[adapters.slack]` table, and `plugin` wires them into the gateway.
"""

from typing import Any

__all__ = ["SlackPlugin"]


def __getattr__(name: str) -> Any:
    """`SlackPlugin` is imported on first use, not with the package: the gateway checks a disabled
    adapter's table against its `config` module without importing the adapter or its SDK."""
    if name == "SlackPlugin":
        from chatstate.adapters.slack.plugin import SlackPlugin

        return SlackPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
