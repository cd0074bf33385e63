"""The Slack adapter: thread participation and event dedupe that survive restarts.

Read it as a migration recipe (docs/migrations/slack.md): `platform` is the Slack wire (verify,
parse, send via slack-sdk), `state` what the adapter keeps, `handlers` when and how to answer,
`config` the `[adapters.slack]` table, and `plugin` wires them into the gateway.
"""
