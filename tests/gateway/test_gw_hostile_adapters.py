"""Hostile input on the adapters' routes, each against the real app in process and a
real simulator: junk credentials, long ids, replays, signed junk. 4xx, no side effect."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from hostile_helpers import inprocess_gateway, raw_request, table_rows

from chatstate.adapters.discord.config import DEFAULT_PANELS_PER_USER
from chatstate.gateway.sim.discord import ALICE, BOB, DiscordSimulator
from chatstate.gateway.sim.discord import fixture as discord_fixture
from chatstate.gateway.sim.slack import SlackSimulator
from chatstate.gateway.sim.slack import sign as slack_sign
from chatstate.gateway.sim.teams import KEYS_PATH, TeamsSimulator, new_signing_key
from chatstate.state import op_counts


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
        status, raw = await raw_request(client.port, request)
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
        headers = {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": slack_sign(slack.signing_secret, ts, body),
            "Content-Type": "application/json",
        }
        resp = await client.post("/slack/events", data=body, headers=headers)
        assert resp.status == 400, await resp.text()
        assert slack.posts() == []
        assert table_rows(_db(tmp_path)) == rows
        assert (await (await client.get("/healthz")).json())["status"] == "ok"


async def _teams_post(client, teams: TeamsSimulator, body: bytes, token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = await client.post("/api/messages", data=body, headers=headers)
    return resp.status, await resp.text()


async def test_teams_authenticates_before_parsing(tmp_path: Path) -> None:
    """Before: a bad token with a malformed body got 400 with the parser's message."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        forged = teams.token(key=new_signing_key())
        for body in (b"{not json", b"[" * 10_000, b'{"type": 5}'):
            for token in (forged, "garbage", None):
                status, text = await _teams_post(client, teams, body, token)
                assert status == 401, (body[:20], token, status, text)
        status, _ = await _teams_post(client, teams, b"{not json", teams.token())
        assert status == 400  # a valid token: now the body is looked at


async def test_teams_signed_junk_entities_and_long_ids_are_not_5xx(tmp_path: Path) -> None:
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        cases = [
            teams.activity("message_mention", entities=[{}]),
            teams.activity(
                "message_mention", entities=[{"type": "mention", "text": None, "mentioned": {"id": teams.bot_id}}]
            ),
            teams.activity("message_mention", entities=[{"type": "mention", "mentioned": None}]),
            teams.activity("message_reply", reply_to_id="9" * 5000),
            teams.activity("message_reply", conversation_id="19:" + "c" * 5000),
            # a signed conversationUpdate without a recipient (found by the signed fuzz)
            {k: v for k, v in teams.activity("conversation_update").items() if k != "recipient"},
        ]
        for activity in cases:
            status, text = await _teams_post(client, teams, json.dumps(activity).encode(), teams.token())
            assert status < 500, (activity.get("entities"), status, text)
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok", health


def _panel_command(discord_sim: DiscordSimulator, user_id: str) -> dict:
    data = discord_fixture("application_command")["data"]
    data["options"] = []
    return discord_sim.interaction("application_command", user_id=user_id, data=data)


async def test_discord_stale_timestamp_is_401_and_replays_have_no_second_effect(tmp_path: Path) -> None:
    """Before: a validly signed interaction from 2015 was accepted, and three replays posted
    three panels."""
    sim = DiscordSimulator()
    async with inprocess_gateway(tmp_path, [sim]):
        command = _panel_command(sim, ALICE)
        stale = str(int(time.time()) - 10 * 365 * 86400)
        body = json.dumps(command).encode()
        reply = await sim.deliver(command, signature=sim.sign(body, stale), timestamp=stale)
        assert reply.status == 401
        future = str(int(time.time()) + 301)
        assert (await sim.deliver(command, signature=sim.sign(body, future), timestamp=future)).status == 401
        assert sim.recorded("message_create") == []

        now = str(int(time.time()))
        first = await sim.deliver(command, signature=sim.sign(body, now), timestamp=now)
        assert first.status == 200 and "Panel posted" in first.content
        for _ in range(3):
            replay = await sim.deliver(command, signature=sim.sign(body, now), timestamp=now)
            assert replay.status == 409
        assert len(sim.recorded("message_create")) == 1


