"""The floor for a Slack bot with durable exactly-once: plain aiohttp and slack-sdk, no framework.

    python benchmarks/slack_floor.py PORT API_BASE_URL BOT_TOKEN SIGNING_SECRET DIR

POST /slack/events does only what durable exactly-once needs, the way Slack documents it: verify
the v0 signature (slack-sdk's `SignatureVerifier`, as bolt), parse, answer `url_verification`,
claim the event_id durably (one conditional insert: a retry or duplicate of a claimed event is
acked and dropped), ack 200, then post the reply (slack-sdk's `AsyncWebClient` on one shared
keep-alive session, as bolt's; with the event_id as message metadata, so that a takeover after a
crash could find it) and mark the event done (a second write). Both writes go through the echo
floor's group-committing writer thread (benchmarks/floor_server.py). No thread rows, no quota,
no lease renewal, no takeover, no access log, no metrics: what a server spends beyond this is
what it adds to the least a durable Slack bot does (benchmarks/slack_bolt_bench.py runs both).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_support import serve_app  # noqa: E402  (this directory)
from floor_server import Writer  # noqa: E402

from chatstate.state._sqlite import SQL_CLAIM  # noqa: E402

LEASE_MS, DONE_TTL_MS = 60_000, 3_600_000


async def serve(port: int, api_base_url: str, token: str, secret: str, directory: Path) -> None:
    verifier = SignatureVerifier(secret)
    client = AsyncWebClient(token=token, base_url=api_base_url, session=aiohttp.ClientSession())
    writer = Writer(directory / "slack-floor.sqlite", asyncio.get_running_loop())
    version = iter(range(1, 2**62))
    replying: set[asyncio.Task[None]] = set()  # the posts after the ack (a task needs a reference)

    def row(event_id: str, value: str, ttl_ms: int) -> tuple[object, ...]:
        now = time.time_ns() // 1_000_000
        return ("slack", "slack.events", event_id, now, value, now + ttl_ms, next(version))

    async def reply(event_id: str, event: dict[str, Any]) -> None:
        text = event.get("text", "").split(">", 1)[-1].strip()
        metadata = {"event_type": "floor_reply", "event_payload": {"event_id": event_id}}
        thread_ts = event.get("thread_ts") or event["ts"]
        await client.chat_postMessage(
            channel=event["channel"], text=f"echo: {text}", thread_ts=thread_ts, metadata=metadata
        )
        await writer.write(row(event_id, '"done"', DONE_TTL_MS))

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        if not verifier.is_valid_request(body, request.headers):
            raise web.HTTPUnauthorized(text="invalid Slack signature")
        envelope = json.loads(body)
        if envelope.get("type") == "url_verification":
            return web.json_response({"challenge": envelope.get("challenge")})
        event, event_id = envelope.get("event") or {}, envelope.get("event_id")
        if event.get("type") != "app_mention" or not event_id:
            return web.Response()
        key = f"{envelope.get('team_id')}:{event_id}"
        if await writer.write(row(key, '"claimed"', LEASE_MS), SQL_CLAIM):  # 0 rows: claimed before, ack again
            task = asyncio.create_task(reply(key, event))
            replying.add(task)
            task.add_done_callback(replying.discard)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slack/events", events)
    await serve_app(app, port)


if __name__ == "__main__":
    port, api_base_url, token, secret, directory = sys.argv[1:6]
    asyncio.run(serve(int(port), api_base_url, token, secret, Path(directory)))
