"""The four restart scenarios the demo and tests/e2e play: one conversation per adapter, split
by a gateway restart. Each `first_half` runs before the restart and returns what the second
half needs; each `second_half` runs after it and says, per behaviour, whether it survived.

Survival is read from the simulators' records (what the bot really sent), never from the
gateway's own account. `make_hostile` builds the same simulator with every edge behaviour of
its platform switched on (the demo's `--hostile`); the halves are written to pass either way. A lost behaviour shows as *no* answer, so each second half first makes
sure the bot has finished handling its event (the HTTP adapters answer inside the request;
Matrix gets a barrier request behind the reaction) instead of waiting for a silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from chatstate.gateway.sim.base import SimulatorServer
from chatstate.gateway.sim.discord import ALICE as ALICE_DISCORD
from chatstate.gateway.sim.discord import DiscordEdges, DiscordSimulator
from chatstate.gateway.sim.discord_gateway import DiscordGatewaySimulator
from chatstate.gateway.sim.matrix import SERVER_NAME, MatrixHomeserver
from chatstate.gateway.sim.slack import SlackEdges, SlackSimulator
from chatstate.gateway.sim.slack_socket import SlackSocketSimulator
from chatstate.gateway.sim.teams import TeamsEdges, TeamsSimulator

APPROVAL_FIELD = "org.chatstate.approval"  # the Matrix adapter's marker on prompts/outcomes


@dataclass(frozen=True)
class Outcome:
    """One behaviour after the restart: did it work, and what the user saw."""

    adapter: str
    behaviour: str
    survived: bool
    detail: str


@dataclass(frozen=True)
class Scenario:
    adapter: str
    make_simulator: Callable[[], SimulatorServer]
    first_half: Callable[[Any], Awaitable[Any]]
    second_half: Callable[[Any, Any], Awaitable[list[Outcome]]]
    adapter_config: dict[str, Any]
    # runs while the gateway is down (between the stop and the start); takes and returns the context
    while_down: Callable[[Any, Any], Awaitable[Any]] | None = None
    make_hostile: Callable[[], SimulatorServer] | None = None  # None: no edge switches (yet)


# -- Slack: an untagged follow-up in a thread the bot replied in ----------------------------------
async def slack_first(sim: SlackSimulator) -> str:
    mention = sim.mention_event("can you look at the deploy?")
    before = len(sim.posts())
    delivery = await sim.deliver(mention)
    assert delivery.status == 200, delivery
    await sim.wait_for_posts(before + 1)
    return str(mention["event"]["ts"])  # the thread root the bot replied under


async def slack_second(sim: SlackSimulator, root: str) -> list[Outcome]:
    before = len(sim.posts(thread_ts=root))
    delivery = await sim.deliver(sim.message_event("any news?", thread_ts=root))
    assert delivery.status == 200, delivery
    # The adapter answers inside the request (well within Slack's 3 s), so the post is recorded
    # by the time the delivery returns; a missing post means the thread was forgotten. Only an
    # "accepted" ack (a slow, e.g. rate-limited, reply finishing after the 3 s deadline) is
    # waited for.
    if delivery.body == "accepted":
        await sim.wait_for(lambda _r: len(sim.posts(thread_ts=root)) > before, timeout=30)
    answered = len(sim.posts(thread_ts=root)) > before
    said = sim.posts(thread_ts=root)[-1].get("text") if answered else None
    detail = (
        f"bot answered the untagged follow-up: {said!r}" if answered else f"follow-up {delivery.body}: thread forgotten"
    )
    return [Outcome("slack", "untagged follow-up in a participated thread", answered, detail)]


# -- Discord: a single-use button and a modal opened before the restart ---------------------------
async def discord_first(sim: DiscordSimulator) -> tuple[dict[str, Any], dict[str, Any]]:
    message = await sim.post_panel()
    opened = await sim.click(message, "Feedback")
    assert opened.status == 200 and opened.data.get("custom_id"), opened
    return message, opened.data


async def discord_second(sim: DiscordSimulator, ctx: tuple[dict[str, Any], dict[str, Any]]) -> list[Outcome]:
    message, modal = ctx
    click = await sim.click(message, "Approve")
    clicked = click.status == 200 and click.content.startswith("Approved by")
    submit = await sim.submit_modal(modal, {"comment": "ship it"}, message=message)
    # any answer but "expired": the text is the reply hook's, if one is set (docs/quickstart.md)
    submitted = submit.status == 200 and bool(submit.content) and "has expired" not in submit.content
    return [
        Outcome("discord", "click a pre-restart single-use button", clicked, repr(click.content)),
        Outcome("discord", "submit a modal opened before the restart", submitted, repr(submit.content)),
    ]


# -- Teams: a reply to a message the bot sent before the restart ----------------------------------
async def teams_first(sim: TeamsSimulator) -> str:
    status = await sim.deliver(sim.activity("message_mention"))
    assert status == 200, status
    return str(sim.sent()[-1]["id"])


async def teams_second(sim: TeamsSimulator, bot_message_id: str) -> list[Outcome]:
    before = len(sim.sent())
    status = await sim.deliver(sim.activity("message_reply", reply_to_id=bot_message_id))
    # Teams handles the activity inside the request: by now the bot has answered or never will.
    # Neither mentioned nor personal, so only a recognised reply to the bot gets an answer (its
    # text is the reply hook's, if one is set: docs/quickstart.md).
    answered = status == 200 and len(sim.sent()) > before
    said = sim.sent()[-1].get("text") if answered else None
    detail = f"classified reply_to_bot and answered {said!r}" if answered else "reply not recognised: no answer"
    return [Outcome("teams", "reply to a pre-restart bot message", answered, detail)]


# -- Matrix: a reaction on an approval prompt posted before the restart ---------------------------
ROOM = f"!ops:{SERVER_NAME}"
ALICE = f"@alice:{SERVER_NAME}"
BOB = f"@bob:{SERVER_NAME}"


def _approval_messages(sim: MatrixHomeserver, key: str) -> list[dict[str, Any]]:
    return [s for s in sim.sent("m.room.message") if key in s["content"].get(APPROVAL_FIELD, {})]


async def matrix_request(sim: MatrixHomeserver, action: str, sender: str = ALICE) -> str:
    """Ask for an approval; return the prompt's event id once the bot seeded its reactions.

    The bot handles synced events in order, so this doubles as a barrier: once the prompt is
    complete, every event injected before the request has been handled.
    """
    before = len(_approval_messages(sim, "expires_at"))
    await sim.send_message(ROOM, sender, f"!approve {action}")

    def seeded() -> bool:
        prompts = _approval_messages(sim, "expires_at")
        if len(prompts) <= before:
            return False
        prompt_id = prompts[-1]["event_id"]
        return len([r for r in sim.sent("m.reaction") if r["content"]["m.relates_to"]["event_id"] == prompt_id]) >= 3

    await sim.wait_for(lambda _r: seeded())
    return str(_approval_messages(sim, "expires_at")[-1]["event_id"])


async def matrix_first(sim: MatrixHomeserver) -> str:
    return await matrix_request(sim, "deploy-demo")


async def matrix_second(sim: MatrixHomeserver, prompt_id: str) -> list[Outcome]:
    before = len(_approval_messages(sim, "decision"))
    await sim.react(ROOM, BOB, prompt_id, "✅")
    # the reaction has been handled once this returns; the barrier is asked by a user of its own,
    # since it is never answered and one requester may keep only 5 approvals open
    await matrix_request(sim, "barrier", sender=f"@barrier-{len(sim.events)}:{SERVER_NAME}")
    resolved = len(_approval_messages(sim, "decision")) > before
    detail = "approval resolved by the reaction" if resolved else "reaction ignored: target forgotten"
    return [Outcome("matrix", "react to a pre-restart approval prompt", resolved, detail)]


SCENARIOS: dict[str, Scenario] = {
    "slack": Scenario(
        "slack",
        SlackSimulator,
        slack_first,
        slack_second,
        {},
        make_hostile=lambda: SlackSimulator(edges=SlackEdges.hostile()),
    ),
    "discord": Scenario(
        "discord",
        DiscordSimulator,
        discord_first,
        discord_second,
        {},
        make_hostile=lambda: DiscordSimulator(edges=DiscordEdges.hostile()),
    ),
    "teams": Scenario(
        "teams",
        TeamsSimulator,
        teams_first,
        teams_second,
        {},
        make_hostile=lambda: TeamsSimulator(edges=TeamsEdges.hostile()),
    ),
    "matrix": Scenario("matrix", MatrixHomeserver, matrix_first, matrix_second, {}),
}

# The same Slack and Discord conversations over the websocket transports. The Socket
# Mode simulator's `deliver` returns once the envelope is acked (after the reply, within 3 s) and
# the Gateway simulator's returns the interaction callback, so the halves above run unchanged.
# Discord adds what only the Gateway has: a click dispatched while the gateway is down, which a
# RESUME receives and a fresh IDENTIFY never sees.
DEMO_CALLBACK_WINDOW_S = 10.0  # Discord's is 3 s; widened so a slow CI restart does not decide the row


async def discord_gateway_while_down(sim: DiscordGatewaySimulator, ctx: tuple[dict[str, Any], dict[str, Any]]) -> Any:
    message, modal = ctx
    pending = await sim.dispatch_interaction(sim.click_payload(message, "Refresh", user_id=ALICE_DISCORD))
    return message, modal, pending


async def discord_gateway_second(sim: DiscordGatewaySimulator, ctx: Any) -> list[Outcome]:
    message, modal, pending = ctx
    outcomes = await discord_second(sim, (message, modal))
    reply = None
    if sim.recorded("gateway_resume"):  # after a fresh IDENTIFY the old session's dispatch is gone
        reply = await asyncio.wait_for(asyncio.shield(pending.answered), 15.0)
    if reply is not None and reply.status == 200 and "refreshed by" in reply.content:
        resumed, detail = True, f"RESUMEd, answered {reply.content!r}"
    else:
        resumed, detail = False, "IDENTIFYed afresh: the dispatch never came"
    return [Outcome("discord", "click dispatched while the gateway was down", resumed, detail), *outcomes]


WEBSOCKET_SCENARIOS: dict[str, Scenario] = {
    # no edge switches on the websocket simulators (the HTTP far ends have them)
    "slack": replace(SCENARIOS["slack"], make_simulator=SlackSocketSimulator, make_hostile=None),
    "discord": replace(
        SCENARIOS["discord"],
        make_simulator=lambda: DiscordGatewaySimulator(callback_window_s=DEMO_CALLBACK_WINDOW_S),
        while_down=discord_gateway_while_down,
        second_half=discord_gateway_second,
        make_hostile=None,
    ),
}
TRANSPORT_LABELS = {"slack": "slack (socket mode)", "discord": "discord (gateway)"}