async def test_one_users_panel_spam_cannot_expire_another_users_buttons(tmp_path: Path) -> None:
    """Before: one user's 125 /panel commands made another user's button answer "expired"."""
    sim = DiscordSimulator()
    async with inprocess_gateway(tmp_path, [sim]):
        bobs = await sim.post_panel(user_id=BOB)
        answers = [await sim.deliver(_panel_command(sim, ALICE)) for _ in range(130)]
        posted = [a for a in answers if "Panel posted" in a.content]
        refused = [a for a in answers if "live panels" in a.content]
        assert len(posted) == DEFAULT_PANELS_PER_USER and len(refused) == 130 - DEFAULT_PANELS_PER_USER
        assert all(a.status == 200 and a.ephemeral for a in refused)  # a visible answer, to her only
        click = await sim.click(bobs, "Approve", user_id=BOB)
        assert click.status == 200 and "Approved by" in click.content, click


async def test_discord_ids_are_checked_before_any_lookup(tmp_path: Path) -> None:
    sim = DiscordSimulator()
    async with inprocess_gateway(tmp_path, [sim]):
        rows = table_rows(_db(tmp_path))
        message = await sim.post_panel()
        rows = table_rows(_db(tmp_path))
        for change in ({"custom_id": "x" * 600}, {"custom_id": None}):
            payload = sim.click_payload(message, "Refresh", user_id=ALICE)
            payload["data"].update(change)
            assert (await sim.deliver(payload)).status == 400
        for field, value in (("channel_id", "../../users/@me"), ("id", "1" * 600)):
            payload = _panel_command(sim, ALICE)
            payload[field] = value
            assert (await sim.deliver(payload)).status == 400
        assert table_rows(_db(tmp_path)) == rows


async def test_one_users_mention_spam_cannot_evict_another_users_thread(tmp_path: Path) -> None:
    """Compressed: 20 participation rows, 5 threads per user. Without the quota, one user's 30
    new threads evicted every other thread the bot followed."""
    slack = SlackSimulator(extra_config={"thread_max_entries": 20, "threads_per_user": 5})
    async with inprocess_gateway(tmp_path, [slack]):
        bobs = slack.mention_event("deploy?", user="U0BOB")
        assert (await slack.deliver(bobs)).status == 200
        root = bobs["event"]["ts"]
        for i in range(30):
            assert (await slack.deliver(slack.mention_event(f"spam {i}", user="U0SPAM"))).status == 200
        follow_up = slack.message_event("and staging?", user="U0BOB", thread_ts=root)
        assert (await slack.deliver(follow_up)).status == 200
        assert any("and staging?" in p["text"] for p in slack.posts(thread_ts=root)), slack.posts(thread_ts=root)
        refused = [p for p in slack.posts() if "won't follow" in p["text"]]
        assert len(refused) == 30 - 5  # each refusal is visible, in the spammer's own thread


async def test_a_handled_slack_event_is_two_durable_writes_in_a_new_thread_too(tmp_path: Path) -> None:
    """The claim, then participation refresh + done mark in one transaction: two writes per
    answered event. A new thread's participation (so a SIGKILL after the visible reply cannot
    forget it) and its quota count ride with the claim, before the post, and cost the same
    whatever the user already holds; a duplicate is the claim that loses, nothing more."""
    slack = SlackSimulator(extra_config={"threads_per_user": 50})
    write_ops = ("register", "register_if_absent", "compare_and_set", "consume", "delete", "delete_if", "commit")

    async def writes_of(event: dict[str, Any], answer: str = "replied") -> dict[str, int]:
        before = op_counts()
        assert (await slack.deliver(event)).body == answer
        return {
            op: n - before.get(op, 0) for op, n in op_counts().items() if op in write_ops and n != before.get(op, 0)
        }

    async with inprocess_gateway(tmp_path, [slack]):
        for i in range(40):  # the user holds 40 threads; the next one costs the same
            assert (await slack.deliver(slack.mention_event(f"warm {i}"))).body == "replied"
        new = slack.mention_event("one more")
        assert await writes_of(new) == {"commit": 2}
        follow_up = slack.message_event("and then?", thread_ts=new["event"]["ts"])
        assert await writes_of(follow_up) == {"commit": 2}
        assert await writes_of(follow_up, "already_done") == {"commit": 1}


