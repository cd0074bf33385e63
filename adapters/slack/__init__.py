"""The Slack adapter: thread participation and event dedupe that survive restarts.

Read it as a migration recipe (docs/migrations/slack.md): `platform` is the Slack wire
(verify, parse, send via slack-sdk), `state` is what the adapter keeps (namespaces, keys,
values, TTLs, caps; the legacy twin is the same code with `AdapterState(legacy=True)`),
`policy` is when to answer, `config` the `[adapters.slack]` table, and `plugin` wires them
into the gateway.
"""
