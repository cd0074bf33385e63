"""Hypothesis fuzz of every route: signed and unsigned, FUZZ_EXAMPLES inputs each,
derandomized so CI is stable. Every answer is < 500 with no traceback in it, and a 4xx leaves
the database and the far end exactly as they were.

The real app (build_app, as `chatstate start` serves it) runs in process with the Slack,
Discord and Teams simulators and the echo plugin, one app per test; each example is one HTTP
request against it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from gw_helpers import SECRET
from hostile_helpers import inprocess_gateway, table_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_strategies import json_values, mutated, nulled

from chatstate.gateway.echo import sign as echo_sign
from chatstate.gateway.sim.discord import ALICE, DiscordSimulator
from chatstate.gateway.sim.discord import fixture as discord_fixture
from chatstate.gateway.sim.slack import SlackSimulator
from chatstate.gateway.sim.slack import sign as slack_sign
from chatstate.gateway.sim.teams import TeamsSimulator

FUZZ_EXAMPLES = 300  # per test; each route has a signed and an unsigned test
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
SPECIAL_BODIES = [
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a": "\\ud800"}',
    b"\xff\xfe",
    b"",
    b"null",
    b"{}",
    b"[]",
    b'{"type": 1}',
    b'{"type": "message"}',
    b'{"key": "' + b"k" * 600 + b'"}',
]

header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@dataclass
class World:
    client: TestClient
    db: Path
    slack: SlackSimulator
    discord: DiscordSimulator
    teams: TeamsSimulator
    panel: dict[str, Any]
    examples: int = 0

    def far_end(self) -> int:
        return sum(len(s.records) for s in (self.slack, self.teams)) + len(self.discord.recorded("message_create"))

    async def check(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
        """Send one request; assert no 5xx, no traceback, and no change at all on a 4xx."""
        self.examples += 1
        rows, far = table_rows(self.db), self.far_end()
        resp = await self.client.request(method, path, data=body, headers=headers)
        text = await resp.text()
        assert resp.status < 500, (resp.status, text[:200], body[:200])
        assert "Traceback" not in text
        if resp.status >= 400:
            assert table_rows(self.db) == rows, (resp.status, text[:200], body[:200])
            assert self.far_end() == far
        return resp.status


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    slack, discord, teams = SlackSimulator(), DiscordSimulator(), TeamsSimulator()
    async with inprocess_gateway(tmp_path, [slack, discord, teams], adapters={"echo": {"secret": SECRET}}) as client:
        panel = await discord.post_panel()
        w = World(client, tmp_path / "plugin-state" / "state.sqlite", slack, discord, teams, panel)
        yield w
        print(f"\nfuzz: {w.examples} requests")  # shown with -s; the count asserted below
        assert w.examples >= FUZZ_EXAMPLES


# -- body strategies ------------------------------------------------------------------------------
def bodies(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        base.map(lambda d: json.dumps(d).encode()),
        base.flatmap(mutated).map(lambda d: json.dumps(d).encode()),
        base.flatmap(nulled).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(SPECIAL_BODIES),
    )


snowflakes = st.integers(10**17, 10**19).map(str)


# -- echo ----------------------------------------------------------------------------------------
@FUZZ
@given(body=bodies(st.fixed_dictionaries({"key": st.text(max_size=30)})), signed=st.just(True))
async def test_fuzz_echo_post_signed(world: World, body: bytes, signed: bool) -> None:
    await world.check("POST", "/echo", body, {"X-Echo-Signature": echo_sign(SECRET, "POST", "/echo", body)})


@FUZZ
@given(body=bodies(st.fixed_dictionaries({"key": st.text(max_size=30)})), signature=header_text)
async def test_fuzz_echo_unsigned(world: World, body: bytes, signature: str) -> None:
    status = await world.check("POST", "/echo", body, {"X-Echo-Signature": signature})
    assert status in (401, 413)


@FUZZ
@given(key=st.text(min_size=1, max_size=700), signed=st.booleans())
async def test_fuzz_echo_get(world: World, key: str, signed: bool) -> None:
    path = "/echo/" + quote(key, safe="")
    headers = {"X-Echo-Signature": echo_sign(SECRET, "GET", path) if signed else "sha256=00"}
    await world.check("GET", path, b"", headers)


@FUZZ
@given(
    query=st.text(max_size=40),
    headers=st.dictionaries(st.sampled_from(["Accept", "X-Forwarded-For", "Cookie"]), header_text, max_size=3),
)
async def test_fuzz_healthz(world: World, query: str, headers: dict[str, str]) -> None:
    resp = await world.client.get("/healthz?" + quote(query, safe="=&"), headers=headers)
    world.examples += 1
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


@FUZZ
@given(
    query=st.text(max_size=40),
    headers=st.dictionaries(st.sampled_from(["Accept", "Accept-Encoding", "X-Forwarded-For"]), header_text, max_size=3),
)
async def test_fuzz_metrics(world: World, query: str, headers: dict[str, str]) -> None:
    """/metrics takes no credential: any query and headers get the Prometheus text, no secret in it."""
    resp = await world.client.get("/metrics?" + quote(query, safe="=&"), headers=headers)
    world.examples += 1
    text = await resp.text()
    assert resp.status == 200 and "Traceback" not in text
    assert SECRET not in text and world.slack.signing_secret not in text and world.slack.bot_token not in text


@FUZZ
@given(
    method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "GET"]),
    path=st.one_of(
        st.sampled_from(["/healthz", "/metrics", "/slack/events/", "/api/messages/x"]), st.text(max_size=30)
    ),
    body=st.one_of(st.binary(max_size=300), st.sampled_from(SPECIAL_BODIES)),
)
async def test_fuzz_other_methods_and_paths(world: World, method: str, path: str, body: bytes) -> None:
    """A method a route does not take (POST /healthz, GET /slack/events) or a path nothing serves: 4xx."""
    if method == "GET" and path.split("?")[0] in ("/healthz", "/metrics"):
        path = "/healthz/x"  # the routes' own GETs are fuzzed above
    status = await world.check(method, "/" + quote(path.lstrip("/"), safe="/"), body, {})
    assert 400 <= status < 500


# -- slack and discord: a signature over (timestamp, body), in two headers ------------------------
def fresh(doc: dict[str, Any], **ids: str) -> dict[str, Any]:
    """A copy of `doc` with new ids: a repeated id is answered once, then skipped."""
    return {**copy.deepcopy(doc), **ids}


def _slack_base(world: World) -> st.SearchStrategy[dict[str, Any]]:
    """The Events API payloads Slack documents for what the adapter reads: a mention, channel
    and DM messages, a thread reply, an edit, a deletion, a bot's message, a thread broadcast,
    `url_verification` and `app_rate_limited`."""
    slack = world.slack
    mention = slack.mention_event("hello")
    reply = slack.message_event("and?", thread_ts=mention["event"]["ts"], parent_user_id=slack.bot_user_id)
    bot = slack.message_event("beep")
    bot["event"].update(subtype="bot_message", bot_id="B0OTHER", username="other")
    broadcast = slack.message_event("also here", thread_ts=mention["event"]["ts"])
    broadcast["event"]["subtype"] = "thread_broadcast"
    bases = [
        mention,
        reply,
        bot,
        broadcast,
        slack.message_event("in a channel"),
        slack.message_event("direct", channel="D0ALICE", channel_type="im"),
        slack.edit_event(mention, "hello (edited)"),
        slack.delete_event(mention),
        {"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"},
        {"token": "t", "team_id": slack.team_id, "minute_rate_limited": 1518467820, "api_app_id": "A0SIM",
         "type": "app_rate_limited"},
    ]  # fmt: skip

    def fresh_event(pair: tuple[dict[str, Any], int]) -> dict[str, Any]:
        doc, n = pair
        return fresh(doc, event_id=f"EvF{n:08d}") if "event_id" in doc else fresh(doc)

    return st.tuples(st.sampled_from(bases), st.integers(0, 10**8)).map(fresh_event)


# a redelivery says so in two headers; junk there is not Slack's, and ignored
slack_retry_headers: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"X-Slack-Retry-Num": st.sampled_from(["1", "2", "3", "0", "x", ""]), "X-Slack-Retry-Reason": header_text}
    ),
)


def _discord_base(world: World) -> st.SearchStrategy[dict[str, Any]]:
    sim = world.discord
    command = sim.interaction("application_command", user_id=ALICE, data={"name": "unknown", "options": []})
    in_dm = copy.deepcopy(command)  # a DM: `user`, no `member` nor `guild_id`
    in_dm["user"] = in_dm.pop("member")["user"]
    in_dm.pop("guild_id", None)
    autocomplete = copy.deepcopy(command)
    autocomplete.update(
        type=4, data={"name": "panel", "options": [{"name": "restrict_to", "type": 6, "focused": True}]}
    )
    bases = [
        sim.click_payload(world.panel, "Refresh", user_id=ALICE),
        sim.click_payload(world.panel, "Pick a colour", user_id=ALICE, values=["red"]),
        sim.interaction("modal_submit", user_id=ALICE),
        command,
        in_dm,
        autocomplete,
        discord_fixture("ping"),
    ]
    return st.tuples(st.sampled_from(bases), snowflakes).map(lambda pair: fresh(pair[0], id=pair[1]))


@dataclass(frozen=True)
class Timestamped:
    """A route its platform signs over (timestamp, body): where, in which headers, and how."""

    path: str
    signature_header: str
    timestamp_header: str
    sign: Callable[[World, bytes, str], str]  # (world, body, timestamp) -> the signature
    base: Callable[[World], st.SearchStrategy[dict[str, Any]]]  # deliveries the bodies start from
    extra: st.SearchStrategy[dict[str, str]] = st.just({})  # other headers the platform may add


TIMESTAMPED = {
    "slack": Timestamped(
        "/slack/events",
        "X-Slack-Signature",
        "X-Slack-Request-Timestamp",
        lambda world, body, ts: slack_sign(world.slack.signing_secret, ts, body),
        _slack_base,
        slack_retry_headers,
    ),
    "discord": Timestamped(
        "/discord/interactions",
        "X-Signature-Ed25519",
        "X-Signature-Timestamp",
        lambda world, body, ts: world.discord.sign(body, ts),
        _discord_base,
    ),
}


@pytest.mark.parametrize("route", TIMESTAMPED.values(), ids=TIMESTAMPED.keys())
@FUZZ
@given(data=st.data())
async def test_fuzz_timestamped_signed(world: World, route: Timestamped, data: st.DataObject) -> None:
    body = data.draw(bodies(route.base(world)))
    ts = str(int(time.time()))
    headers = {
        route.signature_header: route.sign(world, body, ts),
        route.timestamp_header: ts,
        "Content-Type": "application/json",
        **data.draw(route.extra),
    }
    await world.check("POST", route.path, body, headers)


@pytest.mark.parametrize("route", TIMESTAMPED.values(), ids=TIMESTAMPED.keys())
@FUZZ
@given(data=st.data(), signature=header_text, timestamp=header_text)
async def test_fuzz_timestamped_unsigned(
    world: World, route: Timestamped, data: st.DataObject, signature: str, timestamp: str
) -> None:
    body = data.draw(bodies(route.base(world)))
    headers = {route.signature_header: signature, route.timestamp_header: timestamp}
    status = await world.check("POST", route.path, body, headers)
    assert status in (401, 413)


# -- teams ---------------------------------------------------------------------------------------
def _teams_base(world: World) -> st.SearchStrategy[dict[str, Any]]:
    teams = world.teams

    def named(kind: str, name: str, value: Any) -> dict[str, Any]:
        """An `invoke` or `event` activity: the fixture's addressing, its own name and value."""
        activity = teams.activity("message_mention", type=kind, value=value)
        activity["name"] = name
        return activity

    bases = [
        teams.activity("message_mention"),
        teams.activity("message_reply", reply_to_id="1"),
        teams.activity("message_reaction"),
        teams.activity("conversation_update"),
        named("invoke", "adaptiveCard/action", {"action": {}}),
        named("invoke", "task/fetch", {"data": None}),
        teams.edit_activity(teams.activity("message_mention"), "edited"),
        teams.delete_activity("1", conversation_id="19:general@thread.tacv2"),
        named("event", "application/vnd.microsoft.meetingStart", None),
        teams.activity("conversation_update", type="installationUpdate", action="add"),
    ]
    return st.tuples(st.sampled_from(bases), st.integers(0, 10**9)).map(lambda p: fresh(p[0], id=f"1700{p[1]:010d}"))


@FUZZ
@given(data=st.data())
async def test_fuzz_teams_signed(world: World, data: st.DataObject) -> None:
    body = data.draw(bodies(_teams_base(world)))
    token = world.teams.token()
    await world.check(
        "POST", "/api/messages", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )


@FUZZ
@given(data=st.data())
async def test_fuzz_teams_signed_nulls(world: World, data: st.DataObject) -> None:
    """Only nulls and omissions, each a field the Activity schema makes optional: answered, never 5xx."""
    activity = data.draw(_teams_base(world).flatmap(nulled))
    token = world.teams.token()
    body = json.dumps(activity).encode()
    await world.check("POST", "/api/messages", body, {"Authorization": f"Bearer {token}"})


@FUZZ
@given(data=st.data(), authorization=st.one_of(header_text, header_text.map(lambda t: "Bearer " + t)))
async def test_fuzz_teams_unsigned(world: World, data: st.DataObject, authorization: str) -> None:
    body = data.draw(bodies(_teams_base(world)))
    status = await world.check("POST", "/api/messages", body, {"Authorization": authorization})
    assert status in (401, 413)
