"""The Teams adapter in-process: real botbuilder adapter, real JWTs and JWKS from the simulator,
real SQLite file. (Restarts of a real gateway process are in test_teams_gateway.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ConversationAccount
from teams_helpers import LocalGateway, sent_rows

from chatstate.adapters.teams.state import ACTIVITIES
from chatstate.gateway.sim.teams import TeamsSimulator, new_signing_key

CHANNEL = "19:general0123456789@thread.tacv2"


async def test_mention_is_answered_and_the_answer_recorded(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        status = await sim.deliver(sim.activity("message_mention"))
        assert status == 200
        [answer] = sim.sent()
        assert answer["text"] == "[mention] you said: hello there"
        rows = sent_rows(db)
        assert list(rows) == [f"{CHANNEL}:{answer['id']}"]
        assert rows[f"{CHANNEL}:{answer['id']}"].value.keys() == {"sent_at"}


async def test_reply_to_a_bot_message_in_its_thread_is_reply_to_bot(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        await sim.deliver(sim.activity("message_mention"))
        [answer] = sim.sent()
        reply = sim.activity(
            "message_reply", reply_to_id=answer["id"], conversation_id=f"{CHANNEL};messageid={answer['id']}"
        )
        assert await sim.deliver(reply) == 200
        assert sim.sent()[-1]["text"] == "[reply_to_bot] you said: thanks, and one more thing"


async def test_unmentioned_message_and_reply_to_a_human_are_ignored(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        assert await sim.deliver(sim.activity("message_reply", reply_to_id="1699999999999")) == 200
        plain = sim.activity("message_mention", text="no mention here", entities=[])
        assert await sim.deliver(plain) == 200
        assert sim.sent() == []
        assert sent_rows(db) == {}


async def test_reaction_to_a_bot_message_is_recognised_and_to_others_not(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        await sim.deliver(sim.activity("message_mention"))
        [answer] = sim.sent()
        assert await sim.deliver(sim.activity("message_reaction", reply_to_id="1699999999999")) == 200
        assert len(sim.sent()) == 1
        assert await sim.deliver(sim.activity("message_reaction", reply_to_id=answer["id"])) == 200
        assert sim.sent()[-1]["text"] == "[reply_to_bot] thanks for the like"


async def test_welcome_on_install_is_recorded_like_any_send(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        assert await sim.deliver(sim.activity("conversation_update")) == 200
        [welcome] = sim.sent()
        assert welcome["text"].startswith("Hi!")
        assert f"{CHANNEL}:{welcome['id']}" in sent_rows(db)
        await sim.deliver(sim.activity("message_reply", reply_to_id=welcome["id"]))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")


async def test_proactive_send_new_post_and_update_go_through_the_one_recording_function(
    sim: TeamsSimulator, db: Path
) -> None:
    """A proactive reply (POST .../activities/{replyToId}), a new post (POST .../activities,
    no replyToId) and an update (PUT .../activities/{id}) all land in the store, without the
    bot code recording anything itself."""
    async with LocalGateway(sim, db) as gw:
        reference = TurnContext.get_conversation_reference(Activity().deserialize(sim.activity("message_mention")))
        adapter = gw.plugin.running.bot.adapter

        async def post(ctx: TurnContext) -> None:
            await ctx.send_activity("build 42 is green")
            new_post = Activity(
                type="message",
                text="new thread",
                conversation=ConversationAccount(id=CHANNEL),
                from_property=ctx.activity.recipient,
                recipient=ctx.activity.from_property,
            )
            await ctx.adapter.send_activities(ctx, [new_post])

        await adapter.continue_conversation(reference, post, bot_app_id=sim.app_id)
        reply, new_thread = sim.sent()
        assert reply["reply_to_id"] is not None and new_thread["reply_to_id"] is None
        rows = sent_rows(db)
        assert {f"{CHANNEL}:{reply['id']}", f"{CHANNEL}:{new_thread['id']}"} <= rows.keys()
        before = rows[f"{CHANNEL}:{new_thread['id']}"]

        async def edit(ctx: TurnContext) -> None:
            await ctx.update_activity(Activity(id=new_thread["id"], type="message", text="edited"))

        await adapter.continue_conversation(reference, edit, bot_app_id=sim.app_id)
        [update] = sim.recorded("update")
        assert update.payload["id"] == new_thread["id"] and update.payload["text"] == "edited"
        after = sent_rows(db)[f"{CHANNEL}:{new_thread['id']}"]
        assert after.value["sent_at"] >= before.value["sent_at"]
        assert list(sent_rows(db))[-1] == f"{CHANNEL}:{new_thread['id']}"  # re-recorded: now the newest


async def test_bad_or_missing_tokens_get_401_and_change_nothing(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        activity = sim.activity("message_mention")
        forged = [
            None,  # no Authorization header
            "not-a-jwt",
            sim.token(key=new_signing_key()),  # signed by someone else
            sim.token(audience="some-other-bot"),
            sim.token(issuer="https://evil.example"),
            sim.token(service_url="https://smba.trafficmanager.net/emea/"),  # token for another serviceUrl
            sim.token(expires_in_s=-3600),
        ]
        for token in forged:
            assert await sim.deliver(activity, token=token) == 401, token
        assert sim.sent() == []
        assert sent_rows(db) == {}
        assert await sim.deliver(activity) == 200  # the same activity with a good token


async def test_bot_connector_refusing_the_send_is_503_and_records_nothing(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db, connector_token="wrong"):
        # the gate released the activity: 503 + Retry-After asks the channel to send it again
        assert await sim.deliver(sim.activity("message_mention")) == 503
        assert sent_rows(db) == {}


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_a_send_refused_for_good_is_200_done_and_not_sent_again(
    sim: TeamsSimulator, db: Path, status: int
) -> None:
    """The bot removed from the conversation (403), it gone (404), the activity refused (400):
    every redelivery would meet the same answer, so the activity is acked and marked done."""
    async with LocalGateway(sim, db):
        activity = sim.activity("message_mention")
        sim.refuse_sends = status
        assert await sim.deliver(activity) == 200
        sim.refuse_sends = None
        assert await sim.deliver(activity) == 200  # the redelivery: already done, nothing sent
        assert sim.send_calls == 1 and sim.sent() == [] and sent_rows(db) == {}
        [claim] = sent_rows(db, ACTIVITIES).values()
        assert "done_at" in claim.value
        sim.refuse_sends = status
        assert await sim.deliver(sim.activity("message_mention", id=None)) == 200  # not gated: the same


async def test_legacy_mode_keeps_sends_in_memory_only(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db, legacy=True) as gw:
        await sim.deliver(sim.activity("message_mention"))
        [answer] = sim.sent()
        await sim.deliver(sim.activity("message_reply", reply_to_id=answer["id"]))
        assert sim.sent()[-1]["text"].startswith("[reply_to_bot]")  # same process: memory knows
        assert gw.plugin.health()["state"]["msteams.sent-messages"]["mode"] == "legacy"
    assert not db.exists() or sent_rows(db) == {}


async def test_malformed_bodies_are_400_and_change_nothing(sim: TeamsSimulator, db: Path) -> None:
    async with LocalGateway(sim, db):
        bad_timestamp = sim.activity("message_mention", timestamp="not a time")
        no_service = {k: v for k, v in sim.activity("message_mention").items() if k != "serviceUrl"}
        for body in (["a", "list"], {"text": "no type"}, bad_timestamp, no_service):
            assert await sim.deliver(body) == 400
        assert sim.sent() == [] and sent_rows(db) == {}
