"""Documented-but-unusual input on every adapter, correctly signed, against the real app in
process and a simulator: what each platform's public docs say it may send for the event types
the adapters handle (Teams invoke names, Discord autocomplete and DM interactions, Matrix
reactions naming no event). Each is answered 2xx/4xx as documented, at most once, never 5xx.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hostile_helpers import inprocess_gateway

from chatstate.gateway.sim.teams import TeamsSimulator

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
