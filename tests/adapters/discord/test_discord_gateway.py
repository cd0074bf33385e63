"""End to end: the Discord simulator drives a real gateway subprocess over signed interactions.

What a Discord user sees, before and after SIGTERM/SIGKILL restarts, and what is on disk.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Literal

import discord
import pytest
from discord_helpers import COMPONENTS, MODALS, custom_ids, rows

from chatstate.gateway.sim.discord import ALICE, BOB, DiscordSimulator
from chatstate.gateway.sim.harness import GatewayHarness

EXPIRED = "This component has expired."
YOU_ALREADY_USED = "You already used this component."
NOT_FOR_YOU = "This component is not for you."
ALREADY_USED = "This component was already used."
CHANNEL_MESSAGE = discord.InteractionResponseType.channel_message.value
UPDATE_MESSAGE = discord.InteractionResponseType.message_update.value
MODAL = discord.InteractionResponseType.modal.value


def approved(reply: object) -> bool:
    return reply.status == 200 and reply.type == CHANNEL_MESSAGE and reply.content.startswith("Approved by")  # type: ignore[attr-defined]


async def test_ping_is_answered_with_pong(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    reply = await sim.ping()
    assert (reply.status, reply.body) == (200, {"type": discord.InteractionResponseType.pong.value})


async def test_panel_entries_are_on_disk_before_the_message_is_posted(
    sim: DiscordSimulator, gw: GatewayHarness
) -> None:
    on_disk_at_post: list[set[str]] = []
    sim.on_message = lambda m: on_disk_at_post.append(
        set(rows(gw.database_path, COMPONENTS)) | set(rows(gw.database_path, MODALS))
    )
    message = await sim.post_panel()
    stored = rows(gw.database_path, COMPONENTS)
    assert set(stored) == custom_ids(message)
    assert len(on_disk_at_post) == 1 and on_disk_at_post[0] >= custom_ids(message)
    for component in (c for row in message["components"] for c in row["components"]):
        row = stored[component["custom_id"]]
        assert row.value["version"] == 1
        assert row.value["entry"]["component_type"] == component["type"]  # checked on every click
        assert row.expires_at - row.created_at == 30 * 60 * 1000  # DESIGN.md §3 default
    modals = rows(gw.database_path, MODALS)
    feedback = stored[sim.component(message, "Feedback")["custom_id"]].value["entry"]
    assert set(modals) == {feedback["modal_id"]}
    assert modals[feedback["modal_id"]].value["version"] == 1


@pytest.mark.parametrize("kind", ["term", "kill"])
async def test_clicks_work_before_and_after_restart(
    sim: DiscordSimulator, gw: GatewayHarness, kind: Literal["term", "kill"]
) -> None:
    message = await sim.post_panel()
    before = await sim.click(message, "Refresh")
    assert before.type == UPDATE_MESSAGE and "refreshed by" in before.content

    code = await gw.restart(kind)
    assert code == (0 if kind == "term" else -9)

    again = await sim.click(message, "Refresh", user_id=BOB)
    assert again.type == UPDATE_MESSAGE and f"<@{BOB}>" in again.content
    picked = await sim.click(message, "Pick a colour", values=["blue"])
    assert (picked.content, picked.ephemeral) == ("You picked blue.", True)
    assert approved(await sim.click(message, "Approve"))
    second = await sim.click(message, "Approve")
    # a consumed button says who used it (its `discord.used` tombstone), not "expired"
    assert (second.content, second.ephemeral) == (YOU_ALREADY_USED, True)


async def test_reusable_stays_and_single_use_is_consumed(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    message = await sim.post_panel()
    refresh = sim.component(message, "Refresh")["custom_id"]
    approve = sim.component(message, "Approve")["custom_id"]
    for user in (ALICE, BOB, ALICE):
        assert (await sim.click(message, "Refresh", user_id=user)).type == UPDATE_MESSAGE
    assert refresh in rows(gw.database_path, COMPONENTS)

    assert approved(await sim.click(message, "Approve"))
    assert approve not in rows(gw.database_path, COMPONENTS)
    again = await sim.click(message, "Approve", user_id=BOB)
    assert (again.type, again.content, again.ephemeral) == (CHANNEL_MESSAGE, ALREADY_USED, True)


async def test_unauthorised_user_is_refused_and_the_entry_stays(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    message = await sim.post_panel(restrict_to=ALICE)
    approve = sim.component(message, "Approve")["custom_id"]
    modal_open = await sim.click(message, "Feedback")
    assert modal_open.type == MODAL

    refused = await sim.click(message, "Approve", user_id=BOB)
    assert (refused.content, refused.ephemeral) == (NOT_FOR_YOU, True)
    refused_submit = await sim.submit_modal(modal_open.data, {"comment": "sneaky"}, message=message, user_id=BOB)
    assert (refused_submit.content, refused_submit.ephemeral) == (NOT_FOR_YOU, True)
    assert approve in rows(gw.database_path, COMPONENTS)
    assert modal_open.data["custom_id"] in rows(gw.database_path, MODALS)

    await gw.restart("kill")
    assert (await sim.click(message, "Approve", user_id=BOB)).content == NOT_FOR_YOU
    assert approved(await sim.click(message, "Approve", user_id=ALICE))
    submitted = await sim.submit_modal(modal_open.data, {"comment": "fine"}, message=message, user_id=ALICE)
    assert submitted.content.endswith("feedback received: fine")


@pytest.mark.parametrize("cache", ["warm", "cold"])
async def test_fifty_concurrent_clicks_on_a_single_use_button_one_wins(
    sim: DiscordSimulator, gw: GatewayHarness, cache: str
) -> None:
    message = await sim.post_panel()
    if cache == "cold":  # after a restart every click has to go to the store
        await gw.restart("kill")
    users = [str(1_100_000_000_000_001_000 + i) for i in range(50)]
    replies = await sim.click_many(message, "Approve", user_ids=users)

    assert all(r.status == 200 for r in replies)
    winners = [r for r in replies if approved(r)]
    assert len(winners) == 1
    losers = [r for r in replies if not approved(r)]
    # a loser either peeked before the winner consumed (told "already used") or after ("expired")
    assert all(r.ephemeral and r.content in (ALREADY_USED, EXPIRED) for r in losers)
    assert sim.component(message, "Approve")["custom_id"] not in rows(gw.database_path, COMPONENTS)


async def test_modal_opened_before_restart_submits_once_after(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    message = await sim.post_panel()
    opened = await sim.click(message, "Feedback")
    assert opened.type == MODAL
    assert opened.data["title"] == "Feedback"
    assert [c["custom_id"] for row in opened.data["components"] for c in row["components"]] == ["comment"]

    await gw.restart("kill")
    first = await sim.submit_modal(opened.data, {"comment": "Ship it"}, message=message)
    assert first.type == CHANNEL_MESSAGE and not first.ephemeral
    assert first.content == f"Thanks <@{ALICE}>, feedback received: Ship it"
    second = await sim.submit_modal(opened.data, {"comment": "Ship it"}, message=message)
    assert (second.content, second.ephemeral) == (EXPIRED, True)

    await gw.restart("term")
    reopened = await sim.click(message, "Feedback")  # the trigger is reusable, its modal is spent
    assert (reopened.content, reopened.ephemeral) == (EXPIRED, True)


async def test_entries_expire_after_their_ttl(tmp_path: Path) -> None:
    sim = DiscordSimulator(ttl_ms=1500)
    async with GatewayHarness([sim], state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        stored = rows(gw.database_path, COMPONENTS)
        modal_id, modal_row = next(iter(rows(gw.database_path, MODALS).items()))
        assert {r.expires_at - r.created_at for r in [*stored.values(), modal_row]} == {1500}
        # Expiry is about wall-clock time, so wait until the stored deadline has passed.
        deadline = max(r.expires_at for r in [*stored.values(), modal_row]) / 1000
        await asyncio.sleep(max(0.0, deadline - time.time()) + 0.05)

        for label in ("Refresh", "Approve", "Feedback"):
            reply = await sim.click(message, label)
            assert (reply.content, reply.ephemeral) == (EXPIRED, True), label
        modal = {
            "custom_id": modal_id,
            "components": [{"type": 1, "components": [{"type": 4, "custom_id": "comment"}]}],
        }
        submit = await sim.submit_modal(modal, {"comment": "late"}, message=message)
        assert submit.content == EXPIRED


async def test_legacy_mode_forgets_components_on_restart(sim: DiscordSimulator, tmp_path: Path) -> None:
    async with GatewayHarness([sim], modes="legacy", state_dir=tmp_path / "state") as gw:
        message = await sim.post_panel()
        opened = await sim.click(message, "Feedback")
        assert opened.type == MODAL
        assert (await sim.click(message, "Refresh")).type == UPDATE_MESSAGE
        assert rows(gw.database_path, COMPONENTS) == {}

        await gw.restart("term")
        for label in ("Refresh", "Approve"):
            after = await sim.click(message, label)
            assert (after.content, after.ephemeral) == (EXPIRED, True), label  # the "before" bug
        submit = await sim.submit_modal(opened.data, {"comment": "x"}, message=message)
        assert submit.content == EXPIRED


async def test_bad_signature_is_401_and_touches_nothing(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    message = await sim.post_panel()
    before = rows(gw.database_path, COMPONENTS)
    posted = len(sim.recorded("message_create"))
    click = sim.click_payload(message, "Approve", user_id=ALICE)
    forged = sim.sign(b"something else", "1700000000")
    command = sim.interaction("application_command", user_id=ALICE)

    for payload, signature, timestamp in [
        (click, forged, None),  # signature of another body
        (click, "", None),  # missing signature
        (click, "zz" * 64, None),  # not hex
        (click, sim.sign(b"", "1"), "2"),  # signed with another timestamp
        (command, "00" * 64, None),
    ]:
        reply = await sim.deliver(payload, signature=signature, timestamp=timestamp)
        assert reply.status == 401

    assert rows(gw.database_path, COMPONENTS) == before
    assert len(sim.recorded("message_create")) == posted
    assert approved(await sim.click(message, "Approve"))  # the entry was neither read nor spent


async def test_failed_send_forgets_the_panel_entries(sim: DiscordSimulator, gw: GatewayHarness) -> None:
    sim.bot_token = "revoked"  # the REST API now refuses the gateway's token
    command = sim.interaction("application_command", user_id=ALICE)
    reply = await sim.deliver(command)
    assert (reply.status, reply.ephemeral) == (200, True)
    assert "Could not post" in reply.content
    assert sim.recorded("message_create") == []
    assert rows(gw.database_path, COMPONENTS) == {}
    assert rows(gw.database_path, MODALS) == {}
