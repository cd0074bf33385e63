"""Discord adapter: HTTP interactions and the Gateway, components and modals that survive restarts.

One file per step of the recipe: platform.py (the wire: verify, parse, respond, REST), state.py
(namespaces, entries, TTL, cap), handlers.py (the gate's work), config.py, plugin.py (wiring),
and the Gateway transport, gateway_client.py.
"""
