"""Hostile input on the adapters' routes (issue 15), each against the real app in process and a
real simulator: junk credentials, long ids, replays, signed junk. 4xx, no side effect."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chatstate.gateway.sim.slack import SlackSimulator, sign as slack_sign
from hostile_helpers import inprocess_gateway, raw_request, table_rows


def _db(tmp_path: Path) -> Path:
    return tmp_path / "plugin-state" / "state.sqlite"


async def test_slack_non_ascii_signature_is_401(tmp_path: Path) -> None:
    slack = SlackSimulator()
    async with inprocess_gateway(tmp_path, [slack]) as client:
        body = json.dumps(slack.mention_event("hi")).encode()
        ts = str(int(time.time()))
        request = (
            b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Slack-Request-Timestamp: " + ts.encode() + b"\r\nX-Slack-Signature: v0=\xc3\xa9\xc3\xa9\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        status, raw = await raw_request(client.port, request)  # type: ignore[arg-type]
        assert status == 401, raw
    assert slack.posts() == []


async def test_slack_long_channel_id_is_refused_before_the_reply(tmp_path: Path) -> None:
    """Before: the reply was posted, then LIMIT_EXCEEDED on the participation key -> 500, the
    event left leased. Now: 400 before any side effect."""
    slack = SlackSimulator()
    async with inprocess_gateway(tmp_path, [slack]) as client:
        rows = table_rows(_db(tmp_path))
        event = slack.mention_event("hi", channel="C" + "X" * 600)
        body = json.dumps(event).encode()
        ts = str(int(time.time()))
        headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": slack_sign(slack.signing_secret, ts, body),
                   "Content-Type": "application/json"}
        resp = await client.post("/slack/events", data=body, headers=headers)
        assert resp.status == 400, await resp.text()
        assert slack.posts() == []
        assert table_rows(_db(tmp_path)) == rows
        assert (await (await client.get("/healthz")).json())["status"] == "ok"