async def test_a_10000_deep_body_is_400_signed_and_401_unsigned_on_every_route(tmp_path: Path) -> None:
    """Before: RecursionError -> 500 (on Teams without any credentials)."""
    slack, discord_sim, teams = SlackSimulator(), DiscordSimulator(), TeamsSimulator()
    deep = b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    async with inprocess_gateway(tmp_path, [slack, discord_sim, teams]) as client:
        ts = str(int(time.time()))
        signed = {
            "/slack/events": {
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": slack_sign(slack.signing_secret, ts, deep),
            },
            "/discord/interactions": {"X-Signature-Ed25519": discord_sim.sign(deep, ts), "X-Signature-Timestamp": ts},
            "/api/messages": {"Authorization": f"Bearer {teams.token()}"},
        }
        for path, headers in signed.items():
            assert (await client.post(path, data=deep, headers=headers)).status == 400, path
            assert (await client.post(path, data=deep)).status == 401, path


async def test_one_users_mention_spam_cannot_evict_another_users_sent_rows(tmp_path: Path) -> None:
    """Compressed: 20 sent rows, 5 per user. Without the quota, one user's 30 mentions evicted
    the row of the bot's answer to another user, whose reply then went unanswered."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams], adapters={"teams": {"sent_max_entries": 20, "sent_per_user": 5}}):
        bob = {"id": "29:bob", "name": "Bob"}
        spammer = {"id": "29:spam", "name": "Spam"}
        assert await teams.deliver(teams.activity("message_mention", **{"from": bob})) == 200
        answer = teams.sent()[-1]
        for _ in range(30):
            assert await teams.deliver(teams.activity("message_mention", **{"from": spammer})) == 200
        reply = teams.activity(
            "message_reply",
            reply_to_id=answer["id"],
            **{"from": bob},
            conversation_id=f"{answer['conversation_id']};messageid={answer['id']}",
        )
        assert await teams.deliver(reply) == 200
        assert teams.sent()[-1]["text"].startswith("[reply_to_bot]"), teams.sent()[-1]["text"]
        noted = [a for a in teams.sent() if "need an @mention" in a["text"]]
        assert len(noted) == 30 - 5  # the spammer's extra answers say so, visibly


# Every Activity field the Bot Framework schema makes optional, as a channel may send it: null or
# absent (the Activity object of the Bot Connector REST API reference).
NULLABLE_PATHS: tuple[tuple[str | int, ...], ...] = (
    *((name,) for name in (
        "text", "entities", "from", "recipient", "replyToId", "value", "attachments", "channelData", "id",
        "timestamp", "localTimestamp", "channelId", "locale", "textFormat", "reactionsAdded", "reactionsRemoved",
        "membersAdded", "membersRemoved", "conversation", "serviceUrl", "name", "summary", "speak",
    )),
    ("from", "id"), ("from", "name"), ("from", "aadObjectId"), ("recipient", "id"), ("recipient", "name"),
    ("conversation", "id"), ("conversation", "conversationType"), ("conversation", "isGroup"),
    ("conversation", "tenantId"), ("channelData", "tenant"), ("channelData", "team"), ("channelData", "channel"),
    ("reactionsAdded", 0), ("reactionsAdded", 0, "type"), ("membersAdded", 0), ("membersAdded", 0, "id"),
    ("attachments", 0), ("attachments", 0, "content"), ("attachments", 0, "contentType"), ("entities", 0),
    ("entities", 0, "mentioned"), ("entities", 0, "text"), ("entities", 1, "type"),
)  # fmt: skip


def _nulled(activity: dict[str, Any], path: tuple[str | int, ...], *, omit: bool) -> dict[str, Any] | None:
    """A copy of `activity` with the field at `path` null (or removed); None if it has none there."""
    doc = copy.deepcopy(activity)
    parent: Any = doc
    try:
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]]  # noqa: B018 - only present fields are nulled or removed
    except (KeyError, IndexError, TypeError):
        return None
    if omit:
        del parent[path[-1]]
    else:
        parent[path[-1]] = None
    return doc


async def test_teams_a_mention_with_null_text_is_answered(tmp_path: Path) -> None:
    """A signed @mention whose `text` is null (a message that is only a card or an image) is
    answered like any other mention, never a 500."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        body = json.dumps(teams.activity("message_mention", text=None)).encode()
        status, text = await _teams_post(client, teams, body, teams.token())
        assert status == 200, (status, text)
        assert [a["text"] for a in teams.sent()] == ["[mention] you said: "]
        # botbuilder's own mention stripping would raise on these: no recipient in a personal
        # chat, and a bot name that is not a valid regular expression
        personal = teams.activity("message_mention", text=None, entities=None)
        personal["conversation"]["conversationType"] = "personal"
        del personal["recipient"]
        odd_name = teams.activity("message_mention", text="<at>C++ (bot)</at> hi")
        odd_name["entities"][0]["text"] = "<at>C++ (bot)</at>"
        for activity in (personal, odd_name):
            status, text = await _teams_post(client, teams, json.dumps(activity).encode(), teams.token())
            assert status == 200, (status, text)
        assert [a["text"] for a in teams.sent()[1:]] == ["[personal] you said: ", "[mention] you said: hi"]


