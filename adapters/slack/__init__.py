"""The Slack adapter: thread participation and event dedupe that survive restarts.

Read it as a migration recipe (docs/migrations/slack.md): `platform` is the Slack wire
(verify, parse, send via slack-sdk), `state` is what the adapter keeps (namespaces, keys,
values, TTLs, caps), `policy` is when to answer, and `plugin` wires them into the gateway.
"""

from adapters.slack.plugin import SlackPlugin

__all__ = ["SlackPlugin"]
