"""Documented-but-unusual input on every adapter, correctly signed, against the real app in
process and a simulator: what each platform's public docs say it may send for the event types
the adapters handle (Teams invoke names, Discord autocomplete and DM interactions, Matrix
reactions naming no event). Each is answered 2xx/4xx as documented, at most once, never 5xx.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from hostile_helpers import inprocess_gateway

from chatstate.gateway.sim.discord import ALICE, DiscordSimulator
from chatstate.gateway.sim.slack_socket import SlackSocketSimulator
from chatstate.gateway.sim.teams import TeamsSimulator

HEALTH_DEADLINE_S = 10.0  # how long /healthz may take to show a link's change

# Invoke names Teams documents (universal actions, task modules, message extensions, file
# consent, sign-in, actionable messages) and two a channel may send with no name at all.
TEAMS_INVOKES: tuple[tuple[str | None, Any], ...] = (
    ("adaptiveCard/action", {"action": {"type": "Action.Execute", "verb": "approve", "data": {}}, "trigger": "manual"}),
    ("task/fetch", {"data": {"type": "task/fetch"}, "context": {"theme": "default"}}),
    ("task/submit", {"data": {"answer": None}}),
    ("composeExtension/query", {"commandId": "search", "parameters": [{"name": "q", "value": None}]}),
    ("composeExtension/submitAction", None),
    ("fileConsent/invoke", {"type": "fileUpload", "action": "accept", "context": None}),
    ("signin/verifyState", {"state": "123456"}),
    ("actionableMessage/executeAction", {}),
    ("healthCheck", None),
    (None, None),
    ("", {}),
)


def _invoke(teams: TeamsSimulator, name: str | None, value: Any) -> dict[str, Any]:
    activity = teams.activity("message_mention")
    for field in ("text", "entities", "textFormat"):
        activity.pop(field, None)
    activity["type"] = "invoke"
    if name is not None:
        activity["name"] = name
    if value is not None:
        activity["value"] = copy.deepcopy(value)
    return activity


async def test_teams_an_invoke_the_bot_does_not_implement_is_200_and_sends_nothing(tmp_path: Path) -> None:
    """Before: botbuilder's 501 for every invoke name but sign-in, a 5xx for documented input."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams], adapters={"teams": {"sent_per_user": 1}}) as client:
        headers = {"Authorization": f"Bearer {teams.token()}", "Content-Type": "application/json"}
        for name, value in TEAMS_INVOKES:
            body = json.dumps(_invoke(teams, name, value)).encode()
            resp = await client.post("/api/messages", data=body, headers=headers)
            assert resp.status == 200, (name, resp.status, await resp.text())
        assert teams.sent() == []
        # an invoke's answer is the HTTP response, not a message: it costs the user no quota
        assert await teams.deliver(teams.activity("message_mention")) == 200
        assert [a["text"] for a in teams.sent()] == ["[mention] you said: hello there"]


