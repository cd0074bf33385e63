"""Discord adapter: HTTP interactions and the Gateway, components and modals that survive restarts.

A migration recipe, one file per step:
  platform.py        Discord's wire: Ed25519 verify, parse interactions, build responses
  rest.py            the bot's REST calls (callbacks with 429s retried, webhook edits, posts)
  state.py           the state it keeps (namespaces, entry shape, TTL, cap) and its legacy twin
  handlers.py        what the bot does with an interaction: the gate's work and check
  config.py          the `[adapters.discord]` table
  plugin.py          the gateway plugin (wiring)
  gateway_client.py  the Gateway transport (websocket), its session persisted for RESUME
  gateway_state.py   what the Gateway transport keeps
"""
