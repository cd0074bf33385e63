"""The chatstate gateway: one long-running process that hosts the adapters as plugins, gives
each a keyed store bound to its id, and serves their webhooks on one aiohttp port.

Entry points: `chatstate.gateway.cli:main` (the `gateway` console script and `python -m chatstate`) and
`gateway.sim.harness.GatewayHarness` for tests and the demo. See docs/gateway.md.
"""