async def test_teams_every_optional_field_null_or_omitted_is_never_5xx(tmp_path: Path) -> None:
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        sent = 0
        for name in ("message_mention", "message_reply", "message_reaction", "conversation_update"):
            for path in NULLABLE_PATHS:
                for omit in (False, True):
                    activity = _nulled(teams.activity(name), path, omit=omit)
                    if activity is None:
                        continue
                    status, text = await _teams_post(client, teams, json.dumps(activity).encode(), teams.token())
                    assert status < 500, (name, path, "omitted" if omit else "null", status, text[:200])
                    sent += 1
        assert sent > 150
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok", health


async def test_teams_without_any_signing_key_is_not_a_green_healthz(tmp_path: Path) -> None:
    """Every activity is 503 while no key set was ever fetched and the last fetch failed: /healthz
    says degraded (an in-flight fetch does not: tests/gateway/test_gw_teams_wedge.py)."""
    teams, up = TeamsSimulator(), [False]

    async def metadata(request: web.Request) -> web.Response:  # Azure's OpenID host, down, then back
        return web.json_response({"jwks_uri": teams.base_url + KEYS_PATH}) if up[0] else web.Response(status=500)

    app = web.Application()
    app.router.add_get("/meta", metadata)
    async with TestServer(app) as host:
        table = {"teams": {"openid_metadata_url": str(host.make_url("/meta")), "openid_retry_after_failure_s": 2.0}}
        async with inprocess_gateway(tmp_path, [teams], adapters=table) as client:
            assert (await (await client.get("/healthz")).json())["status"] == "ok"  # nothing known yet
            assert await teams.deliver(teams.activity("message_mention")) == 503
            body = await (await client.get("/healthz")).json()
            assert body["status"] == "degraded" and body["adapters"]["teams"]["status"] == "degraded"
            up[0] = True
            await asyncio.sleep(2.1)  # past openid_retry_after_failure_s: the next activity fetches again
            assert await teams.deliver(teams.activity("message_mention")) == 200
            assert (await (await client.get("/healthz")).json())["adapters"]["teams"]["status"] == "ok"