async def test_teams_a_redelivered_conversation_update_greets_once(tmp_path: Path) -> None:
    """The channel sends an activity again, same id, when the bot was slow. Before: each copy
    of the conversationUpdate adding the bot was greeted again."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        headers = {"Authorization": f"Bearer {teams.token()}", "Content-Type": "application/json"}
        body = json.dumps(teams.activity("conversation_update")).encode()
        for _ in range(3):
            assert (await client.post("/api/messages", data=body, headers=headers)).status == 200
        assert [a["text"] for a in teams.sent()] == ["Hi! Mention me, or reply to one of my messages."]


async def test_teams_a_malformed_card_action_is_400_with_the_documented_error_body(tmp_path: Path) -> None:
    """Before: botbuilder's 400 for these carries an Exception in its body; serializing it
    failed, and the channel got a 500."""
    teams = TeamsSimulator()
    async with inprocess_gateway(tmp_path, [teams]) as client:
        headers = {"Authorization": f"Bearer {teams.token()}", "Content-Type": "application/json"}
        values: list[Any] = [{"action": {}}, {"action": {"type": "Action.Submit"}}, {"action": None}, {"nope": 1}, None]
        for value in values:
            activity = _invoke(teams, "adaptiveCard/action", value)
            activity["value"] = value  # null included: the card action's value is required
            resp = await client.post("/api/messages", data=json.dumps(activity).encode(), headers=headers)
            assert resp.status == 400, (value, resp.status, await resp.text())
            body = await resp.json()
            assert body["statusCode"] == 400 and body["type"] == "application/vnd.microsoft.error", body
            assert body["value"]["code"] in ("BadRequest", "NotSupported") and body["value"]["message"], body
        assert teams.sent() == []


def _discord_headers(discord: DiscordSimulator, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "X-Signature-Ed25519": discord.sign(body, ts),
        "X-Signature-Timestamp": ts,
        "Content-Type": "application/json",
    }


async def test_discord_autocomplete_dm_and_subcommand_interactions_get_their_documented_answers(
    tmp_path: Path,
) -> None:
    """Autocomplete (type 4) takes only APPLICATION_COMMAND_AUTOCOMPLETE_RESULT (8); a command
    in a DM carries `user`, no `member` nor `guild_id`; a subcommand's option has `options`, no
    `value`. Before: autocomplete was answered with a message (4), which Discord refuses."""
    discord = DiscordSimulator()
    async with inprocess_gateway(tmp_path, [discord]) as client:
        command = discord.interaction("application_command", user_id=ALICE)
        autocomplete = copy.deepcopy(command)
        autocomplete.update(type=4, id="1100000000000000001")
        autocomplete["data"]["options"] = [{"name": "restrict_to", "type": 6, "value": "12", "focused": True}]
        in_dm = copy.deepcopy(command)
        in_dm.update(id="1100000000000000002", user=in_dm.pop("member")["user"])
        in_dm.pop("guild_id", None)
        subcommand = copy.deepcopy(command)
        subcommand["id"] = "1100000000000000003"
        subcommand["data"]["options"] = [
            {"name": "now", "type": 1, "options": [{"name": "x", "type": 3, "value": "v"}]}
        ]
        answers = []
        for payload in (autocomplete, in_dm, subcommand):
            body = json.dumps(payload).encode()
            resp = await client.post("/discord/interactions", data=body, headers=_discord_headers(discord, body))
            assert resp.status == 200, (payload["id"], resp.status, await resp.text())
            answers.append(await resp.json())
        assert answers[0] == {"type": 8, "data": {"choices": []}}
        assert [a["type"] for a in answers[1:]] == [4, 4]
        assert all("Panel posted" in a["data"]["content"] for a in answers[1:])
        assert len(discord.recorded("message_create")) == 2  # one panel each, the autocomplete none
        body = json.dumps(autocomplete).encode()  # a replay of the autocomplete: no second answer
        resp = await client.post("/discord/interactions", data=body, headers=_discord_headers(discord, body))
        assert resp.status == 409


async def _health_until(client: TestClient, want: str) -> dict[str, Any]:
    """/healthz's body once its status is `want` (a deadline, not a sleep-as-sync)."""
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    while (body := await (await client.get("/healthz")).json())["status"] != want:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    return body


async def test_slack_socket_reader_survives_junk_frames_and_health_is_degraded_while_the_link_is_down(
    tmp_path: Path,
) -> None:
    """Frames Slack documents (`hello`, `disconnect` with odd reasons, envelopes of other types)
    and frames it does not (not JSON, null payloads, binary) leave the reader running; an event
    after them is answered once. Before: with Socket Mode turned off (`link_disabled`, every
    reconnect refused) /healthz stayed "ok" over a dead link."""
    sim = SlackSocketSimulator()
    sim.extra_config["socket_ping_interval_s"] = 0.5  # slack-sdk's reconnect loop ticks at this
    async with inprocess_gateway(tmp_path, [sim]) as client:
        await sim.wait_connected()
        odd = [
            ({"type": "event_callback", "event": None}, "events_api"),
            ({"event": {"type": "app_mention", "text": None}}, "events_api"),
            ({}, "hello"),
            ({"type": "view_submission", "view": None}, "interactive"),
        ]
        for payload, kind in odd:
            assert await sim.wait_acked(sim.send_envelope(payload, type=kind)) is None
        [ws] = sim.connections.values()
        for frame in (
            '{"type": "events_api", "envelope_id": "e1", "payload": null}',
            '{"type": "events_api", "envelope_id": null, "payload": {"event": 5}}',
            '{"type": "events_api"}',
            '{"type": "disconnect", "reason": null}',
            "null",
            "[]",
            "not json",
        ):
            await ws.send_str(frame)
        await ws.send_bytes(b"\xff\x00")
        event = sim.mention_event("after the junk")
        assert (await sim.deliver(event)).status == 200
        assert [p["text"] for p in sim.posts()] == ["echo: after the junk"]
        assert (await _health_until(client, "ok"))["adapters"]["slack"]["transport"]["connected"]

        await sim.disconnect("link_disabled")
        await sim.wait_for(lambda _r: not sim.connections)
        body = await _health_until(client, "degraded")
        assert body["adapters"]["slack"]["status"] == "degraded"
        assert not body["adapters"]["slack"]["transport"]["connected"]
        sim.enable_link()
        await sim.wait_connected()
        assert (await _health_until(client, "ok"))["adapters"]["slack"]["transport"]["connected"]
